"""Gunicorn settings. Run with: gunicorn -c gunicorn_conf.py main:app"""

import socket
import threading
import time
from pathlib import Path

from gunicorn.dirty.stash import StashClient, get_stash_socket_path

bind = "127.0.0.1:8000"
# Gunicorn's native ASGI worker serves FastAPI directly.
worker_class = "asgi"
# One HTTP worker, as in step 01: it no longer blocks, so it is enough.
workers = 1
# The model runs in dirty workers: each loads it once and answers one
# request at a time.
dirty_apps = ["chat_app:ChatApp"]
dirty_workers = 2
# Gunicorn 27 opens a control socket in ~/.gunicorn by default; two servers
# on one machine would fight over it, and this tutorial does not need it.
control_socket_disable = True
# Gunicorn 27 also keeps the dirty arbiter's pid in a file named after the
# process name, and a server that starts kills the arbiter that file names:
# a name from this folder's lets two steps run side by side (make run and the
# tests add the port with --name, for two servers of one step).
proc_name = f"dirty-chat-{Path(__file__).parent.name}"
accesslog = "-"


class Tables:
    """Where the hooks below keep what /ready reports, in gunicorn's stash
    (key-value tables that the dirty arbiter holds in memory)."""

    # The pids of the dirty workers whose model is loaded.
    LOADED = "model_loaded"
    # How many dirty workers the arbiter keeps now, under "workers".
    POOL = "model_pool"


def dirty_worker_init(worker):
    # Runs in the dirty worker once its model is loaded, but before it listens,
    # and the arbiter connects as soon as the socket file exists: a chat let
    # through now could be refused. A thread counts the worker once it listens.
    threading.Thread(target=_loaded_once_listening, args=(worker,), daemon=True).start()


def _loaded_once_listening(worker):
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(worker.socket_path)
                break
            except OSError:  # no socket yet, or one bound but not listening
                time.sleep(0.01)
    with StashClient(get_stash_socket_path()) as store:
        store.put(Tables.LOADED, worker.pid, True)


def dirty_post_fork(arbiter, worker):
    # Runs in the arbiter after every fork, so after a TTIN too.
    _count_workers(arbiter)


def dirty_worker_exit(arbiter, worker):
    # Runs in the arbiter when a dirty worker is gone, even after a SIGKILL.
    arbiter.stash_tables.get(Tables.LOADED, {}).pop(worker.pid, None)
    _count_workers(arbiter)


def _count_workers(arbiter):
    # The hooks that run in the arbiter write its tables directly: a stash
    # client would wait for this very process, busy running the hook.
    arbiter.stash_tables.setdefault(Tables.POOL, {})["workers"] = arbiter.num_workers

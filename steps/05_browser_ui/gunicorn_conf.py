"""Gunicorn settings. Run with: gunicorn -c gunicorn_conf.py main:app"""

import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path

from gunicorn.dirty.stash import StashClient, get_stash_socket_path

bind = "127.0.0.1:8000"
# Gunicorn's native ASGI worker serves FastAPI directly.
worker_class = "asgi"
# One HTTP worker, as in step 01: it no longer blocks, so it is enough.
workers = 1
# The model runs in dirty workers: each loads it once and answers one
# request at a time, so this is how many answers can stream at once.
# DIRTY_WORKERS=8 or --dirty-workers 8 changes it; the line in main.py follows.
dirty_apps = ["chat_app:ChatApp"]
# 32 streams at once for a workshop room: fine for this light model; a real one costs memory per worker.
dirty_workers = int(os.environ.get("DIRTY_WORKERS", "32"))
# uvloop, a faster event loop, keeps /health quick while a room streams (make
# bench compares it with asyncio); named, a missing uvloop is a logged warning.
asgi_loop = "uvloop"
# Longest silence allowed between two tokens before the arbiter gives up on
# a dirty worker (a normal gap is well under a second).
dirty_timeout = 10
# When a client hangs up, cancel its request at once: that closes the dirty
# client, and the dirty worker stops generating instead of finishing for nobody.
asgi_disconnect_grace_period = 0
# Gunicorn 27 opens a control socket in ~/.gunicorn by default; two servers
# on one machine would fight over it, and this tutorial does not need it.
control_socket_disable = True
# Gunicorn 27 also keeps the dirty arbiter's pid in a file named after the
# process name, and a server that starts kills the arbiter that file names:
# a name from this folder's lets two steps run side by side (make run and the
# tests add the port with --name, for two servers of one step).
proc_name = f"dirty-chat-{Path(__file__).parent.name}"
accesslog = "-"


class HangUps(logging.Filter):
    """One calm line for a client that hangs up mid-answer, and no traceback.

    When a client hangs up, the dirty arbiter and worker find their sockets
    closed, and each logs that as an ERROR, tracebacks included. A hang-up is
    no error: the arbiter's line becomes one INFO line, and the other lines,
    the same hang-up told again, are dropped. A model that fails raises its
    own error, not a closed socket's, and keeps its traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if not any(_closed_socket(arg) for arg in args):
            return True
        # Gunicorn's line for the request the arbiter was passing on: (worker pid, error).
        if record.msg != "Error executing on worker %s: %s":
            return False
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "client hung up: the request on dirty worker %s is cancelled", args[:1]
        return True


def _closed_socket(error: object) -> bool:
    """True for a ConnectionError raised while gunicorn wrote a message: the other end was gone."""
    if not isinstance(error, ConnectionError):
        return False
    return any(frame.name == "write_message_async" for frame in traceback.extract_tb(error.__traceback__))


# Gunicorn merges this into its own logging defaults (glogging.CONFIG_DEFAULTS),
# one top-level key at a time: gunicorn.error gets the filter and keeps the
# default handler (stderr) and the --log-level; the access log stays as it is.
logconfig_dict = {
    "filters": {"hang_ups": {"()": HangUps}},
    "loggers": {
        "gunicorn.error": {"handlers": ["error_console"], "filters": ["hang_ups"], "propagate": False},
    },
}


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

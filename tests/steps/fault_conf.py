"""A test-only gunicorn config: the step's own settings plus a faulty model.

The tests start a server with `-c tests/steps/fault_conf.py` and the variables
below; the step's code knows nothing about it, and normal runs cannot reach it.
A fault strikes where a real model fails, while the model produces a token:
the model's `split_tokens` is swapped for one that misbehaves at a word, so
the answer's own code is on the stack when it does.

CHAT_FAULT=raise:N   the model raises after N words of an answer
CHAT_FAULT=stall:N   the model stops for CHAT_FAULT_STALL seconds after N words
CHAT_FAULT=fork:N    the model forks a helper process after N words, and goes
                     on: the helper sleeps until killed, and holds open every
                     file the dirty worker had, its sockets among them
CHAT_FAULT_ONCE=path the fault strikes one answer only, in whichever dirty
                     worker comes first: it creates this file, and a model
                     that finds the file there answers normally
CHAT_WATCHDOG=S      the model's watchdog fires after S seconds without a
                     token, instead of WATCHDOG_SECONDS (CHAT_FAULT may be
                     left out: the model then does not misbehave)
CHAT_RESPAWN_LOAD_SECONDS=S
                     the dirty workers the arbiter forks after its first
                     ones, to replace or add to them, load their model in S
                     seconds instead of CHAT_LOAD_SECONDS: the first ones load quickly
CHAT_LISTEN_DELAY=S  each dirty worker binds its socket, then waits S seconds
                     before it listens: a request that comes meanwhile finds
                     the socket there but refused, as in the instant between
                     the two in gunicorn's own start
CHAT_ANSWER_TIMEOUT=S
                     the HTTP worker waits S seconds for a whole answer,
                     instead of main.ANSWER_TIMEOUT
"""

import asyncio
import os
import socket
import sys
import time

import gunicorn_conf
from gunicorn_conf import *  # noqa: F403  (the step's own settings)

CHAT_APP = "chat_app:ChatApp"


def _strikes(once: str) -> bool:
    """Whether the fault strikes now: always, or with `once` only the first time."""
    if not once:
        return True
    try:
        os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _faulty(split_tokens, kind, after, stall, once):
    def faulty_split_tokens(text):
        for count, token in enumerate(split_tokens(text)):
            if count == after and _strikes(once):
                if kind == "raise":
                    raise RuntimeError("injected fault: the model crashed")
                if kind == "fork":
                    _fork_a_helper()
                else:
                    time.sleep(stall)
            yield token

    return faulty_split_tokens


def _fork_a_helper():
    if os.fork() == 0:
        while True:
            time.sleep(3600)


def _listen_late(start_unix_server, delay):
    async def start_late(client_connected_cb, path, **options):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        time.sleep(delay)
        return await start_unix_server(client_connected_cb, sock=sock, **options)

    return start_late


def post_worker_init(worker):
    # Runs in each HTTP worker once it has imported the app from main.py
    # (the steps have no hook of their own here).
    if "CHAT_ANSWER_TIMEOUT" in os.environ:
        sys.modules["main"].ANSWER_TIMEOUT = float(os.environ["CHAT_ANSWER_TIMEOUT"])


def dirty_post_fork(arbiter, worker):
    gunicorn_conf.dirty_post_fork(arbiter, worker)
    # The arbiter imported the model's module before its first fork (to read
    # the app's settings): once its pool is full, every worker it forks from
    # now on inherits this.
    if "CHAT_RESPAWN_LOAD_SECONDS" in os.environ and len(arbiter.workers) >= arbiter.num_workers:
        model = sys.modules[CHAT_APP.partition(":")[0]]
        model.LOAD_SECONDS = float(os.environ["CHAT_RESPAWN_LOAD_SECONDS"])


def dirty_worker_init(worker):
    # The step's own hook first: it tells /ready that this worker's model is loaded.
    gunicorn_conf.dirty_worker_init(worker)
    # The module the dirty worker loaded the model from.
    model = sys.modules[type(worker.apps[CHAT_APP]).__module__]
    if "CHAT_LISTEN_DELAY" in os.environ:
        # gunicorn's dirty worker calls asyncio.start_unix_server once this hook returns.
        delay = float(os.environ["CHAT_LISTEN_DELAY"])
        asyncio.start_unix_server = _listen_late(asyncio.start_unix_server, delay)
    if "CHAT_WATCHDOG" in os.environ:
        model.WATCHDOG_SECONDS = float(os.environ["CHAT_WATCHDOG"])
    if "CHAT_FAULT" in os.environ:
        kind, _, after = os.environ["CHAT_FAULT"].partition(":")
        stall = float(os.environ.get("CHAT_FAULT_STALL", "30"))
        once = os.environ.get("CHAT_FAULT_ONCE", "")
        model.split_tokens = _faulty(model.split_tokens, kind, int(after or 0), stall, once)

"""A bench-only gunicorn config: the step's own settings, plus a record of where each chat ran.

`make bench` starts the mixed scenario's servers with `-c tools/bench_conf.py`;
the step's code knows nothing about it. Every answer logs one line when it
ends: the chat's tag (the `[chat N]` the bench puts in its prompt, a word the
model does not match on), the dirty worker's pid, and when the worker started
and stopped producing it, on the machine's monotonic clock (the one the bench
client times with).

BENCH_ROUTING=least-busy also replaces the arbiter's round-robin with a pick
of the worker that has the fewest requests, as a yardstick for what
load-aware routing in gunicorn would give. It patches gunicorn's private
methods and exists for measurement only: the steps never do this.
"""

import logging
import os
import re
import time

import gunicorn_conf
from gunicorn.dirty.arbiter import DirtyArbiter
from gunicorn_conf import *  # noqa: F403  (the step's own settings)

CHAT_APP = "chat_app:ChatApp"
TAG = re.compile(r"\[chat (\d+)\]")
log = logging.getLogger("gunicorn.error")


def _recorded(produce):
    def wrapper(prompt, *args, **kwargs):
        began = time.monotonic()
        try:
            yield from produce(prompt, *args, **kwargs)
        finally:
            tag = TAG.search(prompt)
            log.info("bench chat %s served by %d from %.6f to %.6f",
                     tag.group(1) if tag else "-", os.getpid(), began, time.monotonic())

    return wrapper


def dirty_worker_init(worker):
    # The step's own hook first, if it has one (from step 05 on it tells /ready the model is loaded).
    if hasattr(gunicorn_conf, "dirty_worker_init"):
        gunicorn_conf.dirty_worker_init(worker)
    app = worker.apps[CHAT_APP]
    app.stream = _recorded(app.stream)


def _least_busy():
    pick_in_turn = DirtyArbiter._get_available_worker
    execute = DirtyArbiter._execute_on_worker

    async def pick(self, app_path=None):
        busy = self.__dict__.setdefault("_bench_busy", {})
        first = await pick_in_turn(self, app_path)
        if first is None:
            return None
        # Ties go to the round-robin choice, so an idle server behaves as before.
        pid = min(self.workers, key=lambda p: (busy.get(p, 0), p != first))
        busy[pid] = busy.get(pid, 0) + 1
        return pid

    async def run(self, worker_pid, request, client_writer):
        try:
            return await execute(self, worker_pid, request, client_writer)
        finally:
            self._bench_busy[worker_pid] -= 1

    DirtyArbiter._get_available_worker = pick
    DirtyArbiter._execute_on_worker = run


if os.environ.get("BENCH_ROUTING") == "least-busy":
    _least_busy()

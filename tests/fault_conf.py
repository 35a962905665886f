"""A test-only gunicorn config: the step's own settings plus a faulty model.

The tests start a server with `-c tests/fault_conf.py` and CHAT_FAULT set;
the step's code knows nothing about it, and normal runs cannot reach it.

CHAT_FAULT=raise:N   the model raises after N tokens
CHAT_FAULT=stall:N   the model stops for CHAT_FAULT_STALL seconds after N tokens
"""

import os
import time

import gunicorn_conf
from gunicorn_conf import *  # noqa: F403  (the step's own settings)

CHAT_APP = "chat_app:ChatApp"


def _faulty(produce, kind, after, stall):
    def wrapper(*args, **kwargs):
        for count, token in enumerate(produce(*args, **kwargs)):
            if count == after:
                if kind == "raise":
                    raise RuntimeError("injected fault: the model crashed")
                time.sleep(stall)
            yield token

    return wrapper


def dirty_worker_init(worker):
    # The step's own hook first: it tells /ready that this worker's model is loaded.
    gunicorn_conf.dirty_worker_init(worker)
    kind, _, after = os.environ["CHAT_FAULT"].partition(":")
    stall = float(os.environ.get("CHAT_FAULT_STALL", "30"))
    app = worker.apps[CHAT_APP]
    # The action that produces tokens: `tokens` in step 02, `stream` later.
    name = "stream" if hasattr(app, "stream") else "tokens"
    setattr(app, name, _faulty(getattr(app, name), kind, int(after or 0), stall))

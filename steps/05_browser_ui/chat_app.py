"""The simulated language model, now a dirty app.

It picks a canned answer by keyword and produces it word by word, pausing
between words the way a real model pauses between tokens. Gunicorn loads it
once in every dirty worker, far from the HTTP workers it would otherwise block.
"""

import faulthandler
import logging
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gunicorn.dirty import DirtyApp

# Gunicorn's general log: its lines show up in the server's output.
log = logging.getLogger("gunicorn.error")

GREETING = (
    "Hello! I am a simulated language model that lives inside a Gunicorn "
    "server. Ask me to explain dirty workers, to describe streaming, or to "
    "show you some code, and I will answer one word at a time."
)

EXPLAIN = (
    "Dirty workers are a separate pool of processes that Gunicorn starts next "
    "to its HTTP workers. Slow, blocking work such as running a model goes to "
    "a dirty worker, which loads its resources once and keeps them in memory. "
    "The HTTP workers hand the work over through the dirty arbiter and stay "
    "free to answer other requests while the model thinks."
)

STREAMING = (
    "Token streaming sends each piece of an answer as soon as the model "
    "produces it, instead of waiting for the whole text. The server keeps the "
    "HTTP response open and writes one Server-Sent Event per token, so the "
    "reader sees the first words after a fraction of a second."
)

CODE = (
    "Here is a dirty app that loads a model once and streams its tokens:\n"
    "\n"
    "```python\n"
    "class ChatApp(DirtyApp):\n"
    "    def init(self):\n"
    "        self.model = load_model()\n"
    "\n"
    "    def stream(self, prompt):\n"
    "        yield from self.model.generate(prompt)\n"
    "```\n"
    "\n"
    "Each yielded token travels to the HTTP worker as soon as it exists."
)

GENERAL = (
    "That is a good question. I am only a simulated model, so my answers are "
    "canned, but they arrive word by word just like a real one. Try asking "
    "me to explain something, or about streaming, or for some code."
)

# Checked in this order; the first row with a keyword in the prompt wins.
ANSWERS = [
    ({"hello", "hi", "hey", "greetings"}, GREETING),
    ({"explain"}, EXPLAIN),
    ({"streaming"}, STREAMING),
    ({"code"}, CODE),
]

# CHAT_PACE scales every pause of the model: 0.1 answers ten times faster
# (the tests do, where the pace does not matter), 3 three times slower.
PACE = float(os.environ.get("CHAT_PACE", "1"))
# Seconds between two words: the time a real model would spend on a token.
WORD_DELAY = (0.03 * PACE, 0.08 * PACE)
# The thinking phase: a few progress dots, slower than words.
THINKING_DOTS = 5
DOT_DELAY = (0.25 * PACE, 0.4 * PACE)
# A working model never pauses this long between two tokens: past it, the
# watchdog ends the stuck dirty worker, and the arbiter starts a fresh one.
WATCHDOG_SECONDS = 20
# Seconds that "loading the weights" takes, once per dirty worker.
LOAD_SECONDS = float(os.environ.get("CHAT_LOAD_SECONDS", "0.5"))


def pick_answer(prompt: str) -> str:
    """Return the canned answer for a prompt, matching whole words only."""
    # Whole words, so that "think" does not count as "hi".
    words = set(re.findall(r"\w+", prompt.lower()))
    for keywords, answer in ANSWERS:
        if words & keywords:
            return answer
    return GENERAL


def split_tokens(text: str) -> list[str]:
    """Split text into words that keep the spacing before them.

    Joined together, the tokens give back the text exactly.
    """
    return re.findall(r"\s*\S+", text)


@contextmanager
def stop_signals_end_the_load() -> Iterator[None]:
    """Within the block, a request to stop ends this process at once.

    Gunicorn's dirty worker only takes note of a stop that comes while its apps
    load: it would load on, start serving, and be killed at the end of
    dirty_graceful_timeout (30 s), so Ctrl-C during a long load would hang.
    """

    def leave(signum, frame):
        # Gunicorn ends a dirty worker that raises SystemExit with os._exit.
        sys.exit(0)

    kept = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            signal.signal(sig, handler)


@contextmanager
def watchdog(seconds: float) -> Iterator[Callable[[], None]]:
    """Give a function to call for every token; if `seconds` pass without a
    call, print every thread's stack to stderr and end this process.

    Gunicorn's heartbeat comes from the dirty worker's event loop, which stays
    free while the model's thread is stuck: only the model's own loop can tell.
    faulthandler keeps one timer per process, which is enough while the worker
    runs its model in one thread (gunicorn's dirty_threads, 1 by default).
    """

    def alive():
        # Each call starts the countdown again.
        faulthandler.dump_traceback_later(seconds, exit=True)

    alive()
    try:
        yield alive
    finally:
        # Reached when the answer ends, fails, or is abandoned (a client hang-up closes the generator).
        faulthandler.cancel_dump_traceback_later()


class ChatApp(DirtyApp):
    """A stand-in for a real model: loaded once, slow to answer, one word at a time.

    Every public method is an action that HTTP workers can call by name.
    """

    def init(self):
        # A real model would load its weights here, once per dirty worker.
        with stop_signals_end_the_load():
            log.info("Loading the chat model in dirty worker %s", os.getpid())
            time.sleep(LOAD_SECONDS)
        log.info("Chat model loaded in dirty worker %s", os.getpid())

    def stream(self, prompt: str, thinking: bool = False) -> Iterator[dict]:
        """Yield the answer word by word, each word with the phase it belongs to.

        With thinking, a visible thinking phase comes first: an opening
        marker, progress dots, a closing marker. A generator makes this a
        streaming action: the dirty worker sends each event on at once.
        """
        with watchdog(WATCHDOG_SECONDS) as alive:
            if thinking:
                yield {"token": "[thinking", "phase": "thinking"}
                for _ in range(THINKING_DOTS):
                    time.sleep(random.uniform(*DOT_DELAY))
                    alive()
                    yield {"token": ".", "phase": "thinking"}
                yield {"token": "]\n\n", "phase": "thinking"}
            for token in split_tokens(pick_answer(prompt)):
                time.sleep(random.uniform(*WORD_DELAY))
                alive()
                yield {"token": token, "phase": "answer"}

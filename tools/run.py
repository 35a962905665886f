"""Serve one step, or a copy of one, with gunicorn: `python -m tools.run [STEP] [PORT] [DIR]`.

`make run` calls it (`make run STEP=02 PORT=8001`, `make run DIR=workspace`).
It starts gunicorn in the folder and passes its log on, with two changes:

- Every dirty worker logs the same few lines as it starts and stops (spawned,
  model loaded, app initialized, listening, exiting, exited): with 32 of them
  that is over a hundred lines, so only those of the first two are shown.
  Everything else passes: warnings, errors, tracebacks, the access log, and
  every line of a worker started later (one that replaces a crashed one).
- Once the model workers have loaded (GET /ready; GET /health for a step
  without it), one line says so, and how long the first and the last took.

Ctrl-C: the terminal sends SIGINT to gunicorn and to this script alike.
Gunicorn stops its workers; this script passes on what they log meanwhile,
then exits with gunicorn's status. A SIGTERM sent to this script alone is
passed on to gunicorn.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness.steps import UnknownStep, find, last_core

# How many dirty workers show their start-up lines in full.
SHOWN_WORKERS = 2
# The routine lines of one dirty worker; the named group is that worker's pid
# (absent: the pid of the process that logged the line, the worker itself).
ROUTINE = [
    re.compile(pattern)
    for pattern in (
        r"Spawned dirty worker \(pid: (?P<pid>\d+)\)",
        r"Loading the chat model in dirty worker (?P<pid>\d+)",
        r"Chat model loaded in dirty worker (?P<pid>\d+)",
        r"Initialized dirty app: ",
        r"Dirty worker (?P<pid>\d+) (?:listening on|exiting)",
        r"Dirty worker exited \(pid:(?P<pid>\d+)\)",
    )
]
# The pid of the process that logged a line: gunicorn's text format, or
# step 06's JSON lines.
LOGGED_BY = re.compile(r'^\[[^\]]*\] \[(\d+)\]|"pid": (\d+)')
# This script's own readiness probes carry this query, and their access log
# lines are left out: they are not the learner's requests.
PROBE = "from=make-run"
# Poll this often until ready; after LOAD_PATIENCE seconds, say how far it got.
POLL_EVERY = 0.1
LOAD_PATIENCE = 60.0


class StartupLog:
    """Decide, line by line, what of gunicorn's log reaches the terminal."""

    def __init__(self, shown_workers: int = SHOWN_WORKERS):
        self.shown_workers = shown_workers
        self.ready = False
        # Dirty worker pid -> whether its routine lines are shown.
        self.workers: dict[int, bool] = {}

    def routine_worker(self, line: str) -> int | None:
        """The dirty worker a routine line is about, or None for any other line."""
        for pattern in ROUTINE:
            found = pattern.search(line)
            if found:
                if found.groupdict().get("pid"):
                    return int(found["pid"])
                logged_by = LOGGED_BY.search(line)
                return int(logged_by[1] or logged_by[2]) if logged_by else None
        return None

    def keep(self, line: str) -> bool:
        if PROBE in line:
            return False
        pid = self.routine_worker(line)
        if pid is None:
            return True
        if pid not in self.workers:
            # The first few workers of the start, and every worker started after it.
            shown = sum(self.workers.values())
            self.workers[pid] = self.ready or shown < self.shown_workers
        return self.workers[pid]

    @property
    def hidden(self) -> int:
        return sum(not shown for shown in self.workers.values())


def probe(url: str) -> tuple[int, dict]:
    """GET a URL: its status and JSON body; 0 if nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        return exc.code, body
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}


class Readiness:
    """Poll the server until its model workers have loaded; then say so, once."""

    def __init__(self, base_url: str, started: float):
        self.base_url = base_url
        self.started = started
        self.path = "/ready"
        self.first: float | None = None
        self.next_poll = started
        self.done = False

    def poll(self, now: float) -> str | None:
        """None while loading; the line to print once it is over."""
        if self.done or now < self.next_poll:
            return None
        self.next_poll = now + POLL_EVERY
        status, body = probe(f"{self.base_url}{self.path}?{PROBE}")
        # After the answer: until a worker serves, the request waits in the listen queue.
        elapsed = time.monotonic() - self.started
        if status == 404 and self.path == "/ready":
            # A step without dirty workers (step 01) has no /ready: serving is all.
            self.path = "/health"
            return None
        if self.path == "/health":
            if status == 200:
                self.done = True
                return f"Ready in {elapsed:.1f} s"
            return None
        loaded, workers = body.get("loaded", 0), body.get("workers", 0)
        if status == 200 and self.first is None:
            self.first = elapsed
        if status == 200 and loaded >= workers:
            self.done = True
            return f"Ready: {loaded} of {workers} model workers loaded in {elapsed:.1f} s" + (
                f" (the first in {self.first:.1f} s)" if workers > 1 else ""
            )
        if elapsed >= LOAD_PATIENCE:
            self.done = True
            if status == 200:
                return (f"Ready: {loaded} of {workers} model workers loaded after {elapsed:.0f} s "
                        f"(the first in {self.first:.1f} s); the others are still loading")
            return f"Not ready after {elapsed:.0f} s: {loaded} of {workers} model workers loaded"
        return None


def resolve(step: str, folder: str) -> tuple[Path, str]:
    """The folder to serve and its server's label: DIR if given, else the step, else the last core step."""
    if folder:
        path = Path(folder).resolve()
        if not (path / "main.py").is_file() or not (path / "gunicorn_conf.py").is_file():
            raise UnknownStep(f"{folder} has no main.py and gunicorn_conf.py: is it a copy of a step? "
                              "(make workspace STEP=03 makes one)")
        return path, path.name
    chosen = find(step) if step else last_core()
    return chosen.path, chosen.code


def serve(folder: Path, port: str, label: str) -> int:
    # A name per step (or folder) and port: gunicorn 27 stops the dirty arbiter
    # of another server with the same name (see proc_name in gunicorn_conf.py).
    name = f"dirty-chat-{label}-{port}"
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn_conf.py",
               "--bind", f"127.0.0.1:{port}", "--name", name, "main:app"]
    # Unbuffered, so that a print() in the app shows at once through the pipe.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Ctrl-C reaches gunicorn too: keep passing its log on while it stops.
    # (gunicorn starts with the default handler: exec resets caught signals.)
    signal.signal(signal.SIGINT, lambda *_: None)
    started = time.monotonic()
    gunicorn = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    signal.signal(signal.SIGTERM, lambda signum, _frame: gunicorn.send_signal(signum))

    log = StartupLog()
    readiness = Readiness(f"http://127.0.0.1:{port}", started)
    pipe = gunicorn.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(pipe, selectors.EVENT_READ)
    pending = b""
    # Until gunicorn has its port, an answer there would come from another server.
    bound = False
    exited_at: float | None = None

    def forward(chunk: bytes) -> None:
        nonlocal pending, bound
        *lines, pending = (pending + chunk).split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            bound = bound or "Listening at: " in line
            if log.keep(line):
                sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def drain(timeout: float) -> bool:
        """Pass on what gunicorn has written, waiting up to `timeout` for more; False at its end."""
        while selector.select(timeout):
            chunk = os.read(pipe, 65536)
            if not chunk:
                return False
            forward(chunk)
            timeout = 0
        return True

    while drain(POLL_EVERY):
        now = time.monotonic()
        if gunicorn.poll() is not None:
            # A worker left behind may hold the pipe open: do not wait for it long.
            exited_at = exited_at or now
            if now - exited_at > 2:
                break
        elif bound and (line := readiness.poll(now)):
            # What gunicorn logged before it answered comes first.
            drain(0)
            log.ready = True
            if log.hidden:
                line += f"; the log shows {log.shown_workers} of them"
            print(line, flush=True)
    if pending:
        forward(b"\n")
    code = gunicorn.wait()
    # Killed by a signal: report it as a shell would.
    return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    step = argv[1] if len(argv) > 1 else ""
    port = argv[2] if len(argv) > 2 and argv[2] else "8000"
    folder = argv[3] if len(argv) > 3 else ""
    try:
        path, label = resolve(step, folder)
    except UnknownStep as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 2
    print(f"Serving {folder or path.name} on http://127.0.0.1:{port}  (Ctrl-C stops it)", flush=True)
    return serve(path, port, label)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

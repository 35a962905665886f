"""`make run`: it serves a copy of a step, says in one line when the models are
loaded, keeps the dirty workers' routine lines short, and stops on Ctrl-C."""

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx

from harness.server import ROOT, free_port
from tools.docs_commands import reader_env

# More dirty workers than make run shows the start of (tools.run, SHOWN_WORKERS).
WORKERS = 4


class Output:
    """A process's output, read line by line in a thread, so that waiting for a line can time out."""

    def __init__(self, process: subprocess.Popen):
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, pattern: str | None, timeout: float) -> str:
        """The lines up to the first that matches `pattern` (None: up to the end)."""
        seen = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if pattern and re.search(pattern, line):
                break
        return "".join(seen)


def test_make_run_serves_a_copy_and_says_when_it_is_ready(step, tmp_path):
    workspace = tmp_path / "workspace"
    shutil.copytree(step.path, workspace, ignore=shutil.ignore_patterns("__pycache__"))
    port = free_port()
    # The command make run runs (the Makefile's part is checked below): make
    # itself dies of the Ctrl-C it gets too, whatever gunicorn's status.
    command = [sys.executable, "-m", "tools.run", "", str(port), str(workspace)]
    dry = subprocess.run(["make", "-n", "run", f"DIR={workspace}", f"PORT={port}"], cwd=ROOT,
                         env=reader_env(), capture_output=True, text=True, check=True).stdout
    assert f'-m tools.run "" "{port}" "{workspace}"' in dry, dry
    run = subprocess.Popen(command, cwd=ROOT, env=reader_env(DIRTY_WORKERS=str(WORKERS)), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output = Output(run)
        started = output.until(r"^(Ready|Not ready)\b", timeout=90)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            # The learner's own requests are in the log: only make run's probes are not.
            assert http.get("/health").status_code == 200
        # Step 06 logs JSON, where the quotes of the access line are escaped.
        logged = output.until(r'GET /health HTTP/1\.1\\?" 200', timeout=20)
        # Ctrl-C: the terminal signals the whole foreground group.
        os.killpg(run.pid, signal.SIGINT)
        code = run.wait(30)
        stopping = output.until(None, timeout=10)
        left = poll(lambda: not group_alive(run.pid), timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    assert started.startswith(f"Serving {workspace} on http://127.0.0.1:{port}"), started[:200]
    ready = re.search(r"^Ready(?:: (\d+) of (\d+) model workers loaded in [\d.]+ s.*| in [\d.]+ s)$",
                      started, re.MULTILINE)
    assert ready, f"make run did not say it was ready:\n{started}"
    if step.number >= 2:
        workers = 2 if step.number == 2 else WORKERS
        assert (int(ready[1]), int(ready[2])) == (workers, workers), ready[0]
        # Each dirty worker logs the same lines; make run shows those of two.
        for line in ("Loading the chat model in dirty worker", "Chat model loaded in dirty worker"):
            assert started.count(line) == min(workers, 2), started
        assert ready[0].endswith("; the log shows 2 of them") == (workers > 2), ready[0]
    assert "GET /health HTTP/1.1" in logged, f"a request of the learner's is not in the log:\n{logged}"
    assert "from=make-run" not in started + logged + stopping, "make run's own probes reached the log"
    assert code == 0, f"Ctrl-C: make run exited with {code}\n{stopping}"
    assert "Shutting down: Master" in stopping
    assert left, "Ctrl-C: processes of the server were still running 10 s after make run exited"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def poll(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True

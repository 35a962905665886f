"""Start and stop a real gunicorn server for one step folder."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import httpx

from harness.procs import process_tree
from harness.steps import all_steps

ROOT = Path(__file__).resolve().parent.parent
# Step 06 wants an API key and, without CHAT_API_KEY set, takes this
# development key. Clients of the tests, notebooks and benchmarks send it
# to every step; the steps before 06 ignore the header.
DEV_KEY = "dev-key"
AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
# What gunicorn logs when a dirty worker has loaded its apps and can serve.
DIRTY_READY = r"Dirty worker \d+ listening"
# Where step 06's Prometheus metrics live: its config makes a directory unless given one.
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


class ServerError(RuntimeError):
    """The server did not start, or did not stop, as it should."""


@functools.cache
def shared_module_names() -> frozenset[str]:
    """The module names that more than one step folder has (main, capacity...)."""
    stems = Counter(path.stem for step in all_steps() for path in step.path.glob("*.py"))
    return frozenset(stem for stem, steps in stems.items() if steps > 1)


@contextlib.contextmanager
def step_modules(step_dir: Path | str) -> Iterator[Callable[[str], ModuleType]]:
    """Import modules of one step folder afresh: `with step_modules(d) as load: load("main")`.

    The steps share module names (main, chat_app, gunicorn_conf, capacity):
    each load forgets those, so that two steps never mix. A module that only
    one step has stays imported, as in a server: step 06's metrics registers
    its Prometheus metrics once. On exit sys.path, sys.modules and os.environ
    are as they were: importing step 06's config sets PROMETHEUS_MULTIPROC_DIR,
    and servers started later must not inherit it; the directory it made for
    this process goes too.
    """
    saved_path, saved_environ = list(sys.path), dict(os.environ)

    def forget() -> None:
        for module in shared_module_names():
            sys.modules.pop(module, None)

    def load(name: str) -> ModuleType:
        forget()
        return importlib.import_module(name)

    sys.path.insert(0, str(step_dir))
    importlib.invalidate_caches()
    try:
        yield load
    finally:
        forget()
        sys.path[:] = saved_path
        metrics_dir = os.environ.get(METRICS_DIR)
        if metrics_dir and metrics_dir != saved_environ.get(METRICS_DIR):
            shutil.rmtree(metrics_dir, ignore_errors=True)
        os.environ.clear()
        os.environ.update(saved_environ)


def run_in_fresh_loop(coroutine):
    """asyncio.run() in a thread of its own.

    Tests share one process with Playwright's sync API, which keeps an event
    loop running in the main thread; asyncio.run() refuses to start there.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def loopback_client(base_url: str, **options) -> httpx.Client:
    """An httpx client for a server of the tests, which speaks plain HTTP on loopback.

    Without TLS it need not load the CA bundle, which costs 20 ms of CPU a
    client, and the tests make hundreds of clients, some in polling loops.
    """
    return httpx.Client(base_url=base_url, verify=False, **options)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(base_url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll GET /health until it answers 200, the process dies, or time runs out."""
    wait_for_ready(base_url, timeout, proc, path="/health")


def _get_json(url: str) -> tuple[int, dict]:
    """GET a URL: its status and JSON body (empty if it has none)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        parsed = {}
    return status, parsed if isinstance(parsed, dict) else {}


def wait_for_ready(
    base_url: str,
    timeout: float,
    proc: subprocess.Popen | None = None,
    *,
    workers: int = 0,
    path: str = "/ready",
) -> None:
    """Poll GET /ready until it answers 200 with every dirty worker's model loaded
    (at least `workers` of them).

    A step without /ready (step 01 has no dirty workers) answers 404 there:
    then GET /health answering 200 is enough. Raises ServerError if the
    process dies or time runs out.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            status, body = _get_json(f"{base_url}{path}")
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        else:
            last = f"{path} answered {status} {body}"
            if status == 404 and path == "/ready":
                path = "/health"
                continue
            # Every dirty worker the arbiter keeps, or `workers` if more: a chat
            # is held while any of them still loads.
            wanted = max(workers, body.get("workers", 0))
            if status == 200 and (path != "/ready" or body.get("loaded", 0) >= wanted):
                return
        time.sleep(0.05)
    raise ServerError(f"{base_url} was not ready within {timeout:.0f} s ({last})")


@dataclass
class LiveServer:
    """A gunicorn process tree serving one step folder on a loopback port."""

    step_dir: Path
    port: int
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    terminated: bool = field(default=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 30.0) -> None:
        """Poll the log until `pattern` (a regex) has matched `count` times."""
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.log())) < count:
            if self.proc.poll() is not None:
                raise ServerError(f"the server exited with code {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise ServerError(f"{count} log lines matching {pattern!r} did not appear in {timeout:.0f} s")
            time.sleep(0.05)

    def running(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """Ask the server to stop (SIGTERM) without waiting: stop() waits for it later."""
        if self.proc.poll() is None and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then SIGKILL the whole group after `timeout` seconds.

        Generous: a loaded machine can take a while to stop a server, and only
        processes that exit on their own write their coverage data.
        """
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Anything the master left behind (it should leave nothing) goes too.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.proc.returncode

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_server(
    step_dir: Path | str,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | tuple[str, ...] = (),
    config: Path | str = "gunicorn_conf.py",
    port: int | None = None,
    log_dir: Path | None = None,
    timeout: float = 60.0,
    dirty_workers: int = 0,
    ready: bool = True,
) -> LiveServer:
    """Run `gunicorn -c gunicorn_conf.py main:app` inside the step folder.

    Returns once /ready answers 200 (/health for a step without /ready) and,
    if `dirty_workers` is given, once that many dirty workers have loaded the
    model and said they listen. With `ready=False` it returns as soon as
    /health answers, for a test that watches a server while it loads.
    Extra gunicorn arguments come after the config file, so they override it;
    `env` adds environment variables.
    """
    step_dir = Path(step_dir).resolve()
    if not (step_dir / "main.py").is_file():
        raise ServerError(f"{step_dir} has no main.py")
    port = port or free_port()
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="dirty-chat-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{step_dir.name}-{port}.log"
    # Step 06 makes a metrics directory of its own unless given one: not the
    # one a test that imported its config (step_modules) has in os.environ.
    inherited = {key: value for key, value in os.environ.items() if key != METRICS_DIR}
    full_env = {**inherited, **(env or {})}
    # The step folder first, so `import gunicorn_conf` finds the step's own.
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(step_dir), full_env.get("PYTHONPATH", "")) if p
    )
    command = [
        sys.executable, "-m", "gunicorn",
        "-c", str(config),
        "--bind", f"127.0.0.1:{port}",
        # Gunicorn 27 keeps the dirty arbiter's pid in a file named after the
        # process name and, when a server starts, kills the arbiter that file
        # names as an orphan: servers sharing a name kill each other's.
        "--name", f"dirty-chat-{step_dir.name}-{port}",
        *args,
        "main:app",
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=step_dir,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own process group, so that stop() can reach every child.
            start_new_session=True,
        )
    server = LiveServer(step_dir=step_dir, port=port, proc=proc, log_path=log_path, env=env or {})
    try:
        if ready:
            wait_for_ready(server.base_url, timeout, proc, workers=dirty_workers)
            server.wait_for_log(DIRTY_READY, dirty_workers, timeout)
        else:
            wait_for_health(server.base_url, timeout, proc)
    except ServerError as exc:
        server.stop()
        raise ServerError(f"{exc}\n--- server log ({log_path}) ---\n{server.log()}") from None
    return server

"""Live servers for the notebooks, and a few ways to look inside them.

Every notebook begins with `server = live.serve("03")`: that is the server at
$CHAT_URL if the variable is set (a server you run yourself, e.g. with
`make run STEP=03`), or else the step's own gunicorn, started on a free port
and ready once this returns. `server.stop()` in the last cell stops it.
Experiments that need particular settings start a server of their own with
`live.start("03", DIRTY_WORKERS=1)`.

The rest is plumbing that the notebooks would rather not show: the process
tree, the server log, and two client functions that the notebooks first
write out in full (`probe_health` in 01, `sse_events` in 03) and later reuse
from here; a test checks that both copies stay the same.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
# The notebooks run with notebooks/ as their working directory: make the
# repository's `harness` package importable from there.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness import procs  # noqa: E402
from harness.procs import memory_kib  # noqa: E402
from harness.server import LiveServer, ServerError, start_server, step_modules  # noqa: E402
from harness.steps import UnknownStep, find  # noqa: E402

# What a dirty worker logs once it has loaded the model (steps 02 and later).
MODEL_LOADED = r"Chat model loaded in dirty worker (\d+)"
# Seconds a server gets to start, and a server from CHAT_URL to answer /health.
START_TIMEOUT = 60.0
HEALTH_TIMEOUT = 10.0


class NotebookServerError(RuntimeError):
    """A notebook could not get the server it needs."""


@dataclass
class Server:
    """A step's server as a notebook sees it: an address, and what runs behind it."""

    name: str
    url: str
    live: LiveServer | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def owned(self) -> bool:
        """True if this notebook started the server (and so may stop it)."""
        return self.live is not None

    def running(self) -> bool:
        return self.live.running() if self.live else True

    def pids(self) -> list[int]:
        """The master's pid and all its descendants' ([] if not on this machine)."""
        if self.live is not None:
            return self.live.pids()
        master = procs.listening_master(urlsplit(self.url).port or 80)
        return procs.process_tree(master) if master else []

    def log(self) -> str:
        if self.live is None:
            raise NotebookServerError(
                f"{self.url} was started outside this notebook: its log is in the terminal that runs it"
            )
        return self.live.log()

    def stop(self) -> None:
        if self.live is None:
            print(f"{self.url} came from CHAT_URL: it is yours, so it keeps running")
            return
        self.live.stop()
        print(f"stopped {self.name} on {self.url}")

    def __repr__(self) -> str:
        settings = "".join(f", {key}={value}" for key, value in self.env.items())
        origin = "started by this notebook" if self.owned else "from CHAT_URL"
        return f"<{self.name} on {self.url}{settings} ({origin})>"


_started: list[Server] = []
_log_dir: Path | None = None


def serve(step: str) -> Server:
    """The notebook's server: the one at $CHAT_URL, or a fresh one of this step."""
    url = os.environ.get("CHAT_URL", "").strip()
    if url:
        return attach(url)
    return start(step)


def attach(url: str) -> Server:
    """A server someone else runs; it must answer GET /health."""
    url = url.rstrip("/")
    try:
        requests.get(f"{url}/health", timeout=HEALTH_TIMEOUT).raise_for_status()
    except requests.RequestException as exc:
        raise NotebookServerError(
            f"CHAT_URL={url} does not answer: {exc}. Start it (make run STEP=NN PORT=...) "
            "or unset CHAT_URL to let the notebook start its own server."
        ) from None
    return Server(name="CHAT_URL", url=url)


def start(step: str, *, ready: bool = True, **env: object) -> Server:
    """Start a step's gunicorn on a free port, with extra environment (DIRTY_WORKERS=1).

    Returns once /health answers and every dirty worker has loaded the model;
    with ready=False as soon as /health answers, to watch the model load.
    """
    global _log_dir
    env = {key: str(value) for key, value in env.items()}
    try:
        step_dir = find(step).path
    except UnknownStep as exc:
        raise NotebookServerError(f"cannot start a server for this notebook: {exc}") from None
    if _log_dir is None:
        _log_dir = Path(tempfile.mkdtemp(prefix="dirty-chat-notebook-"))
    try:
        live = start_server(
            step_dir,
            env=env,
            log_dir=_log_dir,
            timeout=START_TIMEOUT,
            dirty_workers=dirty_workers(step_dir, env) if ready else 0,
            ready=ready,
        )
    except ServerError as exc:
        raise NotebookServerError(f"the server of step {step_dir.name} did not start: {exc}") from None
    server = Server(name=step_dir.name, url=live.base_url, live=live, env=env)
    _started.append(server)
    return server


def dirty_workers(step_dir: Path, env: dict[str, str]) -> int:
    """How many dirty workers the step's gunicorn_conf.py asks for, with this environment."""
    # step_modules undoes what reading it does (step 06's makes a metrics directory).
    with mock.patch.dict(os.environ, env), step_modules(step_dir) as load:
        try:
            conf = load("gunicorn_conf")
        except Exception:
            # Gunicorn will fail on the same file, and its log will say why.
            return 0
    return int(getattr(conf, "dirty_workers", 0)) if getattr(conf, "dirty_apps", None) else 0


def running_servers() -> list[Server]:
    """The servers this kernel started that still run."""
    return [server for server in _started if server.running()]


@atexit.register
def _stop_everything() -> None:
    # A notebook that fails halfway never reaches its server.stop() cell.
    for server in running_servers():
        server.live.stop()
    if _log_dir is not None:
        shutil.rmtree(_log_dir, ignore_errors=True)


# --- Looking inside a server -------------------------------------------------


def command_line(pid: int) -> str:
    """The process's arguments, the interpreter shortened to its name."""
    args = procs.command_line(pid)
    return " ".join([Path(args[0]).name, *args[1:]]) if args else "?"


# harness.procs.process_roles names the roles tersely; the notebooks spell them out.
ROLE_NAMES = {"master": "master", "http": "HTTP worker", "arbiter": "dirty arbiter", "dirty": "dirty worker"}


def roles(pids: list[int]) -> dict[int, str]:
    """Name each process of a gunicorn tree, whose master is pids[0], by its place in it.

    Of the master's children, the one with children of its own is the dirty
    arbiter, whose children are the dirty workers; the others are HTTP workers.
    """
    if not pids:
        return {}
    return {pid: ROLE_NAMES[role] for pid, role in procs.process_roles(pids[0]).items()}


class Table:
    """Rows of text that print as aligned columns."""

    def __init__(self, header: list[str], rows: list[list[object]]):
        self.header = header
        self.rows = [[str(cell) for cell in row] for row in rows]

    def __repr__(self) -> str:
        lines = [self.header, *self.rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(self.header) - 1)]
        return "\n".join(
            "  ".join([*(cell.ljust(width) for cell, width in zip(line, widths, strict=False)), line[-1]])
            for line in lines
        )


ROLE_ORDER = ["master", "HTTP worker", "dirty arbiter", "dirty worker"]


def process_tree_table(server: Server) -> Table:
    """One row per process of the server: pid, parent, role, memory, sockets, command line."""
    named = roles(server.pids())
    if not named:
        return Table(["note"], [[f"no process listens on {server.url} on this machine"]])
    rows = []
    for pid in sorted(named, key=lambda pid: (ROLE_ORDER.index(named[pid]), pid)):
        memory = memory_kib([pid]) / 1024
        sockets = procs.socket_count([pid])
        rows.append([pid, procs.parent_pid(pid), named[pid], f"{memory:.1f} MiB", sockets, command_line(pid)])
    memory_column = f"memory ({procs.MEMORY_KIND.upper()})"
    return Table(["pid", "parent", "role", memory_column, "sockets", "command line"], rows)


def dirty_worker_pids(server: Server) -> list[int]:
    named = roles(server.pids())
    return sorted(pid for pid, role in named.items() if role == "dirty worker")


def model_loads(server: Server) -> list[int] | None:
    """The pids of the dirty workers that logged loading the model, once per load.

    None for a server from CHAT_URL: its log is in the terminal that runs it.
    """
    if not server.owned:
        print(f"{server.url} came from CHAT_URL: count the lines in its own terminal")
        return None
    return [int(pid) for pid in re.findall(MODEL_LOADED, server.log())]


# --- Client code first written out in the notebooks --------------------------


def probe_health(url, prompt="hello", margin=0.3):
    """Send one chat, and GET /health over and over until it is answered.

    Each probe opens a fresh connection (`Connection: close`), as a new
    visitor would. Probing starts `margin` seconds before the chat and goes
    on `margin` seconds after it. Times are seconds since probing began.
    """
    began = time.perf_counter()
    chat = {}
    probes = []  # (sent at, seconds until answered)

    def run_chat():
        chat["sent"] = time.perf_counter() - began
        response = requests.post(f"{url}/chat/sync", json={"prompt": prompt}, timeout=60)
        chat["answered"] = time.perf_counter() - began
        chat["status"] = response.status_code

    def probe():
        sent = time.perf_counter()
        requests.get(f"{url}/health", headers={"Connection": "close"}, timeout=60).raise_for_status()
        probes.append((sent - began, time.perf_counter() - sent))
        time.sleep(0.005)

    while time.perf_counter() - began < margin:
        probe()
    chatting = threading.Thread(target=run_chat)
    chatting.start()
    while chatting.is_alive():
        probe()
    while time.perf_counter() - began < chat["answered"] + margin:
        probe()
    return {"chat": chat, "probes": probes}


def sse_events(response):
    """Yield the payload of each event of a streamed SSE response, as it arrives.

    An event is its `data: ` lines up to a blank line. The payload is their
    JSON, or the string "[DONE]" for the last event.
    """
    data = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            data.append(line[len("data: "):])
        elif line == "" and data:
            text = "\n".join(data)
            data = []
            yield text if text == "[DONE]" else json.loads(text)


def timed_events(url, prompt, **body):
    """POST /chat and return [(seconds since the request, payload), ...]."""
    started = time.perf_counter()
    with requests.post(f"{url}/chat", json={"prompt": prompt, **body}, stream=True, timeout=60) as response:
        response.raise_for_status()
        return [(time.perf_counter() - started, payload) for payload in sse_events(response)]


def js_function(source, name):
    """A top-level function of a JavaScript file, with the comment above it."""
    lines = source.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(rf"(async )?function {name}\(", line)]
    if not starts:
        raise ValueError(f"no top-level function {name} in this script")
    first = starts[0]
    while first > 0 and re.match(r"\s*(/\*\*|\*|//)", lines[first - 1]):
        first -= 1
    last = lines.index("}", starts[0])
    return "\n".join(lines[first : last + 1])


def show_code(code, language="javascript"):
    """Display code with syntax colouring in the notebook."""
    from IPython.display import Markdown

    return Markdown(f"```{language}\n{code}\n```")


# --- Pictures ----------------------------------------------------------------


def plot_probe(ax, result, title):
    """Draw each /health probe's wait against when it was sent; shade the chat."""
    chat = result["chat"]
    sent = [at for at, _ in result["probes"]]
    waited = [seconds * 1000 for _, seconds in result["probes"]]
    ax.axvspan(chat["sent"], chat["answered"], color="tab:orange", alpha=0.2, label="chat running")
    ax.plot(sent, waited, ".", markersize=4, label="GET /health")
    # A probe that waited far longer than usual: draw its wait as a line, and say how long.
    typical = sorted(waited)[len(waited) // 2]
    for at, seconds in result["probes"]:
        if seconds * 1000 > 10 * typical:
            ax.hlines(seconds * 1000, at, at + seconds, color="tab:red", linewidth=1)
            ax.annotate(f"sent at {at:.1f} s, answered {seconds:.1f} s later", (at + seconds, seconds * 1000),
                        xytext=(0, -12), textcoords="offset points", ha="right", color="tab:red")
    ax.set_yscale("log")
    ax.set_xlabel("probe sent at (s)")
    ax.set_ylabel("answered after (ms)")
    ax.set_title(title)
    ax.legend(loc="center right")

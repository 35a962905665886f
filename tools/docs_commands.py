"""Find every shell command the tutorial shows, and run it: a page cannot show a command that does not work.

The convention, in docs/**/*.md and the steps' READMEs:

- A command is a line ``$ command`` in a ```` ```console ```` block.
- Its output, when the page shows one, is the very next line:
  ``--8<-- "docs/generated/outputs/<page>/<name>.txt"``. `tools/docs_outputs.py`
  (``make docs-outputs``) writes that file by running the command; the page
  includes it with pymdownx.snippets. Nothing else may stand in a console block,
  so no output is ever typed by hand.
- Pages write the server as ``http://127.0.0.1:8000``; the runner points it at
  a live server of the page's step (the step of a step page or step README, or
  ``server_step: "04"`` in a page's front matter).

How each command is run (`Command.kind`):

- ``http``: it talks to 127.0.0.1:8000; it runs against a live server of its
  step and must exit 0 (curl with ``--fail``, or ``-w`` printing the status,
  which the output comparison then checks).
- ``serve``: it starts a server (``make run``, ``make docs``, ``gunicorn``); it
  runs until the server answers, then gets Ctrl-C (SIGINT) and must stop.
- ``dry-run``: ``make test``, ``make check``, ``make wheelhouse``,
  ``make offline-venv``: running them would start the test suite inside itself
  (and erase its coverage data) or download the whole lock file, so the suite
  runs them as ``make -n`` (the target exists and takes these arguments);
  tests/repo/test_wheelhouse.py runs the wheelhouse targets for real on two wheels,
  and the output of ``make test STEP=NN`` is checked against the test count.
- ``shell``: anything else; it runs in a sandbox copy of the repository, in the
  page's order (``make workspace`` then ``make diff``...), and must exit 0.

Outputs are compared after normalization: the live port becomes 8000 again and
the sandbox path disappears; streams are compared event by event, leaving out
"waiting" events and keep-alive comments; server logs are compared line by line
with digits (times, pids) masked, in any order. In other answers, what differs
from one call to the next by design is masked: an OpenAI answer's id and
creation time, and the value of a Prometheus sample (a count depends on what
the server served before).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from harness.server import free_port
from harness.sse import Event, split_events

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = Path("docs/generated/outputs")
PAGE_URL = "http://127.0.0.1:8000"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
OUTPUT_LINE = re.compile(r'^--8<-- "(?P<path>docs/generated/outputs/[^"]+\.txt)"$')
FRONT_MATTER_STEP = re.compile(r'^server_step:\s*"?(\d\d)"?\s*$', re.MULTILINE)
STEP_PAGE = re.compile(r"^docs/steps/(\d\d)-[\w-]+\.md$")
STEP_README = re.compile(r"^steps/(\d\d)_\w+/README\.md$")
# A command may start with environment variables: DIRTY_WORKERS=1 make run STEP=03.
ENV_PREFIX = r"^(?:[A-Z_]+=\S*\s+)*"
DRY_RUN = re.compile(ENV_PREFIX + r"make (test|check|wheelhouse|offline-venv)\b")
SERVE = re.compile(ENV_PREFIX + r"make (run|docs)\b|\bgunicorn\b|\bmkdocs serve\b")
LOCAL_ADDRESS = re.compile(r"\b(127\.0\.0\.1:|0\.0\.0\.0:|localhost:|PORT=)(8000|8001)\b")


def sources(root: Path = ROOT) -> list[Path]:
    """The files whose commands are checked: the site, and the steps' READMEs."""
    pages = sorted(p for p in (root / "docs").rglob("*.md") if "generated" not in p.relative_to(root).parts)
    return pages + sorted(root.glob("steps/*/README.md"))


@dataclass(frozen=True)
class Command:
    source: Path
    line: int
    text: str
    output: Path | None = None
    step: str | None = None

    @property
    def where(self) -> str:
        try:
            return f"{self.source.relative_to(ROOT)}:{self.line}"
        except ValueError:
            return f"{self.source}:{self.line}"

    @property
    def kind(self) -> str:
        if DRY_RUN.search(self.text):
            return "dry-run"
        if SERVE.search(self.text):
            return "serve"
        if PAGE_URL in self.text:
            return "http"
        return "shell"


@dataclass
class Page:
    path: Path
    commands: list[Command] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def page_step(path: Path, text: str, root: Path = ROOT) -> str | None:
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        relative = path.name
    for pattern in (STEP_PAGE, STEP_README):
        if match := pattern.match(relative):
            return match.group(1)
    if text.startswith("---\n"):
        front = text[4:text.find("\n---", 4)]
        if match := FRONT_MATTER_STEP.search(front):
            return match.group(1)
    return None


def extract(path: Path, root: Path = ROOT) -> Page:
    """The commands of one page, in order, and what breaks the convention."""
    text = path.read_text()
    page = Page(path)
    step = page_step(path, text, root)
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        index += 1
        if not opening:
            continue
        fence, indent = opening["fence"], opening["indent"]
        is_console = opening["info"].strip().split(" ")[0] == "console"
        pending: dict | None = None
        while index < len(lines):
            raw = lines[index]
            index += 1
            closing = FENCE.match(raw)
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence) \
                    and not closing["info"].strip():
                break
            if not is_console:
                continue
            line = raw[len(indent):] if raw.startswith(indent) else raw.lstrip()
            where = f"{path.relative_to(root) if path.is_relative_to(root) else path}:{index}"
            if not line.strip():
                continue
            if line.startswith("$ "):
                if pending:
                    page.commands.append(Command(**pending))
                command = line[2:].strip()
                if command.endswith("\\"):
                    page.problems.append(f"{where}: write the command on one line (no trailing backslash)")
                pending = dict(source=path, line=index, text=command, step=step)
            elif match := OUTPUT_LINE.match(line.strip()):
                if pending is None or pending.get("output"):
                    page.problems.append(f"{where}: an output include must follow its `$ command` line")
                else:
                    pending["output"] = root / match["path"]
            else:
                page.problems.append(
                    f"{where}: a console block holds only `$ command` lines, each followed by its generated "
                    f'output (--8<-- "docs/generated/outputs/...txt"), not {line.strip()[:60]!r}'
                )
        if pending:
            page.commands.append(Command(**pending))
    for command in page.commands:
        page.problems.extend(lint(command))
    return page


def lint(command: Command) -> list[str]:
    """Rules that keep a command honest when it runs in a test."""
    problems = []
    if command.kind == "http":
        if command.step is None:
            problems.append(f"{command.where}: a command for {PAGE_URL} on a page with no step: "
                            'add `server_step: "04"` to the front matter')
    for part in re.split(r"\s*(?:\|\||&&|[|;&])\s*", command.text):
        if not part.startswith("curl "):
            continue
        flags = part.split()
        if "-sS" not in flags or "--max-time" not in flags:
            problems.append(f"{command.where}: curl needs -sS and --max-time, to fail loudly and fast")
        if "--fail" not in flags and "%{http_code}" not in part:
            problems.append(f"{command.where}: curl needs --fail, or -w '...%{{http_code}}' and an output")
        if "--fail" not in flags and command.output is None:
            problems.append(f"{command.where}: without --fail, the output must be shown (and so checked)")
    return problems


def all_pages(root: Path = ROOT) -> list[Page]:
    return [extract(path, root) for path in sources(root)]


# --- running --------------------------------------------------------------


@dataclass
class Outcome:
    command: Command
    ok: bool
    output: str = ""
    message: str = ""

    def report(self) -> str:
        tail = "\n".join(self.output.splitlines()[-25:])
        return f"{self.command.where}: $ {self.command.text}\n  {self.message}\n{tail}".rstrip()


def normalize(output: str, port: int | None = None, sandbox: Path | None = None) -> str:
    """Make an output machine-independent: the live port is 8000, paths are relative."""
    if sandbox is not None:
        output = output.replace(f"{sandbox}/", "").replace(str(sandbox), ".")
    if port is not None:
        output = re.sub(rf"(?<=[:\s]){port}\b", "8000", output)
    return output


def substitute(text: str, port: int) -> str:
    """The command as it must run: 127.0.0.1:8000 (or 8001) becomes the port in use,
    and a gunicorn --name gets the port too, since two servers of one name break each other."""
    text = re.sub(r"(--name \S+)", rf"\1-{port}", text)
    return LOCAL_ADDRESS.sub(lambda m: f"{m.group(1)}{port}", text)


# A reader types the commands in a fresh shell. Under `make test` these variables
# would make every nested make print "Entering directory" lines the pages do not show,
# and under `make check STEP=04` the Makefile's own (STEP, DIR, PORT) would reach
# every make the tests run.
MAKE_VARIABLES = {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "STEP", "DIR", "PORT"}


def reader_env(**extra: str) -> dict[str, str]:
    """The environment of a reader's shell: ours without make's own variables, plus `extra`.

    Nor coverage's: a reader runs nothing under it, and it slows every process down.
    """
    env = {k: v for k, v in os.environ.items() if k not in MAKE_VARIABLES and not k.startswith("COVERAGE_")}
    return {**env, **extra}


def shell(text: str, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run a command line with bash: its exit code (None if it timed out) and what it printed."""
    try:
        done = subprocess.run(["bash", "-c", text], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return None, out
    return done.returncode, done.stdout + done.stderr


def run_http(command: Command, base_url: str, cwd: Path = ROOT, timeout: float = 120) -> Outcome:
    port = int(base_url.rsplit(":", 1)[1])
    code, output = shell(command.text.replace(PAGE_URL, base_url), cwd, reader_env(), timeout)
    output = normalize(output, port)
    if code != 0:
        return Outcome(command, False, output, f"exited with {code} against {base_url}")
    return Outcome(command, True, output)


def run_shell(command: Command, sandbox: Path, timeout: float = 300) -> Outcome:
    port = free_port()
    env = reader_env(PORT=str(port))
    code, output = shell(substitute(command.text, port), sandbox, env, timeout)
    output = normalize(output, port, sandbox)
    if code != 0:
        return Outcome(command, False, output, f"exited with {code}")
    return Outcome(command, True, output)


def run_dry(command: Command, sandbox: Path) -> Outcome:
    dry = re.sub(r"\bmake ", "make -n ", command.text, count=1)
    code, output = shell(dry, sandbox, reader_env(), 60)
    if code != 0:
        return Outcome(command, False, output, f"`{dry}` exited with {code}")
    return Outcome(command, True, normalize(output, sandbox=sandbox))


def _stop_group(proc: subprocess.Popen, timeout: float = 20) -> bool:
    """Ctrl-C to the whole group, as a terminal would; True if it stopped in time."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False
    except ProcessLookupError:
        return True
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def run_serve(command: Command, sandbox: Path, timeout: float = 120) -> Outcome:
    """Start the server, wait until it answers, keep its output so far, then Ctrl-C it."""
    port = free_port()
    docs = "make docs" in command.text or "mkdocs" in command.text
    url = f"http://127.0.0.1:{port}/" if docs else f"http://127.0.0.1:{port}/health"
    # Its own log says it took the port: an answer on a port that another test's
    # server took in the meantime is not this server's.
    bound = rf"Serving on http://[^\s/]+:{port}/" if docs else rf"Listening at: http://[^\s/]+:{port}\b"
    # A process name of its own too: gunicorn 27 kills the dirty arbiter of
    # another server with the same name (a learner's `make run`, say).
    env = reader_env(PORT=str(port), DOCS_PORT=str(port),
                     GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port} --name dirty-chat-docs-{port}")
    log_path = sandbox / f".serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", "-c", substitute(command.text, port)], cwd=sandbox, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    answered = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    answered = response.status == 200
            except (urllib.error.URLError, OSError):
                pass
            answered = answered and re.search(bound, log_path.read_text(errors="replace")) is not None
            if answered:
                break
            time.sleep(0.1)
        if answered and not docs:
            # Show the whole start: `make run` says when it is ready (tools/run.py);
            # under gunicorn itself, every dirty worker the arbiter spawned is listening.
            while time.monotonic() < deadline:
                log_text = log_path.read_text(errors="replace")
                if "make run" in command.text:
                    if re.search(r"^(Ready|Not ready)\b", log_text, re.MULTILINE):
                        break
                else:
                    listening = len(re.findall(r"Dirty worker \d+ listening", log_text))
                    if listening >= log_text.count("Spawned dirty worker"):
                        break
                time.sleep(0.05)
        output = log_path.read_text(errors="replace")
    finally:
        stopped = _stop_group(proc)
    after_ctrl_c = log_path.read_text(errors="replace")[len(output):][-3000:] or "(nothing)"
    output = output[: output.rfind("\n") + 1]
    # The runner's own probe is not part of what a reader sees (text or JSON access log).
    lines = output.splitlines(keepends=True)
    output = "".join(line for line in lines if "GET /health HTTP/1.1" not in line)
    output = normalize(output, port, sandbox)
    log_path.unlink(missing_ok=True)
    if not answered:
        return Outcome(command, False, output, f"it did not answer on {url} within {timeout:.0f} s")
    if not stopped:
        return Outcome(command, False, output, "it answered, but Ctrl-C did not stop it within 20 s; "
                       f"after Ctrl-C it said:\n{after_ctrl_c}")
    return Outcome(command, True, output)


# --- a copy of the repository to run commands in ------------------------------------


def repository_files(root: Path = ROOT, tracked_only: bool = False) -> list[str]:
    """The repository's files as a clone has them (git), without ignored files."""
    args = ["git", "ls-files", "-z", "--cached"]
    if not tracked_only:
        args += ["--others", "--exclude-standard"]
    try:
        listed = subprocess.run(args, cwd=root, capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        skip = {".venv", ".git", "__pycache__", "site", "workspace", "wheelhouse"}
        return [p.relative_to(root).as_posix() for p in root.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(root).parts)]
    return [name for name in listed.split("\0") if name and (root / name).is_file()]


def make_sandbox(dest: Path, root: Path = ROOT, tracked_only: bool = False) -> Path:
    """A copy of the repository in `dest` that shares its .venv: commands there cannot
    touch the real checkout. With `tracked_only`, the last commit (git archive),
    as CI sees it; otherwise the files of the working tree, as a learner has them."""
    dest.mkdir(parents=True, exist_ok=True)
    if tracked_only:
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=root,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    else:
        for name in repository_files(root):
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, target)
    ready = root / ".venv" / ".ready"
    if (root / ".venv").exists():
        (dest / ".venv").symlink_to(root / ".venv")
    if ready.exists():
        # make rebuilds the environment when the lock file is newer than it: never
        # from a sandbox, whose .venv is the real one.
        for lock in ("requirements.txt", "requirements.in"):
            if (dest / lock).exists():
                stamp = min((dest / lock).stat().st_mtime, ready.stat().st_mtime - 1)
                os.utime(dest / lock, (stamp, stamp))
    return dest


# --- comparing with the generated outputs -----------------------------------------


def stream_events(text: str) -> list[str] | None:
    """The events of an SSE body, minus waiting events and comments; None if it is no stream."""
    if "data: " not in text:
        return None
    events = []
    complete, rest = split_events(text.replace("\r\n", "\n").encode())
    for event in (Event(raw.decode(), at=0.0) for raw in [*complete, rest]):
        lines = [line for line in event.lines if line and not line.startswith(":")]
        if not lines:
            continue
        try:
            if isinstance(payload := json.loads(event.data), dict) and "waiting" in payload:
                continue
        except ValueError:
            pass
        events.append("\n".join(lines))
    return events


def masked(text: str) -> list[str]:
    text = re.sub(r"gunicorn-dirty-\w+", "gunicorn-dirty-X", text)
    return [re.sub(r"\d+", "N", line).rstrip() for line in text.splitlines() if line.strip()]


VOLATILE = [
    (re.compile(r'"chatcmpl-[0-9a-f]+"'), '"chatcmpl-X"'),
    (re.compile(r'"created": ?\d+'), '"created": N'),
    (re.compile(r"^([a-zA-Z_:][\w:]*(?:\{[^}\n]*\})?) [-+.\deEinfNa]+$", re.MULTILINE), r"\1 N"),
]


def unvolatile(text: str) -> str:
    for pattern, replacement in VOLATILE:
        text = pattern.sub(replacement, text)
    return text.strip()


def difference(command: Command, expected: str, actual: str) -> str | None:
    """Why the output the page shows is not what the command prints now, or None."""
    if command.kind == "serve":
        if sorted(masked(expected)) != sorted(masked(actual)):
            return "the server's start-up log is not the one the page shows"
        return None
    if command.kind == "http":
        old, new = stream_events(expected), stream_events(actual)
        if old is not None or new is not None:
            if old != new:
                return "the stream's events are not the ones the page shows"
            return None
        if unvolatile(expected) != unvolatile(actual):
            return "the output is not the one the page shows"
        return None
    if masked(expected) != masked(actual):
        return "the output (digits aside) is not the one the page shows"
    return None


def check_output(outcome: Outcome) -> Outcome:
    """Compare a successful outcome with the page's generated output file, if any."""
    command = outcome.command
    if not outcome.ok or command.output is None:
        return outcome
    shown = command.output.relative_to(ROOT) if command.output.is_relative_to(ROOT) else command.output
    if not command.output.is_file():
        return Outcome(command, False, outcome.output, f"{shown} does not exist: run make docs-outputs")
    problem = difference(command, command.output.read_text(), outcome.output)
    if problem:
        return Outcome(command, False, outcome.output, f"{problem} ({shown}): run make docs-outputs")
    return outcome

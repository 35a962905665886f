"""Fixtures shared by every test: which steps to test, and live servers for them.

A test asks for `step` and is run once per step it applies to:
`@pytest.mark.since("03")` means step 03 and every later one, so each step is
proven a superset of the one before. `make test STEP=02` passes `--step=02`;
`make check STEP=02 DIR=workspace` adds `--step-dir=workspace`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from harness.server import AUTH, DEV_KEY, ROOT, LiveServer, loopback_client, start_server, step_modules
from harness.steps import Step, UnknownStep, all_steps, find

FAULT_CONF = ROOT / "tests" / "steps" / "fault_conf.py"
# Step 06 limits requests per key; the suite sends many, so the shared servers
# get a limit they never reach (the rate-limit test sets its own).
TEST_ENV = {"CHAT_RATE_LIMIT": "100000/minute"}
# Steps 05 and 06 ship 32 dirty workers, for a workshop room. A shared server
# never has more than three chats at once, and 32 workers would cost each of
# its starts seconds: shared servers get four, unless a test asks otherwise.
SHARED_ENV = {"DIRTY_WORKERS": "4"}
# The model answers ten times faster than a real one (CHAT_PACE), except for
# the tests marked `paced`, whose assertions are about the pace itself:
# `paced(0.5)` for one that needs answers that last, not a real model's pace.
FAST_PACE = 0.1
# How much of a server's log a failure shows: its last lines, requests left out.
LOG_TAIL_LINES = 20
ACCESS_LINE = re.compile(r"\b(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH) /\S* HTTP/")
# Where the tutorial explains what each test module checks.
EXPLAINED_IN = {
    "test_api": "docs/steps/01-sync-endpoint.md",
    "test_model": "docs/steps/01-sync-endpoint.md",
    "test_blocking": "docs/steps/02-dirty-worker.md",
    "test_streaming": "docs/steps/03-sse-streaming.md",
    "test_disconnect": "docs/steps/03-sse-streaming.md",
    "test_capacity": "docs/concepts/capacity.md",
    "test_routing": "docs/concepts/capacity.md",
    "test_lifecycle": "docs/steps/02-dirty-worker.md",
    "test_overload": "docs/concepts/capacity.md",
    "test_thinking": "docs/steps/04-thinking-mode.md",
    "test_ui": "docs/steps/05-browser-ui.md",
    "test_browser": "docs/steps/05-browser-ui.md",
    "test_hardening": "docs/going-further/troubleshooting.md",
    "test_production": "docs/steps/06-production.md",
    "test_browser_auth": "docs/steps/06-production.md",
    "test_proxy": "docs/steps/06-production.md",
    "test_deploy": "docs/steps/06-production.md",
}


def pytest_addoption(parser):
    parser.addoption("--step", help="run only the tests of this step (02 or 02_dirty_worker)")
    parser.addoption("--step-dir", help="with --step: test this folder instead of the step's own")


def _selected_steps(config) -> list[Step]:
    chosen = config.getoption("--step")
    if not chosen:
        return all_steps()
    try:
        step = find(chosen)
    except UnknownStep as exc:
        raise pytest.UsageError(str(exc)) from None
    override = config.getoption("--step-dir")
    folder = Path(override).resolve() if override else step.path
    if not (folder / "main.py").is_file():
        raise pytest.UsageError(f"{folder} has no main.py: is it a copy of a step?")
    return [step.at(folder)]


def _applies(item_marks, step: Step) -> bool:
    for mark in item_marks:
        if mark.name == "since" and step.number < int(mark.args[0]):
            return False
        if mark.name == "until" and step.number > int(mark.args[0]):
            return False
        if mark.name == "only" and step.number != int(mark.args[0]):
            return False
    return True


def pytest_generate_tests(metafunc):
    if "step" not in metafunc.fixturenames:
        return
    marks = list(metafunc.definition.iter_markers())
    steps = [s for s in _selected_steps(metafunc.config) if _applies(marks, s)]
    # A test that applies to no selected step is dropped in collection below.
    params = steps or [pytest.param(None, marks=pytest.mark.not_for_these_steps)]
    metafunc.parametrize("step", params, ids=str, scope="session")


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        step_test = "step" in getattr(item, "fixturenames", ())
        if item.get_closest_marker("not_for_these_steps") or (config.getoption("--step") and not step_test):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_configure(config):
    config.addinivalue_line("markers", "not_for_these_steps: internal, deselected")
    config.addinivalue_line("markers", "paced(pace=1): its servers' model keeps a real model's pace, or this")
    config.addinivalue_line("markers", "learner_loop: runs make check; make test runs these last")
    # Tests press Ctrl-C (SIGINT) on the commands they run, as at a terminal. A
    # suite started in the background by a script (`nohup make test &`) begins
    # with SIGINT ignored, and every command it started would ignore it too.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed:
        # Show what the servers this test used had to say.
        for server in getattr(item, "live_servers", []):
            title = f"server log {server.step_dir.name}:{server.port}, last lines"
            report.sections.append((title, log_tail(server.log())))
    return report


def log_tail(log: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a server's log, without its access lines."""
    kept = [line for line in log.splitlines() if not ACCESS_LINE.search(line)]
    return "\n".join(kept[-lines:])


def behaviour(nodeid: str) -> str:
    """A test's name in plain words: test_health_answers_during_a_chat -> health answers during a chat."""
    name = nodeid.split("::")[-1].split("[")[0]
    return name.removeprefix("test_").replace("_", " ")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # The summary lines of the checks on unchanged copies (test_learner_loop.py, CHECK_RESULT):
    # make test runs the steps' tests inside them, so their count is the suite's too.
    checks = [value for report in terminalreporter.stats.get("passed", [])
              for name, value in getattr(report, "user_properties", ()) if name == "make check"]
    if checks:
        terminalreporter.write_line(f"the steps' tests, inside make check: {check_totals(checks)}")
    failed = terminalreporter.stats.get("failed", [])
    if not failed:
        return
    terminalreporter.section("what broke, in plain words")
    for report in failed:
        module = report.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        where = EXPLAINED_IN.get(module)
        terminalreporter.line(f"- {behaviour(report.nodeid)} ({report.nodeid.split('[')[-1].rstrip(']')})"
                              + (f": explained in {where}" if where else ""))


def check_totals(summaries: list[str]) -> str:
    """Add up pytest summary lines: ["157 passed, 1 xfailed in 54s", ...] -> "314 passed, 2 xfailed"."""
    totals: Counter[str] = Counter()
    for summary in summaries:
        for count, outcome in re.findall(r"(\d+) (\w+)", summary.split(" in ")[0]):
            totals[outcome] += int(count)
    return ", ".join(f"{count} {outcome}" for outcome, count in totals.items())


class ServerPool:
    """Servers shared by the tests of a session, started on first use."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.shared: dict[tuple, LiveServer] = {}
        self.owned: list[LiveServer] = []

    def shared_server(self, step: Step, *, pace: float = FAST_PACE, **options) -> LiveServer:
        key = (step.path, pace, repr(sorted(options.items())))
        server = self.shared.get(key)
        if server is None or not server.running():
            env = {**SHARED_ENV, **options.pop("env", {})}
            server = self.shared[key] = self.start(step, pace=pace, env=env, **options)
        return server

    def start(self, step: Step, *, env: dict | None = None, pace: float = FAST_PACE, **options) -> LiveServer:
        env = {**TEST_ENV, "CHAT_PACE": str(pace), **(env or {})}
        server = start_server(step.path, log_dir=self.log_dir, env=env, **options)
        self.owned.append(server)
        return server

    def stop_all(self) -> None:
        # All of them asked first, then waited for: they stop side by side.
        for server in self.owned:
            server.terminate()
        for server in self.owned:
            server.stop()


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    pool = ServerPool(tmp_path_factory.mktemp("servers"))
    yield pool
    pool.stop_all()


def pace(request) -> float:
    """The CHAT_PACE of the test's servers: see FAST_PACE."""
    marker = request.node.get_closest_marker("paced")
    if marker is None:
        return FAST_PACE
    return marker.args[0] if marker.args else 1


def used_by(request, live: LiveServer) -> LiveServer:
    """Note that the test uses this server: its log is shown if the test fails."""
    request.node.live_servers = [*getattr(request.node, "live_servers", []), live]
    return live


@pytest.fixture
def shared(step, servers, request):
    """A server of this step shared with other tests: shared(**options) starts it on first use."""

    def _shared(**options) -> LiveServer:
        return used_by(request, servers.shared_server(step, pace=pace(request), **options))

    return _shared


@pytest.fixture
def server(shared) -> LiveServer:
    """The step's server as shipped, shared with other tests."""
    return shared()


@pytest.fixture
def start(step, servers, request):
    """Start a server of this step that only this test uses (it may break it)."""
    started: list[LiveServer] = []

    def _start(**options) -> LiveServer:
        live = servers.start(step, pace=pace(request), **options)
        started.append(live)
        return used_by(request, live)

    yield _start
    # The next test need not wait the second or two a server takes to stop:
    # the pool waits for it at the end of the session.
    for live in started:
        live.terminate()


@pytest.fixture
def start_faulty(start):
    """Start a server with tests/steps/fault_conf.py: its model misbehaves as CHAT_FAULT
    says, or, with `fault` None, only as the other variables there say."""

    def _start(fault: str | None, *, args=(), env=None, **options) -> LiveServer:
        faults = {"CHAT_FAULT": fault} if fault is not None else {}
        return start(config=FAULT_CONF, env={**faults, **(env or {})}, args=args, **options)

    return _start


@pytest.fixture
def client(server):
    with loopback_client(server.base_url, timeout=60, headers=AUTH) as http:
        yield http


@pytest.fixture
def step_module(step):
    """Import a module of the step folder (main, chat_app, gunicorn_conf) afresh."""
    with step_modules(step.path) as load:
        yield load


@pytest.fixture
def canned(step_module):
    """The step model's canned answer for a prompt: what /chat/sync answers (test_api.py
    checks that), read from the model instead of asked for again at its pace."""
    return step_module("chat_app").pick_answer


@pytest.fixture
def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


# Browser tests (step 05 on) drive Debian's chromium through Playwright.


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session; without one, skip (but fail in CI)."""
    from playwright.sync_api import sync_playwright

    from tools.screenshot import CHROMIUM, launch_chromium

    if not Path(CHROMIUM).is_file():
        message = f"no Chromium at {CHROMIUM}: install Debian's chromium package to run browser tests"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    playwright = sync_playwright().start()
    chromium = launch_chromium(playwright)
    yield chromium
    chromium.close()
    playwright.stop()


@contextlib.contextmanager
def open_tab(browser):
    """A fresh tab with its own storage; an uncaught error in the page fails the test."""
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    # Step 06's page asks for an API key: fill in the development key on load.
    context.add_init_script(
        "addEventListener('DOMContentLoaded', () => {"
        f" const key = document.getElementById('api-key'); if (key) key.value = '{DEV_KEY}'; }});"
    )
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    errors = []
    tab.on("pageerror", lambda error: errors.append(error))
    yield tab
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def page(browser):
    """A fresh tab for this test."""
    with open_tab(browser) as tab:
        yield tab


@pytest.fixture(scope="module")
def module_page(browser):
    """One tab for the tests of a module that only call into the page: a tab costs
    the browser more than such a test."""
    with open_tab(browser) as tab:
        yield tab

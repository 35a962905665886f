"""Every command the tutorial shows runs, and prints what the page says it prints.

The pages' console blocks are read by tools/docs_commands.py (the convention
is in its docstring). Commands for http://127.0.0.1:8000 run against a live
server of their page's step, once per step, so `make test STEP=03` runs step
03's. The others (servers, make targets) run in a sandbox copy of the
repository. A failing command, or an output that no longer matches its
generated file, fails the suite with the page, the line and what to do.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.server import ROOT, start_server
from tools.docs_commands import (
    OUTPUTS,
    Command,
    Outcome,
    all_pages,
    check_output,
    extract,
    make_sandbox,
    reader_env,
    repository_files,
    run_dry,
    run_http,
    run_serve,
    run_shell,
    shell,
)

PAGES = all_pages()


def failures(commands: list[Command], base_url: str | None = None, sandbox: Path | None = None,
             done: dict[str, Outcome] | None = None) -> list[str]:
    """Run the commands in order; what went wrong, in words. The suite decides with this."""
    reports = []
    done = {} if done is None else done
    for command in commands:
        if command.kind == "http":
            outcome = run_http(command, base_url)
        elif command.kind == "dry-run":
            outcome = run_dry(command, sandbox)
        elif command.kind == "serve":
            # A server command is the same wherever it is shown: start it once.
            if command.text not in done:
                done[command.text] = run_serve(command, sandbox)
            first = done[command.text]
            outcome = Outcome(command, first.ok, first.output, first.message)
        else:
            outcome = run_shell(command, sandbox)
        if command.kind != "dry-run":
            outcome = check_output(outcome)
        if not outcome.ok:
            reports.append(outcome.report())
    return reports


@pytest.fixture(scope="session")
def started_servers() -> dict[str, Outcome]:
    return {}


# --- commands against a step's server -------------------------------------------------


def test_the_pages_commands_work_on_this_step(step, request):
    if request.config.getoption("--step-dir"):
        pytest.skip("the pages describe the steps as shipped, not a copy")
    number = step.code
    commands = [c for page in PAGES for c in page.commands if c.kind == "http" and c.step == number]
    written = any(re.match(rf"docs/steps/{number}-", str(p.path.relative_to(ROOT))) for p in PAGES)
    if not commands and not written:
        pytest.skip(f"no page is written for {step.name} yet (the site shows a generated one)")
    assert commands, f"the page of {step.name} shows no command to try"
    server = request.getfixturevalue("server")
    assert failures(commands, base_url=server.base_url) == []


# --- everything else: servers, make targets -------------------------------------------------


OTHER = [page for page in PAGES if any(c.kind != "http" for c in page.commands)]


@pytest.mark.parametrize("page", OTHER, ids=[str(p.path.relative_to(ROOT)) for p in OTHER])
def test_the_pages_other_commands_work(page, tmp_path, started_servers):
    sandbox = make_sandbox(tmp_path / "repo")
    commands = [c for c in page.commands if c.kind != "http"]
    assert failures(commands, sandbox=sandbox, done=started_servers) == []


SUITE_SUMMARY = re.compile(r"=+ (.*\d+ (?:passed|failed|skipped|error).*) in [\d.]+s")


# Collects the suite once and counts the tests of each step, as `--step` would select them.
COUNT_BY_STEP = """
import collections, json, sys, pytest

class Count:
    def __init__(self):
        self.steps = collections.Counter()

    def pytest_collection_finish(self, session):
        for item in session.items:
            step = item.callspec.params.get("step") if hasattr(item, "callspec") else None
            if step is not None:
                self.steps[step.code] += 1

count = Count()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[count])
if code == 0:
    print(json.dumps(count.steps))
sys.exit(code)
"""


@functools.cache
def collected_by_step() -> dict[str, int]:
    """How many tests `make test STEP=NN` runs now for each step, on the committed test files."""
    tracked = repository_files(ROOT, tracked_only=True)
    files = [name for name in tracked if re.match(r"tests/(steps|repo)/test_\w+\.py$", name)]
    result = subprocess.run(
        [sys.executable, "-c", COUNT_BY_STEP, *files], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    said = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, f"the suite does not collect:\n{said}"
    return json.loads(result.stdout.splitlines()[-1])


def collected(step: str) -> int:
    return collected_by_step().get(step, 0)


SUITE_OUTPUTS = [c for page in PAGES for c in page.commands if c.kind == "dry-run" and c.output is not None]


@pytest.mark.parametrize("command", SUITE_OUTPUTS, ids=[c.text for c in SUITE_OUTPUTS])
def test_a_test_run_shown_on_a_page_is_the_current_one(command):
    # Running the suite from inside itself would recurse: the output of
    # `make test STEP=NN` shown on a page is checked by its count of tests instead.
    step = re.search(r"STEP=(\d\d)", command.text).group(1)
    shown = command.output.read_text() if command.output.is_file() else ""
    summary = SUITE_SUMMARY.search(shown)
    assert summary, f"{command.where}: {command.output} shows no pytest summary: run make docs-outputs"
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|xfailed|xpassed|error)",
                                                      summary.group(1))}
    assert not counts.get("failed") and not counts.get("error"), f"{command.where}: it shows a failing run"
    ran = sum(counts.values())
    assert ran == collected(step), (
        f"{command.where}: the page shows {ran} tests for step {step}, the suite has {collected(step)} now: "
        f"run .venv/bin/python -m tools.docs_outputs --only {command.output.parent.name}/make-test"
    )


def test_every_generated_output_is_shown_by_a_page():
    shown = {c.output for page in PAGES for c in page.commands if c.output}
    files = set((ROOT / OUTPUTS).rglob("*.txt"))
    assert files - shown == set(), "outputs no page shows: make docs-outputs removes them"
    assert shown - files == set(), "outputs missing: run make docs-outputs"


# --- the mechanism itself ------------------------------------------------------------------


def test_a_command_that_stops_working_fails_the_suite(tmp_path):
    # The same checks as above, on a page whose commands broke in four ways.
    page = tmp_path / "docs" / "broken.md"
    outputs = tmp_path / "docs" / "generated" / "outputs" / "broken"
    outputs.mkdir(parents=True)
    (outputs / "health.txt").write_text('{"status":"fine"}')
    page.write_text(
        '---\nserver_step: "02"\n---\n\n# A page that went stale\n\n'
        "```console\n"
        "$ curl -sS --fail --max-time 10 http://127.0.0.1:8000/no-such-route\n"
        "$ curl -sS --fail --max-time 10 http://127.0.0.1:8000/health\n"
        '--8<-- "docs/generated/outputs/broken/health.txt"\n'
        "$ make no-such-target\n"
        "$ make run STEP=99\n"
        "```\n"
    )
    found = extract(page, root=tmp_path)
    assert found.problems == []
    commands = found.commands
    assert [c.kind for c in commands] == ["http", "http", "shell", "serve"]
    with start_server(ROOT / "steps" / "02_dirty_worker", log_dir=tmp_path / "logs") as live:
        reports = failures(commands[:2], base_url=live.base_url)
    reports += failures(commands[2:], sandbox=make_sandbox(tmp_path / "repo"))
    assert len(reports) == 4, "\n\n".join(reports)
    assert "no-such-route" in reports[0] and "exited with 22" in reports[0]
    assert "is not the one the page shows" in reports[1] and "make docs-outputs" in reports[1]
    assert "make no-such-target" in reports[2] and "exited with 2" in reports[2]
    assert "make run STEP=99" in reports[3] and "did not answer" in reports[3]


def test_a_stream_is_compared_event_by_event(tmp_path):
    from tools.docs_commands import difference

    command = Command(tmp_path / "p.md", 1, "curl -sS -N --fail --max-time 9 http://127.0.0.1:8000/chat",
                      output=tmp_path / "o.txt", step="03")
    shown = 'data: {"token":"Hi"}\n\ndata: {"token":"!"}\n\ndata: [DONE]\n\n'
    # Waiting events and keep-alive comments depend on the moment: they do not count.
    now = 'data: {"token":"","waiting":1}\n\n: ping\n\n' + shown
    assert difference(command, shown, now) is None
    assert difference(command, shown, shown.replace("!", "?")) is not None
    assert difference(command, shown, shown.replace("data: [DONE]\n\n", "")) is not None


def test_only_what_changes_by_design_is_masked_in_an_answer(tmp_path):
    from tools.docs_commands import difference

    command = Command(tmp_path / "p.md", 1, "curl -sS --fail --max-time 9 http://127.0.0.1:8000/v1/chat/completions",
                      output=tmp_path / "o.txt", step="06")
    shown = ('{"id":"chatcmpl-1a2b","object":"chat.completion","created":1700000000,'
             '"usage":{"total_tokens":38}}')
    # An OpenAI answer's id and creation time are new on every call.
    now = shown.replace("1a2b", "9f8e7d").replace("1700000000", "1700000123")
    assert difference(command, shown, now) is None
    assert difference(command, shown, shown.replace("38", "39")) is not None
    assert difference(command, shown, shown.replace("chat.completion", "chat.completion.chunk")) is not None
    # A Prometheus count depends on what the server answered before; its series does not.
    metric = 'chat_http_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0\n'
    assert difference(command, metric, metric.replace("1.0", "17.0")) is None
    assert difference(command, metric, metric.replace('"200"', '"401"')) is not None
    # Other answers are compared as they are, digits included.
    assert difference(command, '{"detail":"x"} 401', '{"detail":"x"} 415') is not None


def test_commands_run_as_in_a_fresh_shell_even_under_make(tmp_path, monkeypatch):
    # `make test` exports MAKELEVEL and MAKEFLAGS; a nested make would then print
    # "Entering directory" lines that a reader's terminal never shows.
    monkeypatch.setenv("MAKELEVEL", "1")
    monkeypatch.setenv("MAKEFLAGS", "w")
    command = Command(tmp_path / "p.md", 1, "make -n diff STEP=02")
    outcome = run_shell(command, make_sandbox(tmp_path / "repo"))
    assert outcome.ok, outcome.output
    assert "diff" in outcome.output
    assert "Entering directory" not in outcome.output


def test_ctrl_c_reaches_the_commands_even_when_the_suite_was_started_in_the_background(tmp_path):
    # A script's background job (`nohup make test &`) starts with SIGINT ignored,
    # and a child inherits that: the suite gives itself the usual handler back
    # (tests/conftest.py), or no command it runs would stop on Ctrl-C.
    probe = f"{sys.executable} -c 'import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)'"
    code, output = shell(probe, tmp_path, reader_env(), timeout=30)
    assert (code, output.strip()) == (0, "False"), "the commands the tests run would ignore Ctrl-C"

"""The learner's loop, run literally: `make workspace`, then `make check` on the copy.

Every step page sends learners to these two commands. Each test runs them in
a sandbox copy of the repository (sharing its .venv), on an unchanged copy
and on a copy with the step's lesson deliberately broken, where the check
must fail and say in plain words what broke. They check the repository, not
one step's code, so `make test STEP=NN` and `make check` leave them out.

The whole `make test` runs each step's tests once, here, inside the check of an
unchanged copy (tools/test.py): under coverage, that check is measured too,
and what it covers of the copy counts for the step's own files.
"""

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import coverage
import pytest

from harness.steps import all_steps, find
from tools.docs_commands import ROOT, all_pages, make_sandbox, reader_env, shell
from tools.loop_times import last_line


@dataclass(frozen=True)
class Break:
    """A mistake a learner could make in the step's lesson, and what the check must say."""

    file: str
    old: str
    new: str
    says: tuple[str, ...]


# The lesson of a step undone, in the step that teaches it: a later step would
# fail the same way, with the same message.
BREAKS = {
    1: Break("main.py", "model.generate(request.prompt))", "model.generate(request.prompt)[:-1])",
             ("chat sync answers with the canned text",)),
    2: Break("main.py", "text = await client.execute_async(", "text = client.execute(",
             ("health answers during a chat", "the model blocks the HTTP worker")),
    3: Break("main.py", 'ServerSentEvent(raw_data="[DONE]")', 'ServerSentEvent(raw_data="[END]")',
             ("is not JSON", "explained in docs/steps/03-sse-streaming.md")),
    4: Break("main.py", "            yield event\n", '            yield {"token": event["token"]}\n',
             ("thinking comes first then the answer", "explained in docs/steps/04-thinking-mode.md")),
    5: Break("static/app.js", 'if (event.data === "[DONE]") {', 'if (event.data === "[END]") {',
             ("a suggestion streams its answer", "explained in docs/steps/05-browser-ui.md")),
    6: Break("main.py", "PROTECTED = [Depends(rate_limit), Depends(require_json)]",
             "PROTECTED = [Depends(require_json)]",
             ("chat endpoints need a key", "explained in docs/steps/06-production.md")),
}


# Longest check first: make test runs them two at a time (--dist worksteal), and
# a long one left for last would run alone at the end.
STEPS = [step.code for step in reversed(all_steps())]
# The name under which a check's summary line is recorded: conftest.py adds these up.
CHECK_RESULT = "make check"


@pytest.fixture
def sandbox(tmp_path) -> Path:
    return make_sandbox(tmp_path / "repo")


def learner(command: str, cwd: Path, timeout: float = 600, **env: str) -> tuple[int | None, str]:
    """Run a command as a learner types it in a fresh shell, with `env` added: its exit code
    and what it printed."""
    return shell(command, cwd, reader_env(**env), timeout)


# What a measured check records: every process it starts measures the copy,
# gunicorn's forked workers too; the copy's files then count as the step's.
CHECK_COVERAGE = """\
[run]
source = {copy}
data_file = {sandbox}/.coverage
parallel = true
patch = fork
        _exit
omit = */static/*
disable_warnings = no-data-collected

[paths]
step =
    {step}
    {copy}
"""
CHECK_RC = "check-coverage.ini"


def measured(sandbox: Path, copy: Path, number: str) -> dict[str, str]:
    """The environment that measures a check under coverage when this suite runs under it (make test)."""
    if coverage.Coverage.current() is None:
        return {}
    rc = sandbox / CHECK_RC
    rc.write_text(CHECK_COVERAGE.format(copy=copy, sandbox=sandbox, step=find(number).path))
    return {"COVERAGE_PROCESS_START": str(rc)}


def keep_coverage(sandbox: Path, number: str) -> None:
    """Hand what a measured check recorded to make test's report, under the step's own paths."""
    rc = sandbox / CHECK_RC
    if not rc.exists():
        return
    subprocess.run([sys.executable, "-m", "coverage", "combine", "--quiet", f"--rcfile={rc}"],
                   cwd=sandbox, check=True)
    # Named as one more parallel data file, which make test's own combine takes in.
    shutil.move(sandbox / ".coverage", ROOT / f".coverage.check-{number}")


def workspace(number: str, sandbox: Path) -> Path:
    code, output = learner(f"make workspace STEP={number}", sandbox)
    assert code == 0, output
    assert f"make check STEP={number} DIR=workspace" in output
    return sandbox / "workspace"


@pytest.mark.learner_loop
@pytest.mark.parametrize("number", STEPS)
def test_make_check_passes_on_an_unchanged_copy(number, sandbox, record_property):
    copy = workspace(number, sandbox)
    check = f"make check STEP={number} DIR=workspace"
    code, output = learner(check, sandbox, **measured(sandbox, copy, number))
    keep_coverage(sandbox, number)
    tail = "\n".join(output.splitlines()[-30:])
    record_property(CHECK_RESULT, last_line(output))
    assert code == 0, f"make check failed on an unchanged copy of step {number}:\n{tail}"
    assert " passed" in tail and " failed" not in tail, tail


@pytest.mark.learner_loop
@pytest.mark.parametrize("number", [f"{n:02d}" for n in sorted(BREAKS, reverse=True)])
def test_make_check_says_what_broke(number, sandbox):
    mistake = BREAKS[int(number)]
    source = workspace(number, sandbox) / mistake.file
    text = source.read_text()
    assert text.count(mistake.old) == 1, f"{mistake.old!r} is no longer in step {number}'s {mistake.file}"
    source.write_text(text.replace(mistake.old, mistake.new))
    code, output = learner(f"make check STEP={number} DIR=workspace", sandbox)
    assert code is not None, f"make check did not end within 600 s:\n{output[-3000:]}"
    assert code != 0, f"make check passed with {mistake.new!r} in {mistake.file}"
    assert "what broke, in plain words" in output, output[-3000:]
    missing = [words for words in mistake.says if words not in output]
    assert not missing, f"the check did not say {missing}:\n{output[-3000:]}"


def test_the_pages_give_only_the_check_these_tests_run():
    # The pages' own runner only dry-runs make check (it would start the suite
    # inside itself): the tests above run it, in exactly this form.
    checks = [c for page in all_pages() for c in page.commands if c.text.startswith("make check")]
    assert checks, "no page gives make check"
    form = re.compile(r"make check STEP=\d\d DIR=workspace")
    odd = [f"{c.where}: {c.text}" for c in checks if not form.fullmatch(c.text)]
    assert not odd, odd


def test_make_docs_takes_8010_or_the_port_it_is_given():
    root = Path(__file__).resolve().parents[2]
    _, default = learner("make -n docs", root)
    _, given = learner("make -n docs PORT=8002", root)
    assert "mkdocs serve -a 127.0.0.1:8010" in default, default
    assert "mkdocs serve -a 127.0.0.1:8002" in given, given


def test_every_module_of_step_tests_names_the_page_that_explains_it(request):
    # "What broke, in plain words" sends a learner to that page.
    conftest = next(p for p in request.config.pluginmanager.get_plugins() if hasattr(p, "EXPLAINED_IN"))
    root = Path(__file__).resolve().parents[2]
    modules = {path.stem for path in (root / "tests" / "steps").glob("test_*.py")}
    assert modules - set(conftest.EXPLAINED_IN) == set(), "step test modules no page is named for"
    missing = [page for page in conftest.EXPLAINED_IN.values() if not (root / page).is_file()]
    assert not missing, missing


def test_the_suite_adds_up_what_the_checks_ran(request):
    # make test's summary line for the steps' tests, which run inside the checks above.
    conftest = next(p for p in request.config.pluginmanager.get_plugins() if hasattr(p, "check_totals"))
    summaries = ["157 passed, 1 xfailed in 54.01s (0:00:54)", "52 passed in 9.87s"]
    assert conftest.check_totals(summaries) == "209 passed, 1 xfailed"

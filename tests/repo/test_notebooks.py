"""The notebooks: committed clean, and each one runs from top to bottom against live servers.

Notebooks execute in memory with nbclient, on this environment's `python3`
kernel; their outputs are never written back to the files. After a notebook's
own cells, a few cells added here check that what its text claims happened.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

import pytest

from harness.server import ROOT, free_port, start_server
from harness.steps import all_steps, find

# nbformat and nbclient are imported by the tests that use them: importing
# nbformat builds the grammars of its schema checks, a second or more of CPU
# that every test process would otherwise pay while collecting any step's tests.
if TYPE_CHECKING:
    import nbformat

NOTEBOOKS_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 180

# Checks run in the notebook's kernel after its last cell, on its variables:
# they hold the notebook to what its text says happened.
CLAIMS = {
    "01": """
        chat = result["chat"]
        # A probe sent well before the chat was answered had to wait for it.
        assert any(sent < chat["answered"] - 0.5 and sent + wait >= chat["answered"] - 0.05
                   for sent, wait in result["probes"]), result
    """,
    "02": """
        step_01, step_02 = results.values()
        chat = step_02["chat"]
        during = [p for p in step_02["probes"] if chat["sent"] < p[0] and p[0] + p[1] < chat["answered"]]
        assert len(during) >= 10, step_02
        assert loaded_before == loaded_after and len(loaded_before) == 2, (loaded_before, loaded_after)
    """,
    "03": """
        assert events[-1][1] == "[DONE]" and tokens
        assert first_token < stream_done
        # The hang-up freed the only worker; a reader who stayed kept it.
        assert after_hang_up < while_busy, (idle, after_hang_up, while_busy)
        assert {"token": "", "waiting": 1} in seen, seen
    """,
    "04": """
        phases = [payload["phase"] for _, payload in tokens_of(with_thinking)]
        assert phases == sorted(phases, key=["thinking", "answer"].index) and "thinking" in phases, phases
        assert {payload["phase"] for _, payload in tokens_of(without)} == {"answer"}
    """,
    "05": """
        assert len(workers) == 32, "the text says step 05 ships with 32 dirty workers"
        assert "static/app.js" in page.text and "function createSSEParser" in app_js
        # Exactly the users beyond the dirty workers queued, each told a different place.
        for dirty_workers, users in crowds.items():
            places = sorted(u["waiting"][0][1] for u in users if u["waiting"])
            assert places == list(range(1, USERS - dirty_workers + 1)), (dirty_workers, users)
    """,
    "06": """
        assert statuses == [200, 200, 200, 429]
        assert len({line["pid"] for line in traced}) == 2, traced
        assert tokens_counted == len(events)
        assert completion.choices[0].message.content.startswith("Hello")
        assert "".join(pieces).startswith("Here is a dirty app")
    """,
}
# How many pictures each notebook draws.
PICTURES = {"01": 1, "02": 1, "03": 2, "04": 1, "05": 4, "06": 0}


@pytest.fixture(scope="module")
def live():
    """notebooks/live.py, imported the way the notebooks import it."""
    spec = importlib.util.spec_from_file_location("live", NOTEBOOKS_DIR / "live.py")
    module = importlib.util.module_from_spec(spec)
    # Registered first, as an import would: its dataclasses look themselves up there.
    sys.modules["live"] = module
    spec.loader.exec_module(module)
    return module


def execute(path, before: list[str], after: list[str]) -> nbformat.NotebookNode:
    """Run a notebook in memory, with extra cells before and after its own."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    nb.cells[:0] = [nbformat.v4.new_code_cell(inspect.cleandoc(source)) for source in before]
    nb.cells.extend(nbformat.v4.new_code_cell(inspect.cleandoc(source)) for source in after)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    client.execute()
    return nb


def pictures(nb) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def test_collecting_these_tests_does_not_import_nbformat():
    code = (
        "import sys, pytest;"
        f"pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', {__file__!r}]);"
        "print(sorted({'nbformat', 'nbclient'} & set(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    imported = run.stdout.splitlines()[-1]
    advice = "import it in the tests that use it"
    assert imported == "[]", f"{imported} imported while collecting: {advice}\n{run.stdout}"


def test_every_step_has_a_notebook():
    assert [p.stem for p in NOTEBOOKS] == [s.name for s in all_steps()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    import nbformat

    text = path.read_text()
    nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    # Every cell has an id of its own, in the file itself (nbformat would
    # make one up on reading, with a warning).
    ids = [cell.get("id") for cell in json.loads(text)["cells"]]
    assert all(ids) and len(set(ids)) == len(ids), ids
    for cell in nb.cells:
        assert cell.metadata == {}, (cell.id, cell.metadata)
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} has outputs"
    # Only what names the kernel, nothing of the machine it last ran on.
    assert nb.metadata.kernelspec.name == "python3"
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, nb.metadata
    assert set(nb.metadata.get("language_info", {})) <= {"name"}, nb.metadata.language_info
    assert str(ROOT) not in text


def test_notebook_runs(step, request, monkeypatch):
    if step.path != find(step.name).path:
        pytest.skip("the notebooks run against the shipped steps, not --step-dir")
    path = step.notebook
    assert path.is_file(), f"step {step.name} has no notebook"
    number = step.code
    if number == "04":
        # One notebook goes through CHAT_URL, to the suite's shared server of its step.
        monkeypatch.setenv("CHAT_URL", request.getfixturevalue("server").base_url)
    else:
        monkeypatch.delenv("CHAT_URL", raising=False)
    before = [f"import sys\nassert sys.prefix == {sys.prefix!r}, 'not this environment: ' + sys.prefix"]
    after = [CLAIMS.get(number, ""), "assert not live.running_servers(), live.running_servers()"]
    nb = execute(path, before, after)
    assert pictures(nb) == PICTURES[number]


@pytest.mark.parametrize(
    ("path", "function"), [("01_sync_endpoint", "probe_health"), ("03_sse_streaming", "sse_events")]
)
def test_notebook_and_live_share_the_same_code(live, path, function):
    import nbformat

    nb = nbformat.read(NOTEBOOKS_DIR / f"{path}.ipynb", as_version=4)
    source = inspect.getsource(getattr(live, function)).rstrip("\n")
    assert source in [cell.source for cell in nb.cells if cell.cell_type == "code"]


def test_serve_names_the_steps_for_an_unknown_step(live, monkeypatch):
    monkeypatch.delenv("CHAT_URL", raising=False)
    with pytest.raises(live.NotebookServerError, match=r"no step '99'; the steps are: 01_sync_endpoint"):
        live.serve("99")


def test_reading_a_step_s_settings_leaves_nothing_behind(live, tmp_path, monkeypatch):
    """start() reads gunicorn_conf.py for its dirty workers; step 06's makes a metrics directory when read."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = dict(os.environ)
    assert live.dirty_workers(find("06").path, {"DIRTY_WORKERS": "3"}) == 3
    assert dict(os.environ) == before
    assert list(tmp_path.iterdir()) == [], "reading the settings left a directory behind"


def test_start_reports_a_server_that_dies(live):
    with pytest.raises(live.NotebookServerError) as failure:
        live.start("03", DIRTY_WORKERS="lots")
    message = str(failure.value)
    # What happened, and gunicorn's own reason from its log.
    assert "03_sse_streaming did not start" in message and "exited with code" in message
    assert "invalid literal for int() with base 10: 'lots'" in message
    assert not live.running_servers()


def test_serve_reports_a_chat_url_that_does_not_answer(live, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("CHAT_URL", url)
    with pytest.raises(live.NotebookServerError, match=f"CHAT_URL={url} does not answer"):
        live.serve("02")


def test_serve_uses_chat_url_and_leaves_it_running(live, monkeypatch, tmp_path):
    with start_server(find("02").path, log_dir=tmp_path, dirty_workers=2) as running:
        monkeypatch.setenv("CHAT_URL", running.base_url + "/")
        server = live.serve("02")
        assert server.url == running.base_url and not server.owned
        # The processes are found from the port alone.
        assert sorted(server.pids()) == sorted(running.pids())
        named = live.roles(server.pids())
        assert sorted(named.values()) == ["HTTP worker", "dirty arbiter", *["dirty worker"] * 2, "master"]
        assert named[running.pid] == "master"
        assert "dirty arbiter" in repr(live.process_tree_table(server))
        assert live.model_loads(server) is None
        with pytest.raises(live.NotebookServerError, match="started outside this notebook"):
            server.log()
        server.stop()
        assert running.running()

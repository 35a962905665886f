"""The step model (harness.steps): which steps exist, in what order, how they are named."""

from __future__ import annotations

import pytest

from harness.steps import DOCS_DIR, STEPS_DIR, UnknownStep, all_steps, find, last_core, step_of


@pytest.fixture
def fake_steps(tmp_path):
    """A steps/ folder of its own: two core steps, a bonus one, and folders that are no step."""
    for name in ("02_second", "01_first", "07_extra", "notes", "1_short", "03notunderscored"):
        (tmp_path / name).mkdir()
    (tmp_path / "04_a_file").write_text("not a folder\n")
    return tmp_path


def test_the_steps_are_numbered_folders_in_order(fake_steps):
    steps = all_steps(fake_steps)
    assert [(s.number, s.code, s.name) for s in steps] == [
        (1, "01", "01_first"), (2, "02", "02_second"), (7, "07", "07_extra")]
    assert [s.path for s in steps] == [fake_steps / s.name for s in steps]
    assert [str(s) for s in steps] == ["01_first", "02_second", "07_extra"]


def test_each_step_knows_the_one_before(fake_steps):
    first, second, extra = all_steps(fake_steps)
    assert first.previous is None
    assert second.previous == first
    assert extra.previous == second, "a gap in the numbers still links to the step before"
    assert step_of(fake_steps / "02_second").previous == first


def test_core_and_bonus_steps(fake_steps):
    assert [(s.name, s.core, s.bonus) for s in all_steps(fake_steps)] == [
        ("01_first", True, False), ("02_second", True, False), ("07_extra", False, True)]
    assert last_core(fake_steps).name == "02_second"


def test_find_takes_a_name_a_code_or_a_number(fake_steps):
    for wanted in ("02_second", "02", "2", 2, " 2 "):
        assert find(wanted, fake_steps).name == "02_second", wanted


def test_an_unknown_step_lists_the_steps(fake_steps):
    for wanted in ("9", "second", "", "01_firs"):
        with pytest.raises(UnknownStep) as failure:
            find(wanted, fake_steps)
        listed = "01_first, 02_second, 07_extra"
        assert str(failure.value) == f"no step {wanted.strip()!r}; the steps are: {listed}"
    with pytest.raises(UnknownStep, match="notes is not a step folder"):
        step_of(fake_steps / "notes")


def test_slug_title_page_and_a_copy(fake_steps, tmp_path):
    step = find("07", fake_steps)
    assert (step.slug, step.title) == ("extra", "Extra")
    assert step.page_uri == "steps/07-extra.md"
    assert step.page == DOCS_DIR / "steps" / "07-extra.md"
    assert step.notebook.name == "07_extra.ipynb"
    copy = step.at(tmp_path / "workspace")
    assert (copy.name, copy.number, copy.path) == ("07_extra", 7, tmp_path / "workspace")
    assert str(copy) == "07_extra"


def test_the_repository_steps():
    steps = all_steps()
    assert steps, f"no step folders in {STEPS_DIR}"
    assert [s.previous for s in steps] == [None, *steps[:-1]], "each step follows the one before it"
    final = steps.index(last_core())
    assert all(s.core for s in steps[: final + 1]) and all(s.bonus for s in steps[final + 1:])
    assert find(steps[0].number) == steps[0]

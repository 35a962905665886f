"""make loop-times: a column for each command it timed, with the processor time its
processes used, a failed run said so and shown, and one step measured again without
losing the others."""

import json
import sys

from tools import loop_times
from tools.loop_times import failure_report, table


def test_the_table_has_a_column_per_command_timed():
    rows = [{"step": "01", "check": 14.2, "test": 30.4}, {"step": "02", "check": 41.0, "test": 80.0}]
    assert table(rows).splitlines() == [
        "| step | `make check STEP=NN DIR=workspace` | `make test STEP=NN` |",
        "|---|---|---|",
        "| 01 | 14 s | 30 s |",
        "| 02 | 41 s | 80 s |",
    ]


def test_a_figure_measured_with_its_processor_time_shows_it():
    rows = [{"step": "01", "check": 14.2, "check_cpu": 25.6}, {"step": "02", "check": 41.0}]
    assert table(rows).splitlines()[2:] == ["| 01 | 14 s (26 s of CPU) |", "| 02 | 41 s |"]


def test_the_processor_time_includes_the_commands_children(tmp_path):
    # bash starts python, which keeps a core busy for half a second: the grandchild's time counts.
    busy = f"{sys.executable} -c 'import time\nwhile time.process_time() < 0.5: pass'"
    seconds, cpu, code, _output = loop_times.timed(busy, tmp_path)
    assert code == 0
    assert 0.5 <= cpu <= seconds + 0.1, (cpu, seconds)


def test_a_command_not_timed_has_no_column_and_a_failed_one_says_so():
    rows = [{"step": "01", "check": 14.2}, {"step": "02", "check_failed": "1 failed"}]
    assert table(rows).splitlines() == [
        "| step | `make check STEP=NN DIR=workspace` |",
        "|---|---|",
        "| 01 | 14 s |",
        "| 02 | failed |",
    ]


def test_a_failed_check_shows_what_broke():
    output = "\n".join(["collecting", *["." * 10] * 50, "=== short test summary info ===",
                         "FAILED tests/steps/test_api.py::test_health[03_sse_streaming]",
                         "--- what broke, in plain words ---", "- health (03_sse_streaming)"])
    report = failure_report(output)
    assert report.splitlines()[0] == "=== short test summary info ==="
    assert "FAILED tests/steps/test_api.py::test_health" in report and "what broke" in report
    assert failure_report("\n".join(map(str, range(100)))).splitlines() == [str(n) for n in range(60, 100)]


def test_one_step_measured_again_keeps_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(loop_times, "OUT", tmp_path)
    monkeypatch.setattr(loop_times, "measure", lambda number, tests: {"step": number, "check": 50.0})
    machine = loop_times.machine_name()
    earlier = [{"step": "01", "check": 14.0}, {"step": "02", "check_failed": "1 failed"},
               {"step": "03", "check": 70.0}]
    (tmp_path / "times.json").write_text(json.dumps({"machine": machine, "steps": earlier}))
    assert loop_times.main(["--steps", "02"]) == 0
    steps = json.loads((tmp_path / "times.json").read_text())["steps"]
    assert steps == [{"step": "01", "check": 14.0}, {"step": "02", "check": 50.0},
                     {"step": "03", "check": 70.0}]
    # A failure kept from before, of a step not measured again, is not this run's.
    earlier = [{"step": "01", "check_failed": "1 failed"}, {"step": "02", "check": 41.0}]
    (tmp_path / "times.json").write_text(json.dumps({"machine": machine, "steps": earlier}))
    assert loop_times.main(["--steps", "02"]) == 0
    assert "| 01 | failed |" in (tmp_path / "times.md").read_text()
    # Figures of another machine are not mixed in.
    (tmp_path / "times.json").write_text(json.dumps({"machine": "elsewhere", "steps": earlier}))
    loop_times.main(["--steps", "02"])
    assert json.loads((tmp_path / "times.json").read_text())["steps"] == [{"step": "02", "check": 50.0}]

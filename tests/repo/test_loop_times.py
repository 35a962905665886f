"""make loop-times' table: a column for each command it timed, and a failed run said so."""

from tools.loop_times import table


def test_the_table_has_a_column_per_command_timed():
    rows = [{"step": "01", "check": 14.2, "test": 30.4}, {"step": "02", "check": 41.0, "test": 80.0}]
    assert table(rows).splitlines() == [
        "| step | `make check STEP=NN DIR=workspace` | `make test STEP=NN` |",
        "|---|---|---|",
        "| 01 | 14 s | 30 s |",
        "| 02 | 41 s | 80 s |",
    ]


def test_a_command_not_timed_has_no_column_and_a_failed_one_says_so():
    rows = [{"step": "01", "check": 14.2}, {"step": "02", "check_failed": "1 failed"}]
    assert table(rows).splitlines() == [
        "| step | `make check STEP=NN DIR=workspace` |",
        "|---|---|",
        "| 01 | 14 s |",
        "| 02 | failed |",
    ]

"""Time the learner's loop on this machine: `make loop-times`.

For every step, in a sandbox copy of the repository (sharing its .venv), it
runs what a learner runs, `make workspace STEP=NN` and then
`make check STEP=NN DIR=workspace`, and, with `--tests`, the step's
`make test STEP=NN`; each is timed as a whole, like a learner waiting at
the terminal, and its processor time is added up over every process it ran
(the servers and the browser included). It writes docs/generated/loop/times.json
and times.md, a table of the figures. A command that fails is reported with what it said,
and its time is not written. With `--steps`, the other steps keep the
figures measured before on a machine like this one.

    python -m tools.loop_times [--tests] [--steps 01,03]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from harness.steps import all_steps
from tools.docs_commands import ROOT, make_sandbox, reader_env, shell

OUT = ROOT / "docs" / "generated" / "loop"


def children_cpu() -> float:
    """Processor seconds of every process this one has waited for, and of those they waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: str, cwd: Path) -> tuple[float, float, int | None, str]:
    """Seconds a command took in a reader's shell, the processor seconds it used, its exit code
    (None past an hour) and its output."""
    started, cpu = time.monotonic(), children_cpu()
    code, output = shell(command, cwd, reader_env(), timeout=3600)
    return time.monotonic() - started, children_cpu() - cpu, code, output


def last_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else ""


def measure(number: str, tests: bool) -> dict:
    row: dict = {"step": number}
    with tempfile.TemporaryDirectory(prefix="loop-times-") as tmp:
        sandbox = make_sandbox(Path(tmp) / "repo", tracked_only=True)
        _, _, code, output = timed(f"make workspace STEP={number}", sandbox)
        if code != 0:
            raise SystemExit(f"make workspace STEP={number} failed:\n{output}")
        commands = {"check": f"make check STEP={number} DIR=workspace"}
        if tests:
            commands["test"] = f"make test STEP={number}"
        for key, command in commands.items():
            seconds, cpu, code, output = timed(command, sandbox)
            print(f"{command}: {seconds:.0f} s ({cpu:.0f} s of CPU), exit {code}: {last_line(output)}",
                  flush=True)
            if code == 0:
                row[key] = round(seconds, 1)
                row[f"{key}_cpu"] = round(cpu, 1)
                row[f"{key}_result"] = last_line(output)
            else:
                row[f"{key}_failed"] = last_line(output)
                print(failure_report(output), flush=True)
    return row


def failure_report(output: str, lines: int = 40) -> str:
    """What a failed command said: pytest's failed tests and plain-words section, or its last lines."""
    text = output.splitlines()
    start = next((i for i, line in enumerate(text) if "short test summary info" in line), len(text) - lines)
    return "\n".join(text[max(0, start):])


COLUMNS = {"check": "`make check STEP=NN DIR=workspace`", "test": "`make test STEP=NN`"}


def table(rows: list[dict]) -> str:
    """A row per step, a column per command that was timed (a failed one says so)."""
    keys = [key for key in COLUMNS if any(key in row or f"{key}_failed" in row for row in rows)]
    lines = ["| step | " + " | ".join(COLUMNS[key] for key in keys) + " |", "|---" * (len(keys) + 1) + "|"]

    def cell(row: dict, key: str) -> str:
        if key not in row:
            return "failed"
        cpu = row.get(f"{key}_cpu")
        return f"{row[key]:.0f} s" + (f" ({cpu:.0f} s of CPU)" if cpu is not None else "")

    for row in rows:
        cells = [cell(row, key) for key in keys]
        lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine_name() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"


def earlier_rows(machine: str) -> list[dict]:
    """The rows of the last times.json, if it was measured on a machine like this one."""
    try:
        earlier = json.loads((OUT / "times.json").read_text())
    except (OSError, ValueError):
        return []
    return earlier.get("steps", []) if earlier.get("machine") == machine else []


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", action="store_true", help="time make test STEP=NN as well")
    parser.add_argument("--steps", help="comma-separated step numbers (default: every step)")
    args = parser.parse_args(argv)
    numbers = args.steps.split(",") if args.steps else [step.code for step in all_steps()]
    machine = machine_name()
    measured = {row["step"]: row for row in (measure(number, args.tests) for number in numbers)}
    # With --steps, the other steps keep the figures this machine measured before.
    rows = [row for row in earlier_rows(machine) if row["step"] not in measured] + list(measured.values())
    rows.sort(key=lambda row: row["step"])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "times.json").write_text(json.dumps({"machine": machine, "steps": rows}, indent=2) + "\n")
    (OUT / "times.md").write_text(table(rows) + f"\nMeasured by `make loop-times` on {machine}.\n")
    print(f"wrote {OUT / 'times.md'}")
    # This run's commands decide; an older failure kept in the table does not.
    return 1 if any(key.endswith("_failed") for row in measured.values() for key in row) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

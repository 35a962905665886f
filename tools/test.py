"""Run the suite the way CI does: lint, pytest under coverage, coverage report.

`make test STEP=02` (it passes `--step=02`) runs that step's tests. The whole
`make test` runs the repository's own tests (tests/repo), then the tests that
run `make check` themselves (marked learner_loop), two at a time: on an
unchanged copy of each step, whose check runs the step's tests, once, under
coverage too, and on broken copies. The step code's coverage comes from those
checks alone, so the repository's own tests run without it.

Coverage includes the code that runs inside gunicorn's forked HTTP and dirty
workers (see [tool.coverage.run] in pyproject.toml). The full run fails below 100 %.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def run(*command: str) -> int:
    print("+", " ".join(command), flush=True)
    return subprocess.call(command, cwd=ROOT)


def main(args: list[str]) -> int:
    step = next((arg.removeprefix("--step=") for arg in args if arg.startswith("--step=")), None)
    if run(PY, "-m", "ruff", "check", "steps", "tests", "harness", "tools"):
        return 1
    run(PY, "-m", "coverage", "erase")
    pytest = (PY, "-m", "coverage", "run", "-m", "pytest")
    if step:
        tests = run(*pytest, "-m", "not learner_loop", *args)
        if tests == 5:
            print("No test ran: is the step name right?", file=sys.stderr)
    else:
        # Each learner_loop test runs make check, several tests at once: two
        # such checks side by side keep two cores busy without starving either.
        tests = (run(PY, "-m", "pytest", "tests/repo", "-m", "not learner_loop", *args)
                 or run(*pytest, "-m", "learner_loop", "-n", "2", "--dist", "worksteal"))
    run(PY, "-m", "coverage", "combine", "--quiet")
    if step:
        report = run(PY, "-m", "coverage", "report", f"--include=steps/{step}*/*")
    else:
        report = run(PY, "-m", "coverage", "report", "--fail-under=100")
    return tests or report


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

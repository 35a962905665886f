"""Print a step's folder, relative to the repository: `python tools/step_path.py [--previous] 02`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.server import ROOT, ServerError, find_step, step_dirs  # noqa: E402


def main(argv: list[str]) -> int:
    previous = "--previous" in argv
    names = [a for a in argv[1:] if a != "--previous"]
    try:
        path = find_step(names[0])
        if previous:
            steps = step_dirs()
            index = steps.index(path)
            if index == 0:
                raise ServerError(f"{path.name} is the first step: nothing comes before it")
            path = steps[index - 1]
    except (ServerError, IndexError) as exc:
        print(exc or "usage: step_path.py [--previous] STEP", file=sys.stderr)
        return 2
    print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Print a step's folder, relative to the repository: `python -m tools.step_path [--previous] 02`."""

import sys

from harness.steps import ROOT, UnknownStep, find


def main(argv: list[str]) -> int:
    previous = "--previous" in argv
    names = [a for a in argv[1:] if a != "--previous"]
    try:
        step = find(names[0])
        if previous:
            if step.previous is None:
                raise UnknownStep(f"{step.name} is the first step: nothing comes before it")
            step = step.previous
    except (UnknownStep, IndexError) as exc:
        print(exc or "usage: python -m tools.step_path [--previous] STEP", file=sys.stderr)
        return 2
    print(step.path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

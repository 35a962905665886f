"""The tutorial's steps: one `Step` per folder `steps/NN_name`, in order.

Everything that needs to know which steps exist, how a step is named on the
command line ("3", "03", "03_sse_streaming"), which step comes before it, or
where its page is, asks this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS_DIR = ROOT / "steps"
DOCS_DIR = ROOT / "docs"
NOTEBOOKS_DIR = ROOT / "notebooks"
# The core steps build the service a learner takes home; the steps after
# this one are bonus material (production concerns), and the tools that
# serve "the final step" mean the last core one.
LAST_CORE = 5


class UnknownStep(LookupError):
    """A step was asked for by a name or number that no step folder has."""


@dataclass(frozen=True)
class Step:
    """One step folder. `str(step)` is its folder name, e.g. "03_sse_streaming"."""

    number: int
    name: str
    path: Path
    previous: Step | None = dataclasses.field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return self.name

    @property
    def code(self) -> str:
        """The two digits the step goes by: "03"."""
        return f"{self.number:02d}"

    @property
    def slug(self) -> str:
        """The folder name without its number: "sse_streaming"."""
        return self.name[len(self.code) + 1:]

    @property
    def title(self) -> str:
        """The slug as words: "Sse streaming"."""
        return self.slug.replace("_", " ").capitalize()

    @property
    def core(self) -> bool:
        return self.number <= LAST_CORE

    @property
    def bonus(self) -> bool:
        return not self.core

    @property
    def page_uri(self) -> str:
        """The step's page inside docs/: "steps/03-sse-streaming.md"."""
        return f"steps/{self.name.replace('_', '-')}.md"

    @property
    def page(self) -> Path:
        """The step's page: docs/steps/03-sse-streaming.md."""
        return DOCS_DIR / self.page_uri

    @property
    def notebook(self) -> Path:
        """The step's notebook: notebooks/03_sse_streaming.ipynb."""
        return NOTEBOOKS_DIR / f"{self.name}.ipynb"

    def at(self, path: Path) -> Step:
        """The same step, with its code in another folder (a learner's copy)."""
        return dataclasses.replace(self, path=path)


def is_step_folder(path: Path) -> bool:
    """A folder named NN_something."""
    return path.is_dir() and len(path.name) > 3 and path.name[:2].isdigit() and path.name[2] == "_"


def all_steps(steps_dir: Path = STEPS_DIR) -> list[Step]:
    """Every step, in order, each linked to the one before it."""
    steps: list[Step] = []
    for path in sorted(p for p in steps_dir.iterdir() if is_step_folder(p)):
        steps.append(Step(int(path.name[:2]), path.name, path, steps[-1] if steps else None))
    return steps


def step_of(folder: Path) -> Step:
    """The step a folder is, among its sibling folders (steps/, or a copy of it)."""
    for step in all_steps(folder.parent):
        if step.path == folder:
            return step
    raise UnknownStep(f"{folder} is not a step folder (steps are named like 03_sse_streaming)")


def find(step: str | int, steps_dir: Path = STEPS_DIR) -> Step:
    """The step named "03_sse_streaming", "03", "3" or 3."""
    wanted = str(step).strip()
    steps = all_steps(steps_dir)
    for candidate in steps:
        by_number = wanted.isdigit() and int(wanted) == candidate.number
        if wanted in (candidate.name, candidate.code) or by_number:
            return candidate
    names = ", ".join(s.name for s in steps)
    raise UnknownStep(f"no step {wanted!r}; the steps are: {names}")


def last_core(steps_dir: Path = STEPS_DIR) -> Step:
    """The final step of the core tutorial, which `make run` serves by default."""
    return [s for s in all_steps(steps_dir) if s.core][-1]

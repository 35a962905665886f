"""MkDocs hook: the parts of the step pages that come straight from steps/.

A step page writes two markers, and this hook fills them in at build time:

- ``<!-- what-changed 03 -->`` becomes the list of files that step 03 added,
  changed or removed since step 02, and a unified diff of each (difflib, on
  the step folders as they are on disk). Nobody types a diff or a line number.
  ``<!-- what-changed 03 capacity.py -->`` shows only the files it names, for a
  page that teaches its step in parts; a named file that did not change fails the build.
- ``<!-- step-code 03 -->`` becomes one tab per file of the step, each a
  pymdownx.snippets include of the real file, so the code shown is the code run.

A step folder without a page still gets one: a generated page made of these
two markers only, added to the nav, so that a new step never breaks the site.
"""

from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

# The repository's own step model: mkdocs runs as `python -m mkdocs` from the
# repository root (make docs, the suite), so harness is importable.
from harness.steps import Step, UnknownStep, all_steps, find

ROOT = Path(__file__).resolve().parents[2]
# The folder's own description is not part of what a step teaches in code.
LEFT_OUT = {"README.md"}
SKIPPED_DIRS = {"__pycache__", ".ipynb_checkpoints"}
WHAT_CHANGED = re.compile(r"^<!-- what-changed (\d\d)((?: [\w./-]+)*) -->$", re.MULTILINE)
STEP_CODE = re.compile(r"^<!-- step-code (\d\d) -->$", re.MULTILINE)
LANGUAGES = {".py": "python", ".html": "html", ".css": "css", ".js": "javascript", ".json": "json"}

log = logging.getLogger("mkdocs.hooks.what_changed")


# --- the step folders ------------------------------------------------------


def step_files(folder: Path) -> dict[str, bytes]:
    """Every file of a step, by its path inside the folder (posix), as bytes."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not SKIPPED_DIRS & set(relative.parts) and relative.as_posix() not in LEFT_OUT:
            files[relative.as_posix()] = path.read_bytes()
    return files


def as_text(data: bytes) -> str | None:
    """The file as text, or None for a binary file (an image, a font...)."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def display_order(name: str) -> tuple:
    # main.py first: it is where every step starts reading.
    return (name != "main.py", "/" in name, name)


def fence_for(text: str) -> str:
    """A backtick fence longer than any backtick run in the text."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(4, longest + 1)


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line else line for line in text.split("\n"))


# --- what changed ----------------------------------------------------------


def changed_files(old: Path, new: Path) -> list[str]:
    """The files `new` added, changed or removed since `old`, in display order."""
    old_files, new_files = step_files(old), step_files(new)
    names = set(old_files) | set(new_files)
    return sorted((name for name in names if old_files.get(name) != new_files.get(name)), key=display_order)


def what_changed(old: Path | None, new: Path, only: list[str] | None = None) -> str:
    """Markdown: the files `new` added, changed and removed since `old`, with diffs; `only` these, if given."""
    new_files = step_files(new)
    if old is None:
        names = ", ".join(f"`{name}`" for name in sorted(new_files, key=display_order))
        return f"This is the first step: every file is new ({names}). They are all shown in full below.\n"
    old_files = step_files(old)
    names = changed_files(old, new)
    if only:
        unchanged = [name for name in only if name not in names]
        if unchanged:
            listed = ", ".join(unchanged)
            raise PluginError(f"what-changed {new.name}: {listed} did not change since {old.name}")
        names = [name for name in names if name in only]
    rows, tabs = [], []
    for name in names:
        before, after = old_files.get(name), new_files.get(name)
        texts = (as_text(before) if before is not None else "", as_text(after) if after is not None else "")
        if None in texts:
            kind = "added" if before is None else "removed" if after is None else "changed"
            rows.append(f"| `{name}` | {kind} (binary file, not shown) |")
            continue
        diff = list(
            difflib.unified_diff(
                texts[0].splitlines(),
                texts[1].splitlines(),
                fromfile=f"{old.name}/{name}" if before is not None else "/dev/null",
                tofile=f"{new.name}/{name}" if after is not None else "/dev/null",
                lineterm="",
            )
        )
        added = sum(1 for line in diff[2:] if line.startswith("+"))
        removed = sum(1 for line in diff[2:] if line.startswith("-"))
        if before is None:
            kind = f"added ({added} lines)"
        elif after is None:
            kind = f"removed ({removed} lines)"
        else:
            kind = f"changed: {added} lines added, {removed} removed"
        rows.append(f"| `{name}` | {kind} |")
        body = "\n".join(diff)
        fence = fence_for(body)
        block = f"{fence}diff\n{body}\n{fence}"
        tabs.append(f'=== "{name}"\n\n{indent(block)}\n')
    if not rows:
        return f"Nothing changed between `{old.name}` and `{new.name}`.\n"
    table = "| file | since `" + old.name + "` |\n|---|---|\n" + "\n".join(rows) + "\n"
    return table + "\n" + "\n".join(tabs)


# --- the code of a step ------------------------------------------------------


def step_code(folder: Path, root: Path = ROOT) -> str:
    """Markdown: one tab per text file of the step, each included from the real file."""
    tabs = []
    for name, data in sorted(step_files(folder).items(), key=lambda item: display_order(item[0])):
        text = as_text(data)
        if text is None:
            continue
        path = (folder / name).relative_to(root).as_posix()
        language = LANGUAGES.get(Path(name).suffix, "text")
        fence = fence_for(text)
        block = f'{fence}{language} title="{path}" linenums="1"\n--8<-- "{path}"\n{fence}'
        tabs.append(f'=== "{name}"\n\n{indent(block)}\n')
    return "\n".join(tabs)


# --- pages for steps -----------------------------------------------------------


def missing_page(step: Step) -> str:
    number, title = step.code, step.title
    return (
        f"# Step {number}: {title}\n\n"
        '!!! note "This page is generated"\n'
        "    Nobody has written this step's page yet, so it shows only what the\n"
        "    step folder itself says: what changed, and the code.\n"
        f"    The folder `steps/{step.name}` has a README with how to run it.\n\n"
        f"## What changed\n\n<!-- what-changed {number} -->\n\n"
        f"## The code\n\n<!-- step-code {number} -->\n"
    )


def _steps_section(nav: list) -> list | None:
    for item in nav:
        if isinstance(item, dict) and "Steps" in item:
            return item["Steps"]
    return None


def on_config(config):
    """Put every step's page in the nav's Steps section, written or generated."""
    section = _steps_section(config.nav or [])
    if section is None:
        raise PluginError("mkdocs.yml: the nav needs a 'Steps' section")
    listed = {entry if isinstance(entry, str) else next(iter(entry.values())) for entry in section}
    for step in all_steps():
        if step.page_uri not in listed:
            section.append(step.page_uri)
    return config


def on_files(files, config):
    for step in all_steps():
        if files.get_file_from_path(step.page_uri) is None:
            log.info("steps/%s has no page yet: generating %s", step.name, step.page_uri)
            files.append(File.generated(config, step.page_uri, content=missing_page(step)))
    return files


def marked_step(number: str) -> Step:
    try:
        return find(number)
    except UnknownStep as exc:
        raise PluginError(str(exc)) from None


def on_page_markdown(markdown, page, config, files):
    def changed(match):
        step = marked_step(match.group(1))
        old = step.previous.path if step.previous else None
        return what_changed(old, step.path, match.group(2).split())

    def code(match):
        return step_code(marked_step(match.group(1)).path)

    markdown = WHAT_CHANGED.sub(changed, markdown)
    return STEP_CODE.sub(code, markdown)

"""MkDocs hook: the parts of the site that other tools produce, or may not have produced yet.

- ``<!-- settings-table -->`` becomes the table of every gunicorn setting that a
  step's ``gunicorn_conf.py`` sets, read from the files (ast) with gunicorn's own
  default. Each setting needs a ``### `name` { #name }`` section on the same page:
  a setting without one, or a section for a setting no step sets, is a warning,
  so ``mkdocs build --strict`` fails.
- ``<!-- screenshot NAME.png Alt text -->`` becomes the image
  ``assets/generated/NAME.png`` that ``make screenshots`` takes of the real app,
  or a note saying it has not been taken yet.
- ``<!-- bench-table -->`` includes ``docs/generated/bench/table.md`` (written by
  ``make bench``) with snippets, and its charts if they are there, or says how
  to produce them.
- ``<!-- loop-times -->`` includes ``docs/generated/loop/times.md`` (written by
  ``make loop-times``): how long each step's checks take, or says how to measure it.
- ``<!-- notebooks -->`` lists the notebooks of ``notebooks/``, which this hook
  adds to the site for mkdocs-jupyter to render (without running them).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import subprocess
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

# The repository's own step model: mkdocs runs as `python -m mkdocs` from the
# repository root (make docs, the suite), so harness is importable.
from harness.steps import all_steps

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
STEPS = ROOT / "steps"
NOTEBOOKS = ROOT / "notebooks"
SCREENSHOTS = DOCS / "assets" / "generated"
BENCH_TABLE = DOCS / "generated" / "bench" / "table.md"
LOOP_TIMES = DOCS / "generated" / "loop" / "times.md"
SETTINGS_PAGE = "concepts/configuration.md"

SETTINGS_TABLE = re.compile(r"^<!-- settings-table -->$", re.MULTILINE)
SCREENSHOT = re.compile(r"^<!-- screenshot (\S+\.png) (.+?) -->$", re.MULTILINE)
BENCH = re.compile(r"^<!-- bench-table -->$", re.MULTILINE)
LOOP = re.compile(r"^<!-- loop-times -->$", re.MULTILINE)
NOTEBOOK_LIST = re.compile(r"^<!-- notebooks -->$", re.MULTILINE)
SETTING_SECTION = re.compile(r"^### `(\w+)` \{ #(\w+) \}$", re.MULTILINE)

log = logging.getLogger("mkdocs.hooks.generated")


# --- gunicorn settings ---------------------------------------------------------


def describe_value(node: ast.expr, source: str) -> str:
    """A short, true description of a setting's value expression."""
    try:
        return f"`{ast.literal_eval(node)!r}`"
    except ValueError:
        pass
    for call in ast.walk(node):
        # os.environ.get("NAME", "default"): say where the value comes from.
        if (
            isinstance(call, ast.Call)
            and ast.unparse(call.func) == "os.environ.get"
            and all(isinstance(arg, ast.Constant) for arg in call.args)
            and len(call.args) == 2
        ):
            name, default = (arg.value for arg in call.args)
            return f"`{default}` (env `{name}`)"
    return f"`{ast.get_source_segment(source, node)}`"


def settings_in(conf: Path) -> dict[str, str]:
    """The settings a gunicorn_conf.py sets at module level, with their values described."""
    source = conf.read_text()
    found = {}
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) and node.value else []
        for target in targets:
            if isinstance(target, ast.Name) and not target.id.startswith("_"):
                found[target.id] = describe_value(node.value, source)
    return found


def step_settings(steps_root: Path = STEPS) -> dict[str, dict[str, str]]:
    """{step folder name: {setting: value}} for every step's gunicorn_conf.py."""
    confs = [step.path / "gunicorn_conf.py" for step in all_steps(steps_root)]
    return {conf.parent.name: settings_in(conf) for conf in confs if conf.is_file()}


def gunicorn_defaults() -> dict[str, str]:
    from gunicorn.config import KNOWN_SETTINGS

    return {s.name: f"`{s.default!r}`" for s in KNOWN_SETTINGS}


def step_ranges(values: dict[str, str]) -> str:
    """'01–05: `'-'`' for a value shared by consecutive steps; '—' where a step leaves it out."""
    parts, run = [], []
    for step, value in list(values.items()) + [(None, None)]:
        if run and value != run[0][1]:
            first, last = run[0][0][:2], run[-1][0][:2]
            label = first if first == last else f"{first}–{last}"
            if run[0][1] != "—":
                parts.append(f"{label}: {run[0][1]}")
            run = []
        if step is not None:
            run.append((step, value))
    return "<br>".join(parts)


def settings_table(per_step: dict[str, dict[str, str]]) -> str:
    names = sorted({name for settings in per_step.values() for name in settings})
    defaults = gunicorn_defaults()
    rows = ["| setting | value, by step | gunicorn's default |", "|---|---|---|"]
    for name in names:
        values = {step: settings.get(name, "—") for step, settings in per_step.items()}
        rows.append(f"| [`{name}`](#{name}) | {step_ranges(values)} | {defaults.get(name, '—')} |")
    return "\n".join(rows) + "\n"


def settings_problems(markdown: str, per_step: dict[str, dict[str, str]]) -> list[str]:
    """What the settings page fails to document, or documents for nothing."""
    used = {name: step for step, settings in per_step.items() for name in settings}
    known = gunicorn_defaults()
    documented = {}
    problems = []
    for match in SETTING_SECTION.finditer(markdown):
        name, anchor = match.groups()
        if name != anchor:
            problems.append(f"the section of `{name}` has the anchor #{anchor}: use {{ #{name} }}")
        documented[name] = anchor
    for name, step in sorted(used.items()):
        if name not in known:
            problems.append(f"steps/{step}/gunicorn_conf.py sets `{name}`, which gunicorn does not know")
        if name not in documented:
            problems.append(
                f"steps/{step}/gunicorn_conf.py sets `{name}`, but {SETTINGS_PAGE} has no "
                f"'### `{name}` {{ #{name} }}' section"
            )
    for name in sorted(set(documented) - set(used)):
        problems.append(f"{SETTINGS_PAGE} documents `{name}`, which no step's gunicorn_conf.py sets")
    return problems


# --- things other tools generate ---------------------------------------------------


def relative_to_page(page_uri: str, target: str) -> str:
    depth = page_uri.count("/")
    return "../" * depth + target


def tracked(path: Path) -> bool:
    """Whether git knows the file (committed or added), even if it is missing on disk."""
    try:
        listed = subprocess.run(["git", "ls-files", "--", str(path)], cwd=ROOT,
                                capture_output=True, text=True)
    except OSError:
        return False
    return bool(listed.stdout.strip())


def screenshot(page_uri: str, name: str, alt: str, folder: Path | None = None) -> str:
    path = (folder or SCREENSHOTS) / name
    if path.is_file():
        return f"![{alt}]({relative_to_page(page_uri, 'assets/generated/' + name)})"
    if tracked(path):
        # Once the screenshot is part of the repository, losing it is an error.
        log.warning("docs/assets/generated/%s is in git but missing here: run make screenshots", name)
    else:
        log.info("docs/assets/generated/%s does not exist yet: run make screenshots", name)
    return (
        '!!! info "Screenshot not taken yet"\n'
        f"    `make screenshots` takes `docs/assets/generated/{name}` from the running app;\n"
        "    it has not run on this copy of the repository yet.\n"
    )


BENCH_CHARTS = {
    "ttft_by_workers.png": "Time to first token as the number of dirty workers grows",
    "burst.png": "What became of each chat in a burst, by number of dirty workers",
}


def bench_table(path: Path = BENCH_TABLE, root: Path = ROOT, page_uri: str = "concepts/capacity.md") -> str:
    if path.is_file():
        parts = [f'--8<-- "{path.relative_to(root).as_posix()}"\n']
        for name, alt in BENCH_CHARTS.items():
            if (path.parent / name).is_file():
                target = relative_to_page(page_uri, f"generated/bench/{name}")
                parts.append(f"\n![{alt}]({target})\n")
        return "".join(parts)
    return (
        '!!! info "No measurements yet"\n'
        "    The benchmark writes its table to `docs/generated/bench/table.md`;\n"
        "    it has not run on this copy of the repository yet.\n"
    )


def loop_times(path: Path = LOOP_TIMES, root: Path = ROOT) -> str:
    if path.is_file():
        return f'--8<-- "{path.relative_to(root).as_posix()}"\n'
    return (
        '!!! info "Not measured yet"\n'
        "    `make loop-times` times each step's `make check` and `make test` and\n"
        "    writes the table to `docs/generated/loop/times.md`; it has not run on\n"
        "    this copy of the repository yet.\n"
    )


def notebooks(folder: Path | None = None) -> list[Path]:
    folder = folder or NOTEBOOKS
    return sorted(folder.glob("*.ipynb")) if folder.is_dir() else []


def notebook_title(path: Path) -> str:
    """The first heading of the notebook's first markdown cell, or its file name."""
    try:
        cells = json.loads(path.read_text())["cells"]
    except (ValueError, KeyError):
        return path.stem
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return path.stem


def notebook_list(page_uri: str) -> str:
    found = notebooks()
    if not found:
        return (
            '!!! info "No notebooks yet"\n'
            "    The notebooks live in `notebooks/`, one per step; none is there yet.\n"
        )
    lines = [f"- [{notebook_title(nb)}]({relative_to_page(page_uri, 'notebooks/' + nb.name)})"
             for nb in found]
    return "\n".join(lines) + "\n"


# --- mkdocs events ---------------------------------------------------------------


def _section(nav: list, title: str) -> list | None:
    for item in nav:
        if isinstance(item, dict):
            if title in item:
                return item[title]
            for value in item.values():
                if isinstance(value, list) and (found := _section(value, title)) is not None:
                    return found
    return None


def on_config(config):
    """List the notebooks in the nav, under the 'Notebooks' section."""
    section = _section(config.nav or [], "Notebooks")
    if section is not None:
        for nb in notebooks():
            uri = f"notebooks/{nb.name}"
            if uri not in section:
                section.append({notebook_title(nb): uri})
    return config


# Before mkdocs-jupyter's on_files, which turns .ipynb files into pages.
@event_priority(50)
def on_files(files, config):
    for nb in notebooks():
        files.append(File(f"notebooks/{nb.name}", str(ROOT), config.site_dir, config.use_directory_urls))
    return files


def on_page_markdown(markdown, page, config, files):
    uri = page.file.src_uri
    if SETTINGS_TABLE.search(markdown):
        per_step = step_settings()
        for problem in settings_problems(markdown, per_step):
            log.warning(problem)
        markdown = SETTINGS_TABLE.sub(lambda m: settings_table(per_step), markdown)
    markdown = SCREENSHOT.sub(lambda m: screenshot(uri, m.group(1), m.group(2)), markdown)
    markdown = BENCH.sub(lambda m: bench_table(page_uri=uri), markdown)
    markdown = LOOP.sub(lambda m: loop_times(), markdown)
    return NOTEBOOK_LIST.sub(lambda m: notebook_list(uri), markdown)


# mkdocs serve: rebuild when the things this hook reads change.
def on_serve(server, config, builder):
    for path in (STEPS, NOTEBOOKS, SCREENSHOTS, BENCH_TABLE.parent, LOOP_TIMES.parent):
        if path.exists():
            server.watch(os.fspath(path))
    return server

"""Write the outputs the pages show, by running the pages' commands: `make docs-outputs`.

Every ``$ command`` line of a console block that is followed by
``--8<-- "docs/generated/outputs/....txt"`` gets that file written with what the
command prints now (see tools/docs_commands.py for the convention). Commands
that talk to http://127.0.0.1:8000 run against a fresh server of the page's
step; the others run in a sandbox copy of the repository. ``make test STEP=NN``
runs for real there, on the committed files (git ls-files), so it takes a few
minutes a step: `--only` picks outputs by a piece of their path, and
`--skip-suite` leaves those out.

    python -m tools.docs_outputs [--only TEXT] [--skip-suite]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from harness.server import start_server
from harness.steps import find
from tools.docs_commands import (
    OUTPUTS,
    ROOT,
    Command,
    Outcome,
    all_pages,
    make_sandbox,
    run_http,
    run_serve,
    run_shell,
)


def orphans(pages) -> list[Path]:
    wanted = {c.output for page in pages for c in page.commands if c.output}
    return [p for p in sorted((ROOT / OUTPUTS).rglob("*.txt")) if p not in wanted]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="only outputs whose path contains this text")
    parser.add_argument("--skip-suite", action="store_true", help="leave out the outputs of make test")
    args = parser.parse_args(argv)

    pages = all_pages()
    problems = [problem for page in pages for problem in page.problems]
    if problems:
        print("Fix the pages first:\n" + "\n".join(problems), file=sys.stderr)
        return 1

    def wanted(command: Command) -> bool:
        if command.output is None or args.only not in str(command.output.relative_to(ROOT)):
            return False
        return not (args.skip_suite and command.kind == "dry-run")

    servers = {}
    failed: list[Outcome] = []
    written = 0
    with tempfile.TemporaryDirectory(prefix="docs-outputs-") as tmp:
        try:
            for number, page in enumerate(pages):
                if not any(wanted(c) for c in page.commands):
                    continue
                sandbox = None
                for command in page.commands:
                    if command.kind == "http":
                        if not wanted(command):
                            continue
                        if command.step not in servers:
                            servers[command.step] = start_server(
                                find(command.step).path, log_dir=Path(tmp) / "logs")
                        outcome = run_http(command, servers[command.step].base_url)
                    elif command.kind == "dry-run":
                        if not wanted(command):
                            continue
                        # The test suite, for real, on the committed files.
                        suite = make_sandbox(Path(tmp) / f"suite-{number}-{command.line}", tracked_only=True)
                        outcome = run_shell(command, suite, timeout=1800)
                    else:
                        if sandbox is None:
                            sandbox = make_sandbox(Path(tmp) / f"page-{number}")
                        # Shell commands of a page run in order, even those that show nothing.
                        if command.kind == "serve" and not wanted(command):
                            continue
                        runner = run_serve if command.kind == "serve" else run_shell
                        outcome = runner(command, sandbox)
                        if not wanted(command):
                            continue
                    if not outcome.ok:
                        failed.append(outcome)
                        continue
                    command.output.parent.mkdir(parents=True, exist_ok=True)
                    command.output.write_text(outcome.output)
                    written += 1
                    print(f"wrote {command.output.relative_to(ROOT)}  ({command.where})", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    # Read the pages again: they may have changed while the commands ran.
    for path in orphans(all_pages()):
        print(f"no page shows {path.relative_to(ROOT)} any more: remove it (git rm) if that is right")
    for outcome in failed:
        print("FAILED " + outcome.report(), file=sys.stderr)
    print(f"{written} outputs written, {len(failed)} commands failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

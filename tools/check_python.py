"""Fail early, in plain words, when the Python that makes the environment is too old."""

import sys

# Runs on whatever python3 is, so that an old one gets this message, not a crash.
if sys.version_info < (3, 11):  # noqa: UP036
    found = ".".join(map(str, sys.version_info[:3]))
    sys.exit(f"This tutorial needs Python 3.11 or newer; `python3` here is {found}. "
             "Install a newer Python, or run: make run PYTHON=python3.12")
if sys.platform == "win32":
    sys.exit("Gunicorn does not run on Windows: use WSL (or the devcontainer) instead.")

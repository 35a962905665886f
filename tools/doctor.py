"""Is this machine ready for the workshop? `make doctor` runs this.

Standard library only, and written for old Pythons too, so that it runs
before the environment exists and can say in plain words what is missing.
Every check prints a line with ✔ or ✘, and how to fix what is wrong; a
missing environment is no fault but the next step (→), since make run
installs it. Exits 1 if something is wrong, 0 otherwise.

    python3 -m tools.doctor [--port 8000]
"""

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
READY = os.path.join(ROOT, ".venv", ".ready")
REQUIREMENTS = os.path.join(ROOT, "requirements.txt")
MINIMUM = (3, 11)

# Run by the environment's Python: start step 02, ask it two questions, stop it.
TRY_A_STEP = """
import json, sys, urllib.request
from harness.server import start_server
from harness.steps import find
with start_server(find("02").path, dirty_workers=2) as server:
    with urllib.request.urlopen(server.base_url + "/health", timeout=10) as response:
        assert json.load(response) == {"status": "ok"}, "/health did not answer ok"
    request = urllib.request.Request(server.base_url + "/chat/sync", data=b'{"prompt": "hello"}',
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.load(response)["response"].startswith("Hello"), "/chat/sync gave no answer"
"""


class Result:
    def __init__(self, ok, label, fix="", next_step=False):
        self.ok = ok
        self.label = label
        self.fix = fix
        # Not a fault, only what comes next: the line shows → and "Next:".
        self.next_step = next_step


def check_python(version=None):
    version = tuple(version or sys.version_info[:3])
    found = ".".join(str(part) for part in version)
    if version[:2] >= MINIMUM:
        return Result(True, f"Python {found} (3.11 or newer is needed)")
    return Result(False, f"Python {found} is too old: the tutorial needs 3.11 or newer",
                  "install a newer Python (python.org, your package manager, or pyenv), then run "
                  "make doctor PYTHON=python3.12")


def check_tool(name, why, fix):
    if shutil.which(name):
        return Result(True, f"{name} is installed ({why})")
    return Result(False, f"{name} is not installed ({why})", fix)


def check_os(system=None, release=None):
    system = system or platform.system()
    release = (release or platform.release()).lower()
    if system == "Linux":
        return Result(True, "Linux (WSL)" if "microsoft" in release else "Linux")
    if system == "Darwin":
        return Result(True, "macOS")
    if system == "Windows" or system.startswith(("CYGWIN", "MINGW", "MSYS")):
        return Result(False, "Windows: Gunicorn does not run on Windows",
                      "install WSL (in PowerShell: wsl --install), then clone and run the workshop inside it")
    return Result(False, f"{system}: the tutorial is tested on Linux and macOS only",
                  "use a Linux or macOS machine, or a Linux virtual machine")


def check_port(port):
    with socket.socket() as sock:
        # Gunicorn binds with SO_REUSEADDR too: only a real listener makes this fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return Result(False, f"Port {port} is busy: another program (a server?) listens on it",
                          f"stop that program, or use another port: make run PORT={port + 1}")
    return Result(True, f"Port {port} is free")


def check_environment():
    if not os.path.exists(READY):
        return Result(False, "The environment (.venv) is not installed yet",
                      "make run installs it first, or make venv alone (it needs the internet; without it, "
                      "ask for the wheelhouse and run: make offline-venv)", next_step=True)
    if os.path.getmtime(READY) < os.path.getmtime(REQUIREMENTS):
        return Result(False, "The environment (.venv) is older than requirements.txt",
                      "run: make venv   (it updates the environment)")
    probe = subprocess.run([VENV_PYTHON, "-c", "import gunicorn, fastapi"], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True)  # noqa: UP021 (old Pythons have no text=)
    if probe.returncode != 0:
        return Result(False, "The environment (.venv) is broken: " + probe.stdout.strip().splitlines()[-1],
                      "remove it and make it again: make clean venv")
    return Result(True, "The environment is installed (.venv)")


def check_a_step(timeout=120):
    try:
        probe = subprocess.run([VENV_PYTHON, "-c", TRY_A_STEP], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=timeout,
                               universal_newlines=True)  # noqa: UP021 (old Pythons have no text=)
    except subprocess.TimeoutExpired:
        return Result(False, f"Step 02 did not start and answer within {timeout} s",
                      "run make test STEP=02 to see more, or ask an instructor")
    if probe.returncode != 0:
        last = (probe.stdout.strip().splitlines() or ["no output"])[-1]
        return Result(False, "Step 02 did not start or answer: " + last,
                      "run make test STEP=02 to see more, or ask an instructor")
    return Result(True, "Step 02 starts, and answers /health and /chat/sync")


def main(argv):
    parser = argparse.ArgumentParser(description="Check that this machine is ready for the workshop.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000),
                        help="the port make run will use (default 8000)")
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")

    print("Checking this machine for the dirty-chat workshop...")
    results = []

    def show(result):
        results.append(result)
        if result.next_step:
            print(f"→ {result.label}\n  Next: {result.fix}")
        else:
            print("{} {}".format("✔" if result.ok else "✘", result.label))
            if not result.ok:
                print("  Fix: " + result.fix)
        sys.stdout.flush()

    show(check_python())
    show(check_tool("make", "it runs the workshop's commands",
                    "install it: sudo apt install make (Debian/Ubuntu), or xcode-select --install (macOS)"))
    show(check_tool("curl", "the pages try the server with it",
                    "install it: sudo apt install curl (Debian/Ubuntu), or brew install curl (macOS)"))
    show(check_os())
    show(check_port(args.port))
    environment = check_environment()
    show(environment)
    if environment.ok:
        show(check_a_step())
    else:
        print("- Skipped: starting a step (it needs the environment)")

    problems = sum(1 for result in results if not result.ok and not result.next_step)
    if problems:
        print("{} problem{} to fix: fix {}, then run make doctor again.".format(
            problems, "s" if problems > 1 else "", "them" if problems > 1 else "it"))
        return 1
    if not environment.ok:
        print("Nothing to fix: this machine is ready. Start with: make run (it installs the environment)")
        return 0
    print("All good: this machine is ready. Start with: make run")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

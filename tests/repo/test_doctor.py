"""`make doctor`: green on a ready machine, and a clear ✘ with a fix when a check fails."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys

from harness.server import ROOT, free_port

DOCTOR = ROOT / "tools" / "doctor.py"


def load_doctor():
    spec = importlib.util.spec_from_file_location("doctor", DOCTOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_doctor(*args: str) -> subprocess.CompletedProcess:
    # The doctor runs before the environment exists: with the machine's python3.
    python = "python3" if subprocess.run(["python3", "-c", ""]).returncode == 0 else sys.executable
    return subprocess.run([python, "-m", "tools.doctor", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)


def test_the_doctor_is_happy_on_a_ready_machine():
    result = run_doctor("--port", str(free_port()))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("✔") for line in lines) == 7, result.stdout
    assert "✘" not in result.stdout
    assert lines[-1] == "All good: this machine is ready. Start with: make run"


def test_a_busy_port_is_a_clear_failure():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_doctor("--port", str(port))
    assert result.returncode == 1
    assert f"✘ Port {port} is busy" in result.stdout
    assert f"Fix: stop that program, or use another port: make run PORT={port + 1}" in result.stdout
    assert "1 problem to fix" in result.stdout.splitlines()[-1]


def test_the_checks_explain_what_to_do():
    doctor = load_doctor()
    old = doctor.check_python((3, 10, 4))
    assert not old.ok and "3.10.4 is too old" in old.label and "PYTHON=python3.12" in old.fix
    assert doctor.check_python((3, 11, 0)).ok
    windows = doctor.check_os("Windows", "10")
    assert not windows.ok and "wsl --install" in windows.fix
    assert doctor.check_os("Linux", "5.15.0-microsoft-standard-WSL2").label == "Linux (WSL)"
    assert doctor.check_os("Darwin", "23.1.0").ok
    missing = doctor.check_tool("no-such-tool-here", "for a test", "install it")
    assert not missing.ok and missing.fix == "install it"


def test_a_missing_environment_says_to_run_make_venv(tmp_path, monkeypatch):
    doctor = load_doctor()
    monkeypatch.setattr(doctor, "READY", str(tmp_path / ".ready"))
    result = doctor.check_environment()
    assert not result.ok and "make venv" in result.fix and "make offline-venv" in result.fix


def test_a_fresh_clone_gets_the_next_step_not_a_failure(tmp_path):
    # A fresh clone has no .venv yet: make doctor is the first command the home page gives.
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "doctor.py").write_text(DOCTOR.read_text())
    (tmp_path / "requirements.txt").write_text((ROOT / "requirements.txt").read_text())
    python = "python3" if subprocess.run(["python3", "-c", ""]).returncode == 0 else sys.executable
    result = subprocess.run([python, str(tmp_path / "tools" / "doctor.py"), "--port", str(free_port())],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✘" not in result.stdout, result.stdout
    assert "→ The environment (.venv) is not installed yet" in result.stdout
    assert "Next: make run installs it first" in result.stdout
    last = result.stdout.splitlines()[-1]
    assert last.startswith("Nothing to fix: this machine is ready. Start with: make run"), last

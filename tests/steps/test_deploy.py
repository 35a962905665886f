"""Step 06's deployment files, tested as far as this machine allows: no
container engine runs here, so the commands they run are run in a clean venv."""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from harness.server import ROOT, LiveServer, free_port, wait_for_health

pytestmark = pytest.mark.since("06")


def dockerfile(step) -> list[tuple[str, str]]:
    """(instruction, argument) pairs of the step's Dockerfile."""
    pairs = []
    for line in (step.path / "Dockerfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, argument = line.strip().partition(" ")
            pairs.append((instruction.upper(), argument))
    return pairs


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==")
            found[name.strip().lower()] = version.strip()
    return found


def test_runtime_lock_matches_the_repository_lock(step):
    runtime = pins(step.path / "requirements.txt")
    everything = pins(ROOT / "requirements.txt")
    assert {"fastapi", "gunicorn", "prometheus-client", "limits"} <= runtime.keys()
    assert {name: everything.get(name) for name in runtime} == runtime


def test_the_image_commands_serve_the_step(step, tmp_path):
    """Do what the Dockerfile does, in a clean venv and a copy of the folder."""
    steps = dockerfile(step)
    runs = [arg for op, arg in steps if op == "RUN" and "pip install" in arg]
    assert runs == ["pip install --no-cache-dir -r requirements.txt"]
    command = json.loads(next(arg for op, arg in steps if op == "CMD"))
    assert command[:3] == ["gunicorn", "-c", "gunicorn_conf.py"]

    app = tmp_path / "app"
    shutil.copytree(step.path, app, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    # No pip of its own (installing one takes longer than the rest): this
    # environment's pip installs into it, with the image's arguments.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    program, *arguments = shlex.split(runs[0])
    assert program == "pip"
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *arguments]
    subprocess.run(pip, cwd=app, check=True, capture_output=True)

    port = free_port()
    command = [str(venv / "bin" / command[0]), *command[1:]]
    command[command.index("--bind") + 1] = f"127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command[:-1], "--name", f"deploy-test-{port}", command[-1]],
            cwd=app, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": "/usr/bin:/bin", "CHAT_API_KEY": "from-the-environment", "DIRTY_WORKERS": "1"},
        )
    with LiveServer(step_dir=app, port=port, proc=proc, log_path=log):
        wait_for_health(f"http://127.0.0.1:{port}", 60, proc)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/chat/sync",
            json={"prompt": "hello"},
            headers={"Authorization": "Bearer from-the-environment"},
            timeout=30,
        )
        assert answer.status_code == 200, log.read_text()
        assert answer.json()["response"].startswith("Hello")


def test_compose_runs_the_image_with_a_required_key(step):
    compose = yaml.safe_load((step.path / "compose.yaml").read_text())
    service = compose["services"]["chat"]
    assert service["build"] == "."
    exposed = [arg for op, arg in dockerfile(step) if op == "EXPOSE"]
    assert service["ports"] == [f"127.0.0.1:8000:{exposed[0]}"]
    assert service["environment"]["CHAT_API_KEY"].startswith("${CHAT_API_KEY:?")

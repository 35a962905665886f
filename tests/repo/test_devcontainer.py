"""The devcontainer, for those without Linux or macOS: it runs the README's commands."""

import json

from harness.server import ROOT


def test_devcontainer_runs_the_readme_commands():
    config = json.loads((ROOT / ".devcontainer" / "devcontainer.json").read_text())
    assert config["postCreateCommand"] == "make venv"
    assert 8000 in config["forwardPorts"]
    makefile = (ROOT / "Makefile").read_text()
    assert "\nvenv:" in makefile
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme and "devcontainer" in readme.lower()

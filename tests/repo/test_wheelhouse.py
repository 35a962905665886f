"""Bad Wi-Fi: `make wheelhouse` downloads the lock file's wheels, `make offline-venv`
installs them without the network.

The real targets run here, on a lock file cut down to two small pure-Python
packages pinned in requirements.txt, so that the test stays fast.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from harness.server import ROOT

# Small, pure Python, without dependencies of their own.
PACKAGES = ("six", "annotated-types")


def make(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["make", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def pinned(name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==\S+$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert match, f"{name} is no longer in requirements.txt: pick another small package"
    return match.group(0)


@pytest.fixture
def small_lock(tmp_path):
    lock = tmp_path / "requirements.txt"
    lock.write_text("\n".join(pinned(name) for name in PACKAGES) + "\n")
    return lock


def test_a_wheelhouse_installs_without_the_network(tmp_path, small_lock):
    wheelhouse = tmp_path / "wheelhouse"
    download = make("wheelhouse", f"REQUIREMENTS={small_lock}", f"WHEELHOUSE={wheelhouse}")
    if download.returncode != 0 and os.environ.get("CI", "").lower() != "true":
        pytest.skip(f"pip could not download from the package index here:\n{download.stderr[-1500:]}")
    assert download.returncode == 0, download.stdout + download.stderr
    wheels = sorted(p.name for p in wheelhouse.iterdir())
    assert len(wheels) == len(PACKAGES) and all(w.endswith(".whl") for w in wheels), wheels

    venv = tmp_path / "venv"
    install = make("offline-venv", f"VENV={venv}", f"REQUIREMENTS={small_lock}", f"WHEELHOUSE={wheelhouse}")
    assert install.returncode == 0, install.stdout + install.stderr
    assert "--no-index" in install.stdout
    assert (venv / ".ready").is_file()
    imported = subprocess.run([str(venv / "bin" / "python"), "-c", "import six, annotated_types"],
                              capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr


def test_offline_install_looks_nowhere_but_the_wheelhouse(tmp_path, small_lock):
    # An empty wheelhouse: with --no-index, pip must fail rather than reach the internet.
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    install = make("offline-venv", f"VENV={tmp_path / 'venv'}", f"REQUIREMENTS={small_lock}",
                   f"WHEELHOUSE={wheelhouse}")
    assert install.returncode != 0
    assert "No matching distribution found for six" in install.stdout + install.stderr
    assert not (tmp_path / "venv" / ".ready").exists()


def test_offline_venv_without_a_wheelhouse_says_what_to_do(tmp_path):
    install = make("offline-venv", f"VENV={tmp_path / 'venv'}", f"WHEELHOUSE={tmp_path / 'nowhere'}")
    assert install.returncode == 2
    assert "copy it from the instructor, or run make wheelhouse" in install.stdout
    assert not (tmp_path / "venv").exists()

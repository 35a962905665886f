"""What `make bench` runs: its settings (Options), the step it measures, its targets."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.steps import ROOT, find, last_core

OUT_DIR = ROOT / "docs" / "generated" / "bench"
# Server logs go here (git-ignored), so that a failed run can be read afterwards.
LOG_DIR = ROOT / "bench-output"
# The same prompt for every chat, so that stream durations compare.
PROMPT = "explain"
# The mixed scenario's servers: the step's config plus a record of where each chat ran.
BENCH_CONF = ROOT / "tools" / "bench_conf.py"
SERVED = re.compile(r"bench chat (\d+) served by (\d+) from ([\d.]+) to ([\d.]+)")
# What a workshop room asks, and how often: (prompt, thinking, weight).
ROOM = [
    ("hello!", False, 3),
    ("hi, who are you?", True, 1),
    ("explain dirty workers", False, 3),
    ("explain dirty workers", True, 2),
    ("how does streaming work?", False, 2),
    ("show me some code", False, 2),
    ("show me some code", True, 1),
    ("what can you do?", False, 1),
]
OUTCOMES = ("complete", "refused", "error", "cut_off", "other")
# What the dirty arbiter logs, through the steps' HangUps log filter, when a
# client's hang-up reached it and it cancelled that request on its dirty worker.
WORKER_STOPPED = "client hung up: the request on dirty worker"

# The targets for the final step as shipped: (key, figure, limit, unit).
TARGETS = [
    ("ttft_p95", "32 chats started together: time to first token, p95", 0.150, "s"),
    ("slowest_over_solo", "32 chats together: slowest stream / a solo stream", 1.3, "x"),
    ("pss", "memory of the process tree (sum of PSS) while serving them", 1024 * 1024, "KiB"),
    ("health_p99", "/health p99 while 64 streams run", 0.010, "s"),
    ("after_drop_ttft", "first token of the next chat after a drop (1 dirty worker)", 0.200, "s"),
    ("sockets_leaked", "sockets after 1,000 requests, half dropped, minus the idle count", 0, ""),
    ("burst_cut_off", "streams cut off in a burst of 4x capacity (every config)", 0, ""),
]


@dataclass
class Options:
    step_dir: Path
    configs: list[int]
    default_workers: int
    asgi_loop: str = "auto"
    repeat: int = 5
    quick: bool = False
    together: int = 32
    sweep: tuple[int, ...] = (8, 16)
    health_streams: int = 64
    burst_factor: int = 4
    drop_samples: int = 5
    socket_requests: int = 1000
    scenarios: frozenset[str] = frozenset(
        {"together", "sweep", "health", "burst", "drop", "sockets", "loop", "mixed"})
    prompt: str = PROMPT
    client: str = "raw"
    out_dir: Path = OUT_DIR
    plots: bool = True
    # A seconds budget for any one scenario: the run stops rather than hang.
    scenario_timeout: float = 180.0
    # The mixed scenario: chats in flight at most, dirty workers per admitted
    # chat, offered loads (fractions of what the admitted chats can serve),
    # chats per load, and the seed of the arrivals and prompts.
    mixed_admitted: int = 4
    mixed_ratios: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0)
    mixed_loads: tuple[float, ...] = (0.5, 0.8)
    mixed_chats: int = 60
    mixed_seed: int = 2026
    # Also run 1x with bench_conf's least-busy arbiter: what load-aware routing in gunicorn would give.
    mixed_least_busy: bool = True


def final_step() -> Path:
    """The final step as shipped: the last core step, or BENCH_STEP (a step or a folder)."""
    chosen = os.environ.get("BENCH_STEP", "")
    if chosen and Path(chosen).is_dir():
        return Path(chosen).resolve()
    return (find(chosen) if chosen else last_core()).path


def shipped_setting(step_dir: Path, name: str, default: str | None = None) -> str:
    """A setting of the step's gunicorn_conf.py, in this environment (`default` if it sets none)."""
    out = subprocess.run(
        [sys.executable, "-c", f"import gunicorn_conf; print(getattr(gunicorn_conf, {name!r}, {default!r}))"],
        cwd=step_dir, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(step_dir)},
    )
    return out.stdout.strip()

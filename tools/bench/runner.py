"""Running the configurations: a fresh server per dirty worker count, its scenarios,
the results, and the targets judged from them."""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
import time
from collections.abc import Callable
from dataclasses import replace

from harness.server import start_server
from tools.bench.clients import tree_sample
from tools.bench.options import LOG_DIR, TARGETS, Options
from tools.bench.scenarios import drop_then_next, load, run_mixed, sockets_after_drops, solo, warm_up
from tools.bench.stats import medians


def config_label(workers: int, default: int, loop: str | None = None) -> str:
    if loop:
        return f"{workers}, {loop} loop"
    return f"{workers} (shipped)" if workers == default else str(workers)


async def run_config(
    workers: int, opts: Options, log: Callable[[str], None], loop: str | None = None
) -> dict:
    """Every scenario that applies to one configuration, on one fresh server.

    `loop` overrides the step's asgi_loop: that variant only runs the figures
    the event loop affects (together and the 64 streams with /health).
    """
    default = workers == opts.default_workers and loop is None
    result: dict = {"dirty_workers": workers, "label": config_label(workers, opts.default_workers, loop),
                    "shipped": default, "asgi_loop": loop}
    log(f"[{result['label']}] starting a server with DIRTY_WORKERS={workers}")
    server = await asyncio.to_thread(
        start_server, opts.step_dir, env={"DIRTY_WORKERS": str(workers)}, dirty_workers=workers,
        log_dir=LOG_DIR, args=("--asgi-loop", loop) if loop else (),
    )
    try:
        result["idle"] = await asyncio.to_thread(tree_sample, server)
        await warm_up(server, workers, opts)
        result["idle_after_warm_up"] = await asyncio.to_thread(tree_sample, server)
        # The targets concern the shipped config: only its figures (and those
        # it is compared with on another loop) are repeated.
        repeat = opts.repeat if default or loop else 1
        solo_duration = None
        if opts.scenarios & {"together", "sweep", "health", "burst"}:
            log(f"[{result['label']}] solo x{repeat}")
            result["solo"] = await solo(server, opts, repeat)
            solo_duration = result["solo"]["duration"]
        if "together" in opts.scenarios:
            runs = []
            for i in range(repeat):
                log(f"[{result['label']}] {opts.together} chats together, run {i + 1}/{repeat}")
                runs.append(await load(server, opts.together, opts, solo_duration))
            result["together"] = {"runs": runs, **medians(runs)}
        if default and "sweep" in opts.scenarios:
            result["sweep"] = {}
            for count in opts.sweep:
                runs = []
                for i in range(opts.repeat):
                    log(f"[{result['label']}] sweep: {count} chats together, run {i + 1}/{opts.repeat}")
                    runs.append(await load(server, count, opts, solo_duration))
                result["sweep"][str(count)] = {"runs": runs, **medians(runs)}
        if (default or loop) and "health" in opts.scenarios:
            runs = []
            for i in range(opts.repeat):
                log(f"[{result['label']}] {opts.health_streams} streams + /health, run {i + 1}/{opts.repeat}")
                runs.append(await load(server, opts.health_streams, opts, solo_duration))
            result["health"] = {"runs": runs, **medians(runs)}
        if "burst" in opts.scenarios and not loop:
            count = opts.burst_factor * workers
            log(f"[{result['label']}] burst of {count} chats ({opts.burst_factor}x capacity)")
            result["burst"] = await load(server, count, opts, solo_duration, health=False)
        if workers == 1 and "drop" in opts.scenarios:
            samples = opts.drop_samples * opts.repeat
            log(f"[{result['label']}] drop a stream, time the next one ({samples} samples)")
            result["drop"] = await drop_then_next(server, opts)
        if default and "sockets" in opts.scenarios:
            log(f"[{result['label']}] {opts.socket_requests} chats, half dropped, then count sockets")
            result["sockets"] = await sockets_after_drops(server, workers, opts)
    finally:
        await asyncio.to_thread(server.stop)
    return result


async def run_bench(opts: Options, log: Callable[[str], None] = print) -> dict:
    LOG_DIR.mkdir(exist_ok=True)
    started = time.monotonic()

    def stamped(line: str) -> None:
        log(f"[{time.monotonic() - started:4.0f} s] {line}")

    configs = []
    # The mixed scenario starts servers of its own; the others share one per config.
    per_config = opts.scenarios - {"mixed"}
    for workers in opts.configs if per_config else ():
        configs.append(await run_config(workers, opts, stamped))
    if "loop" in opts.scenarios and opts.default_workers in opts.configs:
        configs.append(await run_config(opts.default_workers, opts, stamped, loop="asyncio"))
    # The drop scenario needs one dirty worker: a run without that config gets its own.
    if "drop" in opts.scenarios and not any("drop" in c for c in configs):
        helper = await run_config(1, replace(opts, scenarios=frozenset({"drop"})), stamped)
        configs.append({**helper, "helper": True})
    mixed = await run_mixed(opts, stamped) if "mixed" in opts.scenarios else None
    results = {
        "meta": metadata(opts, time.monotonic() - started),
        "configs": [c for c in configs if not c.get("helper")],
        "drop": next((c["drop"] for c in configs if "drop" in c), None),
        "targets": evaluate_targets(configs),
    }
    if mixed is not None:
        mixed["meta"] = {key: results["meta"][key] for key in ("date", "cores", "python", "gunicorn", "step")}
        results["mixed"] = mixed
    return results


def merge_results(earlier: dict, new: dict) -> dict:
    """Earlier results with the figures of a run of some scenarios only (`--merge`)."""
    merged = dict(earlier)
    if new["configs"]:
        merged.update({key: new[key] for key in ("meta", "configs", "drop", "targets")})
    if "mixed" in new:
        merged["mixed"] = new["mixed"]
    return merged


def metadata(opts: Options, seconds: float) -> dict:
    import gunicorn

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "gunicorn": gunicorn.__version__,
        "step": opts.step_dir.name,
        "shipped_dirty_workers": opts.default_workers,
        "asgi_loop": opts.asgi_loop,
        "configs": opts.configs,
        "prompt": opts.prompt,
        "client": opts.client,
        "repeat": opts.repeat,
        "quick": opts.quick,
        "together": opts.together,
        "burst_factor": opts.burst_factor,
        "seconds": round(seconds, 1),
        "command": "make bench" + (" BENCH_QUICK=1" if opts.quick else ""),
    }


def evaluate_targets(configs: list[dict]) -> list[dict]:
    """Each target with the measured figure (a median) and whether it is met."""
    shipped = next((c for c in configs if c.get("shipped")), {})
    drop = next((c["drop"] for c in configs if "drop" in c), {})
    bursts = [c["burst"] for c in configs if "burst" in c]
    measured = {
        "ttft_p95": shipped.get("together", {}).get("ttft_p95"),
        "slowest_over_solo": shipped.get("together", {}).get("slowest_over_solo"),
        "pss": shipped.get("together", {}).get("pss"),
        "health_p99": shipped.get("health", {}).get("health_p99"),
        "after_drop_ttft": drop.get("after_drop_ttft"),
        "sockets_leaked": shipped.get("sockets", {}).get("sockets_leaked"),
        "burst_cut_off": sum(b["cut_off"] for b in bursts) if bursts else None,
    }
    rows = []
    for key, figure, limit, unit in TARGETS:
        value = measured[key]
        if value is None:
            met = None
        elif key == "sockets_leaked":
            met = value == limit
        else:
            met = value <= limit
        rows.append({"key": key, "figure": figure, "limit": limit, "unit": unit, "value": value, "met": met})
    return rows

"""The command line of `make bench`: `python -m tools.bench [--quick] [--configs 1,8,shipped] ...`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from harness.steps import ROOT, find
from tools import bench
from tools.bench.clients import CLIENTS, health_probe
from tools.bench.options import OUT_DIR, Options, final_step, shipped_setting
from tools.bench.report import write_outputs
from tools.bench.runner import merge_results, run_bench
from tools.bench.stats import rounded


def options_from(args: argparse.Namespace) -> Options:
    step_dir = Path(args.step).resolve() if args.step and Path(args.step).is_dir() else (
        find(args.step).path if args.step else final_step())
    default = int(shipped_setting(step_dir, "dirty_workers"))
    quick = args.quick
    if args.configs:
        configs = [default if c == "shipped" else int(c) for c in args.configs.split(",")]
    else:
        # A quick run keeps the shipped config; the drop scenario starts its own 1-worker server.
        configs = [default] if quick else [1, 2, 4, 8, default]
    configs = sorted(set(configs))
    opts = Options(step_dir=step_dir, configs=configs, default_workers=default,
                   asgi_loop=shipped_setting(step_dir, "asgi_loop", default="auto"),
                   repeat=args.repeat or (1 if quick else 5), quick=quick,
                   out_dir=Path(args.out).resolve() if args.out else OUT_DIR)
    if quick:
        opts = replace(opts, sweep=(), socket_requests=100, drop_samples=3,
                       scenarios=opts.scenarios - {"loop"}, mixed_ratios=(1.0, 2.0), mixed_loads=(0.8,),
                       mixed_chats=8, mixed_least_busy=False)
    opts = replace(opts, client=args.client)
    if args.scenarios:
        opts = replace(opts, scenarios=frozenset(args.scenarios.split(",")))
    return opts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=bench.__doc__.split("\n")[0])
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    parser.add_argument("--quick", action="store_true", default=quick)
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("REPEAT") or 0))
    parser.add_argument("--step", default=os.environ.get("BENCH_STEP", ""))
    parser.add_argument("--out", default=os.environ.get("BENCH_OUT", ""))
    parser.add_argument("--configs", help="dirty worker counts, e.g. 1,8,shipped (default 1,2,4,8,shipped)")
    parser.add_argument("--scenarios", help="a subset of together,sweep,health,burst,drop,sockets,loop,mixed")
    parser.add_argument("--client", choices=sorted(CLIENTS), default=os.environ.get("BENCH_CLIENT", "raw"))
    parser.add_argument("--merge", action="store_true",
                        help="put this run's figures into the results.json already in --out, keep the rest")
    parser.add_argument("--render", action="store_true",
                        help="only redo table.md and the plots from the results.json already in --out")
    parser.add_argument("--health-probe", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=0.02, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.health_probe:
        health_probe(args.health_probe, args.interval)
        return 0
    if args.render:
        out_dir = Path(args.out).resolve() if args.out else OUT_DIR
        print(write_outputs(json.loads((out_dir / "results.json").read_text()), out_dir))
        return 0
    opts = options_from(args)
    print(f"Benchmarking {opts.step_dir.name}: dirty workers {opts.configs}, shipped {opts.default_workers}, "
          f"repeat {opts.repeat}{' (quick)' if opts.quick else ''}", flush=True)
    results = rounded(asyncio.run(run_bench(opts, lambda line: print(line, flush=True))))
    if args.merge and (opts.out_dir / "results.json").is_file():
        results = merge_results(json.loads((opts.out_dir / "results.json").read_text()), results)
    table = write_outputs(results, opts.out_dir, opts.plots)
    print()
    print(table)
    print(f"Wrote {opts.out_dir.relative_to(ROOT) if opts.out_dir.is_relative_to(ROOT) else opts.out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

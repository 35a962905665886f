"""The report: table.md (also printed) and the charts, from the results."""

from __future__ import annotations

import json
from pathlib import Path

from tools.bench.options import OUTCOMES
from tools.bench.stats import rounded


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f} ms"


def mib(kib: float | None) -> str:
    return "–" if kib is None else f"{kib / 1024:.0f} MiB"


def times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def num(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def show_target(row: dict) -> tuple[str, str, str]:
    unit, limit, value = row["unit"], row["limit"], row["value"]
    if unit == "s":
        shown = (f"≤ {ms(limit)}", ms(value))
    elif unit == "x":
        shown = (f"≤ {limit}×", times(value))
    elif unit == "KiB":
        shown = (f"≤ {limit / 1024 / 1024:.0f} GiB", mib(value))
    else:
        shown = (f"{limit}", num(value))
    verdict = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
    return (*shown, verdict)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(results: dict) -> str:
    """The tables of table.md (and of the terminal), from results.json's data."""
    meta = results["meta"]
    parts = [
        f"Measured {meta['date']} on {meta['cores']} cores, Python {meta['python']}, "
        f"gunicorn {meta['gunicorn']}, step `{meta['step']}` ({meta['shipped_dirty_workers']} dirty "
        f"workers as shipped), prompt \"{meta['prompt']}\", {meta['client']} client, "
        f"medians of {meta['repeat']} runs for the shipped config, one run for the others. "
        f"Reproduce with `{meta['command']}` ({meta['seconds']:.0f} s).",
    ]
    parts.append(
        "### Targets (the final step as shipped)\n\n"
        + md_table(["figure", "target", "measured", "met"],
                   [[row["figure"], *show_target(row)] for row in results["targets"]])
    )
    configs = results["configs"]
    together = [c for c in configs if "together" in c]
    if together:
        count = meta["together"]
        rows = []
        for c in together:
            t = c["together"]
            rows.append([
                c["label"], f"{num(t['complete'])}/{num(t['streams'])}", num(t["refused"]),
                ms(t["ttft_p50"]), ms(t["ttft_p95"]), ms(t["ttft_max"]), times(t["slowest_over_solo"]),
                f"{ms(t['gap_p50'])} / {ms(t['gap_p95'])}",
                f"{ms(t.get('health_p50'))} / {ms(t.get('health_p99'))}",
                mib(t["pss"]), mib(t["rss"]),
                f"{num(c['idle_after_warm_up']['sockets'])} / {num(t['sockets_peak'])}",
            ])
        parts.append(
            f"### {count} chats started together, side by side\n\n"
            + md_table(["dirty workers", "complete", "503", "TTFT p50", "TTFT p95", "TTFT max",
                        "slowest / solo", "token gap p50 / p95", "/health p50 / p99",
                        "PSS", "RSS", "sockets idle / load"], rows)
            + "\n\nTTFT counts from the request to the first non-empty token, waiting in line"
            " included. The model itself pauses 30–80 ms before every word, the first one too."
        )
    shipped = next((c for c in configs if c["shipped"]), None)
    if shipped and ("sweep" in shipped or "health" in shipped):
        points = [("1 (solo)", {"ttft_p50": shipped["solo"]["ttft"], "ttft_p95": None,
                                "slowest_over_solo": 1.0})] if "solo" in shipped else []
        points += [(n, run) for n, run in shipped.get("sweep", {}).items()]
        if "together" in shipped:
            points.append((str(meta["together"]), shipped["together"]))
        if "health" in shipped:
            points.append((str(shipped["health"]["streams"]), shipped["health"]))
        points.sort(key=lambda p: int(str(p[0]).split()[0]))
        rows = [[str(n), ms(p["ttft_p50"]), ms(p["ttft_p95"]), times(p["slowest_over_solo"]),
                 ms(p.get("health_p99")), ms(p.get("health_p99_all_started")), ms(p.get("loop_lag_max"))]
                for n, p in points]
        parts.append(
            f"### Concurrency, {shipped['label']} dirty workers\n\n"
            + md_table(["chats at once", "TTFT p50", "TTFT p95", "slowest / solo", "/health p99",
                        "/health p99 once all have started", "client loop lag max"], rows)
            + "\n\nThe /health column counts every probe from the moment the chats are sent;"
            " the next one only those sent once every chat has heard from the server (its first"
            " word or its place in line), when the burst of arrivals is over."
        )
    if shipped and "together" in shipped:
        t = shipped["together"]
        cpu = {f"{role} ({shipped['label'] if role == 'dirty' else 1})": t[f"cpu_{role}"]
               for role in ("http", "arbiter", "dirty", "master")}
        cpu["bench client"] = t["client_cpu"]
        cpu["/health probe"] = t.get("probe_cpu")
        rows = [[role, f"{sec:.2f} s", f"{100 * sec / (t['wall'] * meta['cores']):.0f} %"]
                for role, sec in cpu.items() if sec is not None]
        parts.append(
            f"### Where the CPU goes: {meta['together']} chats together, {shipped['label']} dirty workers\n\n"
            + md_table(["processes", f"CPU in {t['wall']:.1f} s", f"of {meta['cores']} cores"], rows)
            + f"\n\nThe bench client's event loop woke up to {ms(t['loop_lag_max'])} late"
            f" (p99 {ms(t['loop_lag_p99'])}): its share of any delay above."
        )
    other_loops = [c for c in configs if c.get("asgi_loop") and "together" in c]
    if shipped and "together" in shipped and other_loops:
        rows = [[f"{meta.get('asgi_loop', 'auto')} (shipped)" if c["shipped"] else c["asgi_loop"],
                 ms(c["together"]["ttft_p95"]), ms(c["together"].get("health_p99")),
                 ms(c.get("health", {}).get("health_p99")),
                 f"{100 * c['together']['cpu_http'] / c['together']['wall']:.0f} %"]
                for c in [shipped, *other_loops]]
        parts.append(
            f"### The HTTP worker's event loop, {shipped['label']} dirty workers\n\n"
            + md_table(["asgi_loop", f"TTFT p95, {meta['together']} together",
                        f"/health p99, {meta['together']} streams",
                        f"/health p99, {shipped.get('health', {}).get('streams', '–')} streams",
                        f"HTTP worker CPU, {meta['together']} streams (of one core)"], rows)
        )
    bursts = [c for c in configs if "burst" in c]
    if bursts:
        rows = [[c["label"], num(c["burst"]["streams"]), *(num(c["burst"][o]) for o in OUTCOMES),
                 ms(c["burst"]["ttft_p50"]), ms(c["burst"]["ttft_max"]), ms(ideal_last_ttft(c, meta))]
                for c in bursts]
        parts.append(
            f"### A burst of {meta['burst_factor']}× capacity (one run)\n\n"
            + md_table(["dirty workers", "chats", "complete", "503", "error event", "cut off", "other",
                        "TTFT p50", "TTFT max", "TTFT max if no worker idled"], rows)
            + "\n\nThe line holds 4 waiting chats per dirty worker, so a 4× burst fits in it:"
            " it tests waiting, and a 503 only appears beyond 5×. The last column is"
            f" {meta['burst_factor'] - 1} solo answers plus a solo first token: what the last chat"
            " would wait if each chat took the first free worker."
        )
    drop = results.get("drop")
    if drop:
        parts.append(
            "### A dropped stream, 1 dirty worker\n\n"
            + md_table(["samples", "first token, idle", "first token, right after a drop", "worst",
                        "over 1 s"],
                       [[num(drop["samples"]), ms(drop["idle_ttft"]), ms(drop["after_drop_ttft"]),
                         ms(drop["after_drop_max"]), num(drop.get("after_drop_over_1s"))]])
        )
    if shipped and "sockets" in shipped:
        s = shipped["sockets"]
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(s["outcomes"].items()))
        parts.append(
            f"### Sockets, {shipped['label']} dirty workers\n\n"
            + md_table(["requests", "at once", "outcomes", "dirty worker stopped", "idle", "peak", "after",
                        "back to idle in"],
                       [[num(s["requests"]), num(s["concurrency"]), outcomes, num(s.get("worker_stopped")),
                         num(s["idle"]), num(s["peak"]), num(s["after"]), ms(s["seconds_to_idle"])]])
            + "\n\n\"Dirty worker stopped\" counts the dirty worker's own log line for a stream"
            " whose reader went away: it should equal the dropped count."
        )
    if "mixed" in results:
        parts.append(render_mixed(results["mixed"]))
    return "\n\n".join(parts) + "\n"


def render_mixed(mixed: dict) -> str:
    """The mixed scenario's table: one row per ratio and load."""
    meta = mixed["meta"]
    rows = []
    for run in sorted(mixed["runs"], key=lambda r: (r["load"], r.get("routing") == "least-busy", r["ratio"])):
        least_busy = ", least-busy arbiter" if run.get("routing") == "least-busy" else ""
        rows.append([
            f"{run['load']:.0%}", f"{run['workers']} ({run['ratio']:g}×){least_busy}",
            f"{num(run['complete'])}/{num(run['chats'])}",
            f"{ms(run['ttft_p50'])} / {ms(run['ttft_p95'])} / {ms(run['ttft_p99'])}",
            f"{ms(run['ideal_ttft_p50'])} / {ms(run['ideal_ttft_p95'])} / {ms(run['ideal_ttft_p99'])}",
            num(run["collisions"]), f"{ms(run['collision_wait_p50'])} / {ms(run['collision_wait_max'])}",
            mib(run["pss_idle"]),
        ])
    return (
        f"### A room's mix, arriving at random, {mixed['admitted']} chats admitted at once\n\n"
        f"Measured {meta['date']} on {meta['cores']} cores, gunicorn {meta['gunicorn']},"
        f" step `{meta['step']}`; {mixed['chats_per_load']} chats per load (seed {mixed['seed']}),"
        " the same arrivals for every ratio;"
        f" a mean answer of {mixed['mean_answer']:.1f} s. Reproduce with"
        f" `.venv/bin/python -m tools.bench --scenarios mixed --merge` ({mixed['seconds']:.0f} s).\n\n"
        + md_table(["load", "dirty workers", "complete", "TTFT p50 / p95 / p99",
                    "ideal least-busy p50 / p95 / p99", "collisions", "wait behind a busy worker p50 / max",
                    "PSS idle"], rows)
        + "\n\nTTFT counts from the chat's arrival, its wait in the client for one of the admitted"
        " places included. A collision is a chat that queued behind a busy dirty worker while another"
        " was idle (the dirty worker's own record of when it answered which chat). The ideal column"
        " replays the same arrivals through a first-come line whose admitted chats always find an idle"
        " worker, with each chat's measured answer time. The least-busy arbiter rows run gunicorn's"
        " arbiter patched (tools/bench_conf.py, for measurement only) to pick the worker with the fewest"
        " requests: what load-aware routing in gunicorn would give."
    )


def ideal_last_ttft(config: dict, meta: dict) -> float | None:
    solo_run = config.get("solo")
    if not solo_run:
        return None
    return (meta["burst_factor"] - 1) * solo_run["duration"] + solo_run["ttft"]


def plot(results: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [c for c in results["configs"] if "together" in c and not c.get("asgi_loop")]
    shipped = next((c for c in results["configs"] if c["shipped"]), None)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    if configs:
        labels = [c["label"] for c in configs]
        x = range(len(configs))
        for key, name, style in (("ttft_p50", "p50", "o-"), ("ttft_p95", "p95", "s--")):
            ax.plot(x, [(c["together"][key] or 0) * 1000 for c in configs], style, label=name)
        ax.set_xticks(list(x), labels)
        ax.set_yscale("log")
        ax.axhline(150, color="grey", linestyle=":", label="target p95 (shipped)")
        ax.set_xlabel("dirty workers")
        ax.set_ylabel("time to first token (ms)")
        ax.set_title(f"{results['meta']['together']} chats started together")
        ax.legend()
    ax = axes[1]
    if shipped and shipped.get("solo"):
        points = [(1, shipped["solo"]["ttft"], shipped["solo"]["ttft"])]
        for n, run in shipped.get("sweep", {}).items():
            points.append((int(n), run["ttft_p50"], run["ttft_p95"]))
        for key in ("together", "health"):
            if key in shipped:
                points.append((shipped[key]["streams"], shipped[key]["ttft_p50"], shipped[key]["ttft_p95"]))
        points = sorted(p for p in points if None not in p)
        ax.plot([p[0] for p in points], [p[1] * 1000 for p in points], "o-", label="p50")
        ax.plot([p[0] for p in points], [p[2] * 1000 for p in points], "s--", label="p95")
        ax.axvline(shipped["dirty_workers"], color="grey", linestyle=":", label="dirty workers")
        ax.set_xscale("log", base=2)
        ax.set_xticks([p[0] for p in points], [str(p[0]) for p in points])
        ax.set_yscale("log")
        ax.set_xlabel("chats at once")
        ax.set_ylabel("time to first token (ms)")
        ax.set_title(f"{shipped['label']} dirty workers")
        ax.legend()
    fig.suptitle(f"Time to first token, step {results['meta']['step']}")
    fig.tight_layout()
    fig.savefig(out_dir / "ttft_by_workers.png", dpi=100, metadata={"Software": None})
    plt.close(fig)

    bursts = [c for c in results["configs"] if "burst" in c]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bottom = [0] * len(bursts)
    colors = {"complete": "tab:green", "refused": "tab:orange", "error": "tab:red",
              "cut_off": "black", "other": "tab:grey"}
    for outcome in OUTCOMES:
        counts = [c["burst"][outcome] for c in bursts]
        ax.bar([c["label"] for c in bursts], counts, bottom=bottom, label=outcome.replace("_", " "),
               color=colors[outcome])
        bottom = [b + n for b, n in zip(bottom, counts, strict=True)]
    ax.set_xlabel("dirty workers")
    ax.set_ylabel("chats")
    ax.set_title(f"A burst of {results['meta']['burst_factor']}× capacity: what became of each chat")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "burst.png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def plot_mixed(mixed: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every_run = mixed["runs"]
    runs = [run for run in every_run if run.get("routing", "round-robin") == "round-robin"]
    least_busy = [run for run in every_run if run.get("routing") == "least-busy"]
    loads = sorted({run["load"] for run in runs})
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    ax = axes[0]
    for load, color in zip(loads, ("tab:blue", "tab:orange", "tab:green"), strict=False):
        at = sorted((r for r in runs if r["load"] == load), key=lambda r: r["ratio"])
        ratios = [r["ratio"] for r in at]
        ax.plot(ratios, [r["ttft_p95"] * 1000 for r in at], "o-", color=color,
                label=f"{load:.0%} load, measured")
        ax.plot(ratios, [r["ideal_ttft_p95"] * 1000 for r in at], "s:", color=color,
                label=f"{load:.0%} load, ideal least-busy")
        patched = [r for r in least_busy if r["load"] == load]
        ax.plot([r["ratio"] for r in patched], [r["ttft_p95"] * 1000 for r in patched], "*", color=color,
                markersize=14, label=f"{load:.0%} load, least-busy arbiter")
    ax.set_xticks(sorted({r["ratio"] for r in runs}))
    ax.set_xlabel("dirty workers per admitted chat")
    ax.set_ylabel("time to first token, p95 (ms)")
    ax.set_title("First token, p95")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax = axes[1]
    width = 0.1
    for offset, (load, color) in enumerate(zip(loads, ("tab:blue", "tab:orange", "tab:green"), strict=False)):
        at = sorted((r for r in runs if r["load"] == load), key=lambda r: r["ratio"])
        shift = (offset - (len(loads) - 1) / 2) * width
        ax.bar([r["ratio"] + shift for r in at], [r["collisions"] for r in at],
               width, color=color, label=f"collisions, {load:.0%} load")
    ax.set_xticks(sorted({r["ratio"] for r in runs}))
    ax.set_xlabel("dirty workers per admitted chat")
    ax.set_ylabel(f"chats (of {mixed['chats_per_load']}) behind a busy worker")
    memory = ax.twinx()
    at = sorted({r["ratio"]: r for r in runs}.values(), key=lambda r: r["ratio"])
    memory.plot([r["ratio"] for r in at], [r["pss_idle"] / 1024 for r in at], "kD--", label="PSS, idle")
    memory.set_ylabel("server memory, PSS (MiB)")
    memory.set_ylim(bottom=0)
    handles = [h for a in (ax, memory) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], fontsize="small", loc="center right")
    ax.set_title("Collisions, and what the workers cost")
    fig.suptitle(f"A room's mix at random, {mixed['admitted']} chats admitted, step {mixed['meta']['step']}")
    fig.tight_layout()
    fig.savefig(out_dir / "mixed.png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def write_outputs(results: dict, out_dir: Path, plots: bool = True) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = render_markdown(results)
    banner = "<!-- generated by `make bench` (tools/bench): do not edit -->\n\n"
    (out_dir / "table.md").write_text(banner + table)
    (out_dir / "results.json").write_text(json.dumps(rounded(results), indent=1) + "\n")
    if plots:
        plot(results, out_dir)
        if "mixed" in results:
            plot_mixed(results["mixed"], out_dir)
    return table

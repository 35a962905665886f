"""The scenarios: what each one does to a live server, and the figures it keeps."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from harness.procs import cpu_seconds, process_roles, socket_count
from harness.server import LiveServer, start_server, step_modules
from tools.bench.clients import (
    ChatResult,
    HealthProbe,
    chats_at_once,
    classify,
    new_client,
    tree_sample,
    watch_loop,
)
from tools.bench.options import BENCH_CONF, LOG_DIR, OUTCOMES, ROOM, SERVED, WORKER_STOPPED, Options
from tools.bench.stats import median, medians, percentile, rounded


def summarize(results: list[ChatResult], solo_duration: float | None = None) -> dict:
    """The figures of one load: outcomes, first tokens, durations, gaps."""
    outcomes = Counter(classify(r) for r in results)
    ttft = [r.first_token_at for r in results if r.first_token_at is not None]
    complete = [r for r in results if classify(r) == "complete"]
    durations = [r.duration for r in complete]
    gaps = [gap for r in complete for gap in r.gaps]
    slowest = max(durations) if durations else None
    return {
        "streams": len(results),
        **{outcome: outcomes.get(outcome, 0) for outcome in OUTCOMES},
        "ttft_p50": percentile(ttft, 50),
        "ttft_p95": percentile(ttft, 95),
        "ttft_max": max(ttft) if ttft else None,
        "slowest": slowest,
        "slowest_over_solo": slowest / solo_duration if slowest and solo_duration else None,
        "gap_p50": percentile(gaps, 50),
        "gap_p95": percentile(gaps, 95),
    }


async def load(server: LiveServer, count: int, opts: Options, solo_duration: float | None,
               *, health: bool = True) -> dict:
    """`count` chats started at once; /health polled meanwhile; the tree sampled."""
    roles = process_roles(server.pid)
    cpu_before, client_before = cpu_seconds(roles), time.process_time()
    probe = await HealthProbe.start(server.base_url) if health else None
    stop = asyncio.Event()
    lag_task = asyncio.create_task(watch_loop(stop))
    samples = []

    async def sample_tree():
        # A few samples while the streams run; each takes some 60 ms of process inspection.
        while True:
            await asyncio.sleep(1.0)
            samples.append(await asyncio.to_thread(tree_sample, server))

    sampler = asyncio.create_task(sample_tree())
    started = time.monotonic()
    try:
        results = await chats_at_once(server.base_url, count, opts)
    finally:
        wall = time.monotonic() - started
        sampler.cancel()
        stop.set()
        lags = await lag_task
        health_data = await probe.stop() if probe else None
    cpu_after, client_cpu = cpu_seconds(roles), time.process_time() - client_before
    by_role = Counter()
    for pid, role in roles.items():
        if pid in cpu_before and pid in cpu_after:
            by_role[role] += cpu_after[pid] - cpu_before[pid]
    summary = summarize(results, solo_duration)
    summary.update(
        wall=wall,
        pss=max((s["pss"] for s in samples), default=None),
        rss=max((s["rss"] for s in samples), default=None),
        sockets_peak=max((s["sockets"] for s in samples), default=None),
        loop_lag_p99=percentile(lags, 99),
        loop_lag_max=max(lags, default=None),
        client_cpu=client_cpu,
        **{f"cpu_{role}": by_role.get(role, 0.0) for role in ("master", "http", "arbiter", "dirty")},
    )
    if health_data is not None:
        # Once every chat has heard from the server (a word, or its place in
        # line), the burst of arrivals is over: what remains is streaming.
        all_started = max((r.events[0].at for r in results if r.events), default=started)
        probes = zip(health_data["sent"], health_data["latencies"], strict=True)
        streaming = [latency for at, latency in probes if at > all_started]
        summary.update(
            health_samples=len(health_data["latencies"]),
            health_errors=health_data["errors"],
            health_p50=percentile(health_data["latencies"], 50),
            health_p99=percentile(health_data["latencies"], 99),
            health_p99_all_started=percentile(streaming, 99),
            health_max=max(health_data["latencies"], default=None),
            probe_cpu=health_data["cpu"],
        )
    summary["ttft"] = [r.first_token_at for r in results if r.first_token_at is not None]
    return summary


async def solo(server: LiveServer, opts: Options, repeat: int) -> dict:
    """One chat at a time on an idle server, `repeat` times."""
    runs = []
    async with new_client(server.base_url, 1, opts.client) as http:
        for _ in range(repeat):
            result = await asyncio.wait_for(http.chat(opts.prompt), opts.scenario_timeout)
            if classify(result) != "complete":
                raise RuntimeError(f"a solo chat ended {classify(result)}: {result.transport_error}")
            runs.append({"ttft": result.first_token_at, "duration": result.duration,
                         "gap_p50": percentile(result.gaps, 50), "gap_p95": percentile(result.gaps, 95)})
    return {"runs": runs, **medians(runs)}


async def warm_up(server: LiveServer, workers: int, opts: Options) -> None:
    """One chat per dirty worker (the arbiter takes them in turn), all at once."""
    results = await chats_at_once(server.base_url, workers, opts)
    bad = [classify(r) for r in results if classify(r) != "complete"]
    if bad:
        raise RuntimeError(f"warm-up chats failed: {bad}")


async def drop_then_next(server: LiveServer, opts: Options) -> dict:
    """With one dirty worker: how soon the next chat starts after a hang-up.

    Each sample pairs an idle first token with the first token of a chat sent
    right after another client dropped its stream, both through the same client.
    """
    settle = 0.5  # the worker drops an abandoned answer within one token gap
    idle, after = [], []
    async with new_client(server.base_url, 2, opts.client) as http:
        for _ in range(opts.drop_samples * opts.repeat):
            first = await http.chat(opts.prompt, stop_after_tokens=1)
            idle.append(first.first_token_at)
            await asyncio.sleep(settle)
            dropped = await http.chat(opts.prompt, stop_after_tokens=3)
            if not dropped.dropped:
                raise RuntimeError(f"the stream to drop ended early: {classify(dropped)}")
            following = await http.chat(opts.prompt, stop_after_tokens=1)
            after.append(following.first_token_at)
            await asyncio.sleep(settle)
    per_run = [after[i::opts.repeat] for i in range(opts.repeat)]
    return {
        "samples": len(after),
        "idle_ttft": median(idle),
        "after_drop_ttft": median(median(run) for run in per_run),
        "after_drop_max": max((a for a in after if a is not None), default=None),
        # A next chat that waited a whole answer, or the line's 5 s update, is worth a look.
        "after_drop_over_1s": sum(1 for a in after if a is not None and a > 1.0),
        "idle": idle,
        "after": after,
    }


async def sockets_after_drops(server: LiveServer, workers: int, opts: Options) -> dict:
    """`socket_requests` chats, every other one dropped after two tokens; then
    the tree's socket count must come back to its idle value."""
    idle = await asyncio.to_thread(socket_count, server.pids())
    log_start = len(server.log())
    concurrency = 2 * workers
    gate = asyncio.Semaphore(concurrency)
    outcomes = Counter()
    peak = idle

    async def one(http, index):
        async with gate:
            result = await http.chat(opts.prompt, stop_after_tokens=2 if index % 2 == 0 else None)
            outcomes["dropped" if result.dropped else classify(result)] += 1

    async def watch():
        nonlocal peak
        while True:
            await asyncio.sleep(1.0)
            peak = max(peak, await asyncio.to_thread(socket_count, server.pids()))

    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    try:
        async with new_client(server.base_url, concurrency, opts.client) as http:
            await asyncio.wait_for(
                asyncio.gather(*(one(http, i) for i in range(opts.socket_requests))),
                opts.scenario_timeout,
            )
    finally:
        watcher.cancel()
    # Drops may close the arbiter's link to a dirty worker, reopened on its
    # next request: one more chat per worker makes the count comparable.
    await warm_up(server, workers, opts)
    wall = time.monotonic() - started
    waited_from = time.monotonic()
    deadline = waited_from + 5.0
    while (count := socket_count(server.pids())) != idle and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    # One line per hang-up that reached the dirty arbiter (see WORKER_STOPPED).
    stopped = server.log()[log_start:].count(WORKER_STOPPED)
    return {
        "requests": opts.socket_requests,
        "concurrency": concurrency,
        "outcomes": dict(outcomes),
        "worker_stopped": stopped,
        "idle": idle,
        "peak": peak,
        "after": count,
        "sockets_leaked": count - idle,
        "seconds_to_idle": time.monotonic() - waited_from if count == idle else None,
        "wall": wall,
    }


# --------------------------------------------------------------------------
# The mixed scenario: a room's prompts, arriving at random
# --------------------------------------------------------------------------


@dataclass
class Arrival:
    """One chat of the mixed scenario: when it arrives (seconds from the start) and what it asks."""

    tag: int
    at: float
    prompt: str
    thinking: bool


def expected_answer_seconds(step_dir: Path, prompt: str, thinking: bool) -> float:
    """How long the step's model takes, on average, to answer a prompt (from its own constants)."""
    with step_modules(step_dir) as load_module:
        model = load_module("chat_app")
        words = len(model.split_tokens(model.pick_answer(prompt)))
        seconds = words * sum(model.WORD_DELAY) / 2
        if thinking and hasattr(model, "THINKING_DOTS"):
            seconds += model.THINKING_DOTS * sum(model.DOT_DELAY) / 2
    return seconds


def room_arrivals(count: int, rate: float, seed: int, first_tag: int = 0) -> list[Arrival]:
    """`count` chats of the room's mix, arriving as a Poisson process of `rate` chats a second."""
    rng = random.Random(seed)
    prompts = [(prompt, thinking) for prompt, thinking, _ in ROOM]
    weights = [weight for *_, weight in ROOM]
    arrivals, at = [], 0.0
    for tag in range(first_tag, first_tag + count):
        at += rng.expovariate(rate)
        prompt, thinking = rng.choices(prompts, weights)[0]
        arrivals.append(Arrival(tag, at, prompt, thinking))
    return arrivals


def mean_answer_seconds(step_dir: Path) -> float:
    """The room's mean answer time, weighted as the room asks."""
    total = sum(weight for *_, weight in ROOM)
    return sum(weight * expected_answer_seconds(step_dir, prompt, thinking)
               for prompt, thinking, weight in ROOM) / total


def served_by(log: str) -> dict[int, tuple[int, float, float]]:
    """Each tagged chat's dirty worker pid, and when it started and stopped answering (bench_conf's lines)."""
    return {int(tag): (int(pid), float(began), float(ended))
            for tag, pid, began, ended in SERVED.findall(log)}


def find_collisions(chats: list[dict], workers: int) -> list[dict]:
    """The chats that queued behind a busy dirty worker while another one was idle.

    A chat was sent at `sent`; the worker it got was busy then if another
    chat's answer on that worker covered that moment; a worker was idle if
    fewer than `workers` distinct workers were answering at that moment.
    """
    collided = []
    for chat in chats:
        busy = {other["pid"] for other in chats
                if other is not chat and other["began"] <= chat["sent"] < other["ended"]}
        if chat["pid"] in busy and len(busy) < workers:
            collided.append(chat)
    return collided


def ideal_first_tokens(chats: list[dict], admitted: int) -> list[float]:
    """The same arrivals through an ideal least-busy queue: first come first served, `admitted`
    places, each admitted chat on an idle worker at once, with the answer times measured.

    A chat's own costs stay as measured: the hop to a free worker (the median
    over chats that found one), its worker's time to the first word and back,
    and how long its answer held the worker.
    """
    free_hops = [c["began"] - c["sent"] for c in chats if not c["collided"]]
    hop = median(free_hops) or 0.0
    places = [0.0] * admitted
    first_tokens = []
    for chat in sorted(chats, key=lambda c: c["arrived"]):
        place = min(range(admitted), key=places.__getitem__)
        start = max(chat["arrived"], places[place])
        places[place] = start + hop + (chat["ended"] - chat["began"])
        first_tokens.append(start - chat["arrived"] + hop + chat["to_first_token"])
    return first_tokens


async def mixed_load(server: LiveServer, arrivals: list[Arrival], admitted: int, opts: Options) -> list[dict]:
    """Send each chat at its arrival time; at most `admitted` in flight, the others wait in the client."""
    gate = asyncio.Semaphore(admitted)
    origin = time.monotonic()

    async def one(http, arrival: Arrival) -> tuple[Arrival, float, float, ChatResult]:
        await asyncio.sleep(max(0.0, origin + arrival.at - time.monotonic()))
        arrived = time.monotonic()
        async with gate:
            sent = time.monotonic()
            result = await http.chat(f"{arrival.prompt} [chat {arrival.tag}]", thinking=arrival.thinking)
        return arrival, arrived, sent, result

    async with new_client(server.base_url, admitted, opts.client) as http:
        done = await asyncio.wait_for(asyncio.gather(*(one(http, a) for a in arrivals)),
                                      arrivals[-1].at + opts.scenario_timeout)
    # The worker logs each answer as it ends: give the last lines a moment to reach the log.
    deadline = time.monotonic() + 10.0
    while len(served := served_by(server.log())) < arrivals[-1].tag + 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    chats = []
    for arrival, arrived, sent, result in done:
        pid, began, ended = served.get(arrival.tag, (0, sent, sent))
        first_token = result.started + result.first_token_at if result.first_token_at is not None else None
        chats.append({
            "tag": arrival.tag, "thinking": arrival.thinking, "outcome": classify(result),
            "arrived": arrived, "sent": sent, "pid": pid, "began": began, "ended": ended,
            "ttft": first_token - arrived if first_token is not None else None,
            "to_first_token": first_token - began if first_token is not None else 0.0,
        })
    return chats


def summarize_mixed(chats: list[dict], workers: int, admitted: int) -> dict:
    collided = find_collisions(chats, workers)
    for chat in chats:
        chat["collided"] = chat in collided
    ttft = [c["ttft"] for c in chats if c["ttft"] is not None]
    ideal = ideal_first_tokens(chats, admitted)
    lost = [c["began"] - c["sent"] for c in collided]
    outcomes = Counter(c["outcome"] for c in chats)
    return {
        "chats": len(chats),
        **{outcome: outcomes.get(outcome, 0) for outcome in OUTCOMES},
        "unrecorded": sum(1 for c in chats if not c["pid"]),
        "workers_used": len({c["pid"] for c in chats if c["pid"]}),
        "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95), "ttft_p99": percentile(ttft, 99),
        "ideal_ttft_p50": percentile(ideal, 50), "ideal_ttft_p95": percentile(ideal, 95),
        "ideal_ttft_p99": percentile(ideal, 99),
        "collisions": len(collided),
        "collision_wait_p50": percentile(lost, 50),
        "collision_wait_max": max(lost, default=None),
        "client_wait_max": max((c["sent"] - c["arrived"] for c in chats), default=None),
    }


async def run_mixed(opts: Options, log: Callable[[str], None]) -> dict:
    """Every ratio of dirty workers to admitted chats, each on a fresh server, at every load."""
    started = time.monotonic()
    admitted = opts.mixed_admitted
    service = mean_answer_seconds(opts.step_dir)
    loads = []
    for index, fraction in enumerate(opts.mixed_loads):
        rate = fraction * admitted / service
        arrivals = room_arrivals(opts.mixed_chats, rate, opts.mixed_seed + index)
        loads.append((fraction, rate, arrivals))
    runs, every_chat = [], []
    variants = [(ratio, "round-robin") for ratio in opts.mixed_ratios]
    if opts.mixed_least_busy:
        variants.append((1.0, "least-busy"))
    for ratio, routing in variants:
        workers = max(admitted, round(ratio * admitted))
        log(f"[mixed] {workers} dirty workers for {admitted} admitted chats ({ratio:g}x), {routing} arbiter")
        server = await asyncio.to_thread(
            start_server, opts.step_dir, env={"DIRTY_WORKERS": str(workers), "BENCH_ROUTING": routing},
            dirty_workers=workers, config=BENCH_CONF, log_dir=LOG_DIR,
        )
        try:
            await warm_up(server, workers, opts)
            idle = await asyncio.to_thread(tree_sample, server)
            tag = 0
            for fraction, rate, arrivals in loads:
                tagged = [replace(a, tag=a.tag + tag) for a in arrivals]
                tag += len(arrivals)
                log(f"[mixed] {workers} dirty workers: {len(arrivals)} chats at {fraction:.0%} of capacity")
                chats = await mixed_load(server, tagged, admitted, opts)
                busy = await asyncio.to_thread(tree_sample, server)
                runs.append({"ratio": ratio, "workers": workers, "routing": routing, "load": fraction,
                             "rate": rate, "pss_idle": idle["pss"], "pss_after": busy["pss"],
                             **summarize_mixed(chats, workers, admitted)})
                every_chat.append({"workers": workers, "routing": routing, "load": fraction, "chats": chats})
        finally:
            await asyncio.to_thread(server.stop)
    # Every chat's record, for a closer look; results.json keeps the summaries.
    (LOG_DIR / "mixed-chats.json").write_text(json.dumps(rounded(every_chat), indent=1) + "\n")
    return {"admitted": admitted, "mean_answer": service, "seed": opts.mixed_seed,
            "chats_per_load": opts.mixed_chats, "runs": runs, "seconds": time.monotonic() - started}

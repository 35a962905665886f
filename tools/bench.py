"""Measure the chat service under load, side by side: `make bench`.

It starts live servers of the final step (harness.server.start_server, on free
loopback ports) with 1, 2, 4, 8 and the shipped number of dirty workers, set
through DIRTY_WORKERS, and drives each with concurrent chat streams from one
asyncio client. It prints a table and writes docs/generated/bench/: table.md,
results.json, ttft_by_workers.png and burst.png.

Scenarios, every chat with the same prompt so that durations compare:

- solo: one chat on an idle server (the yardstick for durations);
- together: 32 chats started at once, while a separate process polls /health;
- sweep (shipped config): 8 and 16 chats at once, and 64 while /health is polled;
- burst: 4x as many chats as dirty workers, each outcome classified;
- drop (1 dirty worker): first token of the next chat after a hang-up;
- sockets (shipped config): 1,000 chats, half dropped mid-stream, then the
  server's socket count must come back to its idle value;
- loop: the shipped config again, its HTTP worker on asyncio's event loop
  instead of the step's asgi_loop, for the together and 64-stream figures;
- mixed: a room's real mix of prompts, arriving at random (Poisson, seeded) at
  50 % and 80 % of capacity, at most MIXED_ADMITTED chats in flight (the rest
  wait in the client), against 1x, 1.25x, 1.5x and 2x as many dirty workers.
  Its servers run tools/bench_conf.py, which logs which dirty worker served
  each chat and when: a chat that queued behind a busy worker while another
  was idle is a collision. The same arrivals replayed through an ideal
  least-busy queue, with the measured answer times, are the yardstick.

The shipped config's scenarios (and its asyncio twin's) run REPEAT times and
report medians: on 2 cores, the p95 of 32 first tokens and the p99 of a few
hundred /health probes change a lot from one run to the next, and the median
of five is steadier. The other configs run once. Settings come from the
environment (or the same options on the command line): REPEAT=9 (default 5),
BENCH_QUICK=1 (a one-minute smoke run), BENCH_STEP=04 (another step, or any
folder), BENCH_OUT=dir (instead of docs/generated/bench), BENCH_CLIENT=httpx
(to compare with the default client). `--scenarios mixed --merge` runs only
the mixed scenario and puts its figures into the results.json already there.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import json
import os
import platform
import random
import re
import select
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from harness import load as strict
from harness.server import (
    LiveServer,
    process_roles,
    socket_count,
    start_server,
    step_modules,
)
from harness.sse import ChatStream, Event
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
# What gunicorn's dirty worker logs when it stops streaming because its reader went away.
WORKER_STOPPED = "Error during streaming: Connection lost"

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


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100), interpolated between the closest ranks."""
    data = sorted(values)
    if not data:
        return None
    rank = (len(data) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def median(values: Iterable[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def medians(runs: list[dict]) -> dict:
    """The median of every numeric figure over several runs of a scenario."""
    keys = [key for key in runs[0] if isinstance(runs[0][key], int | float | type(None))]
    return {key: median(run.get(key) for run in runs) for key in keys}


# --------------------------------------------------------------------------
# The client: one chat, and what became of it
# --------------------------------------------------------------------------


@dataclass
class ChatResult(ChatStream):
    """A chat stream as harness.sse sees it, plus how the connection ended."""

    transport_error: str | None = None
    dropped: bool = False
    tokens_seen: int = 0

    @property
    def duration(self) -> float | None:
        return self.finished - self.started if self.finished is not None else None

    @property
    def gaps(self) -> list[float]:
        """Seconds between consecutive tokens of this stream."""
        times = [event.at for event in self.token_events]
        return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


def classify(result: ChatResult) -> str:
    """complete, refused (503 + Retry-After before any stream), error (one
    error event, then [DONE]), cut_off (the connection ended without [DONE],
    or without any message) or other (anything else harness.load rejects)."""
    if result.status in (0, 200) and (
        result.transport_error is not None or not result.ended_with_done or not result.payloads
    ):
        return "cut_off"
    try:
        return {strict.COMPLETE: "complete", strict.REFUSED: "refused", strict.FAILED: "error"}[
            strict.classify(result)
        ]
    except (strict.ProtocolViolation, ValueError):
        return "other"


def take_events(buffer: bytes, now: float, result: ChatResult, stop_after_tokens: int | None) -> bytes:
    """Move the complete events at the head of `buffer` into `result`; return the rest.

    Only a chat that will hang up counts its tokens as they come: the
    client's time is the measurement's, so the rest is parsed afterwards.
    """
    while b"\n\n" in buffer:
        raw, buffer = buffer.split(b"\n\n", 1)
        event = Event(raw.decode("utf-8"), now)
        result.events.append(event)
        result.body += raw + b"\n\n"
        if stop_after_tokens is not None and not event.done and event.json().get("token"):
            result.tokens_seen += 1
            if result.tokens_seen >= stop_after_tokens:
                result.dropped = True
                break
    return buffer


class RawClient:
    """A minimal HTTP/1.1 client on asyncio streams, one connection per chat.

    It is the default because it costs the event loop a fraction of what
    httpx costs per event: on 2 cores with 32 streams, httpx alone put tens of
    milliseconds on every first token (BENCH_CLIENT=httpx shows it).
    """

    def __init__(self, base_url: str, connections: int = 1):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        return None

    async def chat(self, prompt: str = PROMPT, *, stop_after_tokens: int | None = None,
                   thinking: bool = False) -> ChatResult:
        """POST /chat and read the SSE answer, timing each event as it arrives.

        With `stop_after_tokens`, hang up after that many tokens, as a user
        pressing Stop would.
        """
        started = time.monotonic()
        result = ChatResult(status=0, headers=httpx.Headers(), started=started)
        writer = None
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            body = json.dumps({"prompt": prompt, "thinking": thinking}).encode()
            writer.write(
                b"POST /chat HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (self.host.encode(), self.port, len(body), body)
            )
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            result.status = int(head[0].split()[1])
            fields = (line.split(":", 1) for line in head[1:] if ":" in line)
            result.headers = httpx.Headers([(name, value.strip()) for name, value in fields])
            if result.headers.get("transfer-encoding", "").lower() != "chunked":
                length = result.headers.get("content-length")
                result.body = await (reader.readexactly(int(length)) if length else reader.read())
                return result
            buffer = b""
            while not result.dropped:
                size = int((await reader.readline()).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                buffer = take_events(buffer + chunk[:-2], time.monotonic(), result, stop_after_tokens)
        except (OSError, EOFError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            result.transport_error = f"{type(exc).__name__}: {exc}"
        finally:
            result.finished = time.monotonic()
            if writer is not None:
                writer.close()
        return result


class HttpxClient:
    """The same chat through httpx.AsyncClient, to compare (BENCH_CLIENT=httpx)."""

    def __init__(self, base_url: str, connections: int = 1):
        # One connection per stream, so that no chat waits for the client's pool.
        limits = httpx.Limits(max_connections=connections + 8, max_keepalive_connections=connections + 8)
        timeout = httpx.Timeout(90.0, connect=15.0)
        self.http = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout)

    async def __aenter__(self) -> HttpxClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.http.aclose()

    async def chat(self, prompt: str = PROMPT, *, stop_after_tokens: int | None = None,
                   thinking: bool = False) -> ChatResult:
        started = time.monotonic()
        result = ChatResult(status=0, headers=httpx.Headers(), started=started)
        try:
            body = {"prompt": prompt, "thinking": thinking}
            async with self.http.stream("POST", "/chat", json=body) as response:
                result.status, result.headers = response.status_code, response.headers
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    result.body = await response.aread()
                    return result
                buffer = b""
                async for chunk in response.aiter_raw():
                    buffer = take_events(buffer + chunk, time.monotonic(), result, stop_after_tokens)
                    if result.dropped:
                        break
        except (httpx.HTTPError, ValueError) as exc:
            result.transport_error = f"{type(exc).__name__}: {exc}"
        finally:
            result.finished = time.monotonic()
        return result


CLIENTS = {"raw": RawClient, "httpx": HttpxClient}


def new_client(base_url: str, connections: int, kind: str = "raw") -> RawClient | HttpxClient:
    return CLIENTS[kind](base_url, connections)


async def chats_at_once(base_url: str, count: int, opts: Options) -> list[ChatResult]:
    async with new_client(base_url, count, opts.client) as client:
        chats = (client.chat(opts.prompt) for _ in range(count))
        return await asyncio.wait_for(asyncio.gather(*chats), opts.scenario_timeout)


# --------------------------------------------------------------------------
# Probes: /health from another process, the client's own loop, the server tree
# --------------------------------------------------------------------------


def health_probe(url: str, interval: float) -> None:
    """Poll GET /health on one kept-alive connection until stdin says stop.

    It runs as its own process (`bench.py --health-probe URL`) so that neither
    the client's event loop nor its GIL adds to the latencies it reports.
    """
    parts = urlsplit(url)
    latencies: list[float] = []
    # When each answered probe was sent, on the clock the chats are timed by.
    sent: list[float] = []
    errors = 0

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)

    conn = connect()
    print("ready", flush=True)
    started = time.process_time()
    while not select.select([sys.stdin], [], [], 0)[0]:
        begin, begin_monotonic = time.perf_counter(), time.monotonic()
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                latencies.append(time.perf_counter() - begin)
                sent.append(begin_monotonic)
            else:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = connect()
        time.sleep(interval)
    conn.close()
    print(json.dumps({"latencies": latencies, "sent": sent, "errors": errors,
                      "cpu": time.process_time() - started}))


class HealthProbe:
    """The health_probe process, started and stopped around a load."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    @classmethod
    async def start(cls, base_url: str, interval: float = 0.02) -> HealthProbe:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--health-probe", base_url, "--interval", str(interval),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        await asyncio.wait_for(proc.stdout.readline(), 30)
        return cls(proc)

    async def stop(self) -> dict:
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        out, _ = await asyncio.wait_for(self.proc.communicate(), 30)
        return json.loads(out)


async def watch_loop(stop: asyncio.Event, interval: float = 0.005) -> list[float]:
    """How late this client's event loop wakes up: its own share of any delay."""
    loop = asyncio.get_running_loop()
    lags = []
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(interval)
        lags.append(loop.time() - before - interval)
    return lags


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU seconds each process has used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return used


def tree_sample(server: LiveServer) -> dict:
    look = strict.sample(server.pids())
    return {"pss": look.pss_kib, "rss": look.rss_kib, "sockets": look.sockets, "processes": look.processes}


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------


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
        # A few samples while the streams run; each takes some 60 ms of /proc reading.
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
    # The dirty worker logs this when the arbiter drops its reader: a hang-up reached it.
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


# --------------------------------------------------------------------------
# Running the configurations
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


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
        f" `.venv/bin/python tools/bench.py --scenarios mixed --merge` ({mixed['seconds']:.0f} s).\n\n"
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
    banner = "<!-- generated by `make bench` (tools/bench.py): do not edit -->\n\n"
    (out_dir / "table.md").write_text(banner + table)
    (out_dir / "results.json").write_text(json.dumps(rounded(results), indent=1) + "\n")
    if plots:
        plot(results, out_dir)
        if "mixed" in results:
            plot_mixed(results["mixed"], out_dir)
    return table


def rounded(data):
    """Floats to microseconds (or 6 digits): enough, and a readable diff."""
    if isinstance(data, float):
        return round(data, 6)
    if isinstance(data, dict):
        return {key: rounded(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [rounded(value) for value in data]
    return data


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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

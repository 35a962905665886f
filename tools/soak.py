"""Soak the chat service: `make soak` (the final step) or `make soak STEP=04`.

Starts the step on a free loopback port with DIRTY_WORKERS=16, keeps 16 chat
streams going for SOAK_SECONDS (default 180), and every SAMPLE_SECONDS (5)
samples the server's process tree: RSS and PSS (KiB, from smaps_rollup) and
its socket count. Prints a table, then a verdict:

- no errors: every chat a complete stream with the right text (16 streams on
  16 workers never need the line, so a 503 or an error event is an error);
- RSS and sockets flat: after a warm-up (the first fifth of the run), the mean
  of the last quarter of the samples is within FLAT_RSS (5 %) and FLAT_SOCKETS
  (15 %) of the mean of the first quarter. Sockets come and go with every
  chat, so their band is wider; PSS is shown but not judged, because it moves
  when other processes on the machine that share its libraries come and go;
- and once the clients stop, the socket count returns to its idle value.

Exits 0 when the verdict is good, 1 otherwise.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

from harness.load import COMPLETE, ProtocolViolation, Sample, Tally, classify, fire, sample
from harness.procs import socket_count
from harness.server import AUTH, start_server
from harness.sse import stream_chat
from harness.steps import UnknownStep, find, last_core

WORKERS = 16
STREAMS = 16
SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))
SAMPLE_SECONDS = float(os.environ.get("SAMPLE_SECONDS", "5"))
WARM_UP = 0.2
FLAT_RSS = 0.05
FLAT_SOCKETS = 0.15
PROMPTS = ["hello", "explain", "tell me about streaming", "code please", "what is the weather?"]
# A client read waits at most this long: a stalled stream is an error, not a hang.
READ_TIMEOUT = 30.0


def load_chat_app(step_dir: Path):
    """The step's own model module, to know which answer each prompt must get."""
    spec = importlib.util.spec_from_file_location(f"soak_chat_app_{step_dir.name}", step_dir / "chat_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flat(values: list[float], tolerance: float) -> tuple[bool, float, float]:
    """Is the last quarter's mean within `tolerance` of the first quarter's?"""
    quarter = max(1, len(values) // 4)
    first, last = statistics.mean(values[:quarter]), statistics.mean(values[-quarter:])
    return abs(last - first) <= tolerance * first, first, last


def client_loop(base_url: str, number: int, chat_app, thinking_ok: bool, until: float, tally: Tally):
    prompts = itertools.cycle(PROMPTS[number % len(PROMPTS):] + PROMPTS[: number % len(PROMPTS)])
    with httpx.Client(base_url=base_url, timeout=READ_TIMEOUT, headers=AUTH) as http:
        for round_number in itertools.count():
            if time.monotonic() >= until:
                return
            prompt = next(prompts)
            thinking = thinking_ok and (number + round_number) % 2 == 0
            try:
                result = stream_chat(http, prompt, thinking)
                kind = classify(result)
            except (ProtocolViolation, httpx.HTTPError) as exc:
                tally.add(None, f"{prompt!r}: {exc}"[:300])
                continue
            if kind == COMPLETE and not result.text.endswith(chat_app.pick_answer(prompt)):
                tally.add(None, f"{prompt!r}: wrong text {result.text[:80]!r}")
            elif kind == COMPLETE:
                tally.add(kind)
            else:
                tally.add(kind, f"{prompt!r}: {kind} {result.body[-200:]!r}")


def print_table(samples: list[Sample], started: float, counts: list[int]) -> None:
    print(f"{'t (s)':>6} {'RSS MiB':>8} {'PSS MiB':>8} {'sockets':>8} {'procs':>6} {'chats':>7}")
    for entry, chats in zip(samples, counts, strict=True):
        print(
            f"{entry.at - started:6.0f} {entry.rss_kib / 1024:8.1f} {entry.pss_kib / 1024:8.1f}"
            f" {entry.sockets:8d} {entry.processes:6d} {chats:7d}"
        )


def main(argv: list[str]) -> int:
    try:
        step = find(argv[1]) if len(argv) > 1 and argv[1] else last_core()
    except UnknownStep as exc:
        print(f"make soak: {exc}", file=sys.stderr)
        return 2
    step_dir = step.path
    if step.number < 3:
        print(f"make soak: {step_dir.name} has no streaming endpoint; soak step 03 or later", file=sys.stderr)
        return 2
    chat_app = load_chat_app(step_dir)
    thinking_ok = step.number >= 4
    print(f"Soaking {step_dir.name}: {STREAMS} streams, {WORKERS} dirty workers, {SECONDS:.0f} s", flush=True)

    server = start_server(step_dir, env={"DIRTY_WORKERS": str(WORKERS)}, dirty_workers=WORKERS)
    try:
        # One answer per dirty worker first: the arbiter keeps a connection to
        # each worker it has used, so the idle state to come back to has them all.
        warm_up = fire(server.base_url, WORKERS, "hello", timeout=READ_TIMEOUT)
        if any(shot.result is None or classify(shot.result) != COMPLETE for shot in warm_up):
            print("make soak: the warm-up chats did not all complete", file=sys.stderr)
            return 1
        idle_sockets = socket_count(server.pids())
        tally = Tally()
        started = time.monotonic()
        until = started + SECONDS
        clients = [
            threading.Thread(
                target=client_loop,
                args=(server.base_url, number, chat_app, thinking_ok, until, tally),
                daemon=True,
            )
            for number in range(STREAMS)
        ]
        for client in clients:
            client.start()
        samples: list[Sample] = []
        counts: list[int] = []
        while time.monotonic() < until:
            samples.append(sample(server.pids()))
            counts.append(tally.total())
            time.sleep(min(SAMPLE_SECONDS, max(0.0, until - time.monotonic())))
        for client in clients:
            client.join(READ_TIMEOUT * 2)
        stuck_clients = sum(client.is_alive() for client in clients)
        deadline = time.monotonic() + 10
        while (sockets_after := socket_count(server.pids())) != idle_sockets and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        exit_code = server.stop()

    print_table(samples, started, counts)
    judged = [entry for entry in samples if entry.at - started >= WARM_UP * SECONDS]
    rss_ok, rss_first, rss_last = flat([entry.rss_kib for entry in judged], FLAT_RSS)
    sockets_ok, sockets_first, sockets_last = flat([entry.sockets for entry in judged], FLAT_SOCKETS)
    _pss_ok, pss_first, pss_last = flat([entry.pss_kib for entry in judged], FLAT_RSS)
    errors = len(tally.violations)
    chats = tally.total()
    print()
    print(f"chats: {chats} ({chats / SECONDS:.1f}/s), outcomes {dict(sorted(tally.counts.items()))}")
    for violation in tally.violations[:10]:
        print(f"  error: {violation}")
    print(
        f"RSS     first quarter {rss_first / 1024:7.1f} MiB, last {rss_last / 1024:7.1f} MiB"
        f" ({(rss_last - rss_first) / rss_first:+.1%}, flat within {FLAT_RSS:.0%}:"
        f" {'yes' if rss_ok else 'NO'})"
    )
    print(
        f"PSS     first quarter {pss_first / 1024:7.1f} MiB, last {pss_last / 1024:7.1f} MiB"
        f" ({(pss_last - pss_first) / pss_first:+.1%}, not judged)"
    )
    print(
        f"sockets first quarter {sockets_first:7.1f}, last {sockets_last:7.1f}"
        f" ({(sockets_last - sockets_first) / sockets_first:+.1%}, flat within {FLAT_SOCKETS:.0%}:"
        f" {'yes' if sockets_ok else 'NO'}); idle {idle_sockets}, after the run {sockets_after}"
    )
    checks = {
        "no errors": errors == 0 and chats > 0,
        "RSS flat": rss_ok,
        "sockets flat": sockets_ok,
        "sockets back to idle": sockets_after == idle_sockets,
        "every client finished": stuck_clients == 0,
        "server stopped cleanly": exit_code == 0,
    }
    failed = [name for name, ok in checks.items() if not ok]
    print(f"verdict: {'PASS' if not failed else 'FAIL (' + ', '.join(failed) + ')'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

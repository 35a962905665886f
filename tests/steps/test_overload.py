"""Overload (step 03 on): many more chats at once than the dirty workers can take.

Every chat must end in exactly one of three ways (harness.load): a complete
stream, a 503 with Retry-After before any stream, or one error event then
[DONE] once the stream has begun; never a cut connection, never a hang past
MAX_WAIT + ANSWER_TIMEOUT. The line's time-out path (MAX_WAIT, 30 s) is
tested without a server in test_capacity.py.
"""

import threading
import time

import pytest

from harness import procs
from harness.load import COMPLETE, FAILED, REFUSED, fire, past_halfway
from harness.server import AUTH, loopback_client
from harness.sse import stream_chat

pytestmark = pytest.mark.since("03")

ONE_WORKER = {"env": {"DIRTY_WORKERS": "1"}, "dirty_workers": 1}
# With one dirty worker, one chat runs and WAITING_PER_WORKER (4) wait: 12
# at once is more than twice what the server takes in.
BURST = 12
# Bounds each client read; waiting clients hear from the server every
# WAIT_UPDATE (5 s), and a normal answer has no gap near this.
READ_TIMEOUT = 15.0


def waiting_positions(result) -> list[int]:
    return [payload["waiting"] for payload in result.payloads if "waiting" in payload]


@pytest.fixture(scope="module")
def burst_run(step, servers):
    """Fire BURST chats at once at a one-worker server, probing /health meanwhile.

    Once per step: every test below reads the same burst.
    """
    # At a real model's pace: the probes are measured against the answers' length.
    server = servers.start(step, pace=1, **ONE_WORKER)
    probes: list[tuple[float, float, int]] = []
    done = threading.Event()

    def probe_health():
        with loopback_client(server.base_url, timeout=READ_TIMEOUT, headers=AUTH) as http:
            while not done.is_set():
                sent = time.monotonic()
                status = http.get("/health").status_code
                probes.append((sent, time.monotonic(), status))
                # A steady trickle rather than a flood: two cores serve the burst too.
                done.wait(0.05)

    prober = threading.Thread(target=probe_health, daemon=True)
    prober.start()
    shots = fire(server.base_url, BURST, "hello", timeout=READ_TIMEOUT)
    done.set()
    prober.join(READ_TIMEOUT)
    yield server, shots, probes
    server.stop()


@pytest.fixture
def burst(burst_run, request):
    # Show the server's log if the test fails.
    request.node.live_servers = [burst_run[0]]
    return burst_run


def test_every_chat_ends_in_one_of_the_three_ways(step, burst, step_module):
    main = step_module("main")
    _server, shots, _probes = burst
    kinds = [shot.kind for shot in shots]  # raises ProtocolViolation for anything else
    assert set(kinds) <= {COMPLETE, REFUSED, FAILED}
    assert kinds.count(COMPLETE) >= 2 and kinds.count(REFUSED) >= 1, kinds
    results = [shot.result for shot in shots]
    # Never a hang past the documented bound: the longest wait in line, then
    # the longest answer.
    longest = max(result.finished - result.started for result in results)
    assert longest < main.MAX_WAIT + main.ANSWER_TIMEOUT


def test_the_line_takes_exactly_its_size_and_refuses_the_rest_at_once(step, burst, step_module):
    main = step_module("main")
    _server, shots, _probes = burst
    results = [shot.result for shot in shots]
    accepted = [result for shot, result in zip(shots, results, strict=True) if shot.kind != REFUSED]
    refused = [result for shot, result in zip(shots, results, strict=True) if shot.kind == REFUSED]
    first_done = min(result.finished for result in accepted)
    # The burst really was one: every chat was sent before the first answer ended...
    assert max(result.started for result in results) < first_done
    # ...so one ran, WAITING_PER_WORKER waited, and every other one was refused.
    assert len(accepted) == 1 + main.WAITING_PER_WORKER
    assert len(refused) == BURST - len(accepted)
    for result in refused:
        assert result.headers["retry-after"] == str(main.RETRY_AFTER)
        assert "busy" in result.body.decode()
        # Refused at once, not after a wait: before any answer ended.
        assert result.finished < first_done


def test_waiting_clients_hear_where_they_stand(step, burst, step_module):
    main = step_module("main")
    _server, shots, _probes = burst
    accepted = [shot.result for shot in shots if shot.kind == COMPLETE]
    running = [result for result in accepted if not waiting_positions(result)]
    queued = [result for result in accepted if waiting_positions(result)]
    assert len(running) == 1 and len(queued) == main.WAITING_PER_WORKER
    (first,) = running
    first_done = first.events[-1].at
    # Between them, those in line started at every place of it, once each.
    assert sorted(waiting_positions(result)[0] for result in queued) == list(range(1, len(queued) + 1))
    for result in queued:
        positions = waiting_positions(result)
        # The first event says "you wait", and says it at once: before the
        # chat ahead had finished.
        assert "waiting" in result.payloads[0] and result.payloads[0]["token"] == ""
        assert result.events[0].at < first_done
        # Positions only go down, and every one of them comes before the first token.
        assert positions == sorted(positions, reverse=True) and positions[-1] >= 1
        last_wait = max(i for i, payload in enumerate(result.payloads) if "waiting" in payload)
        assert all("waiting" not in payload for payload in result.payloads[last_wait + 1:])
        # (Read together, the two share a time; the order above says the rest.)
        assert result.token_events[0].at >= result.events[last_wait].at


def test_the_line_is_first_come_first_served(step, burst):
    """Served in the order they joined the line: the server's own numbering
    (the first position each was told) is the arrival order; the clients'
    send times, all within a millisecond of each other, cannot tell it."""
    _server, shots, _probes = burst
    accepted = [shot.result for shot in shots if shot.kind == COMPLETE]
    (first,) = [result for result in accepted if not waiting_positions(result)]
    queued = sorted(
        (result for result in accepted if waiting_positions(result)), key=lambda r: waiting_positions(r)[0]
    )
    first_tokens = [result.token_events[0].at for result in [first, *queued]]
    finishes = [result.events[-1].at for result in [first, *queued]]
    assert first_tokens == sorted(first_tokens)
    assert finishes == sorted(finishes)
    # One worker: each answer starts only once the one before it has ended.
    for before, after in zip([first, *queued], queued, strict=False):
        assert past_halfway(after.token_events[0].at, before.token_events[0].at, before.events[-1].at), (
            "two answers overlapped on one worker"
        )


def test_health_stays_fast_during_the_burst(step, burst):
    _server, shots, probes = burst
    streams = [shot.result for shot in shots if shot.kind == COMPLETE]
    last_done = max(result.finished for result in streams)
    during = [probe for probe in probes if probe[1] < last_done]
    assert all(status == 200 for _sent, _answered, status in probes)
    # Many probes answered while the chats were still streaming...
    assert len(during) >= 10, len(during)
    # ...each in less time than the shortest answer took: none waited for one.
    shortest = min(result.events[-1].at - result.token_events[0].at for result in streams)
    assert max(answered - sent for sent, answered, _status in during) < shortest


def test_the_server_recovers_after_the_burst(step, burst, step_module):
    server, shots, _probes = burst
    assert all(shot.result is not None for shot in shots)
    with loopback_client(server.base_url, timeout=READ_TIMEOUT, headers=AUTH) as http:
        result = stream_chat(http, "hello")
        assert http.get("/health").json() == {"status": "ok"}
    assert result.status == 200 and result.ended_with_done and not result.errors
    # Nobody is left in line: the answer starts at once, without a "waiting" event.
    assert not waiting_positions(result)
    assert result.text == step_module("chat_app").GREETING


@pytest.mark.since("05")
def test_the_http_worker_runs_on_uvloop(step, server):
    # Step 05 names asgi_loop = "uvloop" for a room's load (make bench compares
    # it with asyncio). Only an HTTP worker that runs it has it loaded.
    roles = procs.process_roles(server.pid)
    on_uvloop = [pid for pid in roles if procs.has_library(pid, "/uvloop/")]
    assert [roles[pid] for pid in on_uvloop] == ["http"]
    assert "falling back to asyncio" not in server.log()

"""A real model's lifecycle: readiness while it loads, and a line that follows the workers.

CHAT_LOAD_SECONDS=8 makes the model load like a real one, longer than the
5 s the dirty arbiter waits for a worker's socket before it fails a request
with "Worker socket not ready". No chat may ever get that error: it waits
(in line from step 03 on) until every dirty worker has loaded its model, or
is refused with 503 and Retry-After if that takes too long.
The number of dirty workers is set with DIRTY_WORKERS, --dirty-workers, or at
run time with TTIN and TTOU on the dirty arbiter; /ready and the line follow.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import httpx
import pytest

from harness.load import WatchedChat, ended_by_a_dead_worker
from harness.procs import ARBITER, DIRTY, process_roles
from harness.server import AUTH, DIRTY_READY, loopback_client
from harness.sse import ChatStream

# How long the dirty arbiter waits for a worker's socket, and a load longer than that.
ARBITER_WAIT = 5
SLOW_LOAD = {"CHAT_LOAD_SECONDS": "8"}
# The long answer: about 3.6 s at a real model's pace (the tests marked
# paced), time enough to look at the others meanwhile.
LONG = "explain dirty workers"
# Bounds every wait of these tests, so that a broken server fails them instead of hanging.
GUARD = 60.0
SOCKET_NOT_READY = "Worker socket not ready"


def start_chat(server, prompt: str = LONG) -> WatchedChat:
    """A chat read on a thread of its own (harness.load), every wait bounded by GUARD."""
    return WatchedChat(server.base_url, prompt, timeout=GUARD).start()


def ready(server) -> httpx.Response:
    with loopback_client(server.base_url, timeout=10) as http:
        return http.get("/ready")


def wait_until_ready(server, loaded: int, workers: int) -> dict:
    """Poll /ready until it says `loaded` of `workers` dirty workers can serve."""
    deadline = time.monotonic() + GUARD
    while True:
        answer = ready(server)
        body = answer.json()
        if answer.status_code == 200 and (body["loaded"], body["workers"]) == (loaded, workers):
            return body
        assert time.monotonic() < deadline, f"/ready never said {loaded} of {workers} loaded; last: {body}"
        time.sleep(0.1)


def arbiter_pid(server) -> int:
    return next(pid for pid, role in process_roles(server.pid).items() if role == ARBITER)


def dirty_pids(server) -> set[int]:
    return {pid for pid, role in process_roles(server.pid).items() if role == DIRTY}


def assert_never_socket_not_ready(texts: list[str]) -> None:
    for text in texts:
        assert SOCKET_NOT_READY not in text, f"a chat got the arbiter's internal error while loading: {text}"


@pytest.mark.since("02")
def test_ready_is_503_while_the_model_loads_then_200(step, start):
    server = start(env=SLOW_LOAD, args=("--dirty-workers", "2"), ready=False)
    loading = ready(server)
    with loopback_client(server.base_url, timeout=10) as http:
        health = http.get("/health")
    assert health.status_code == 200, "/health must answer while the model loads"
    assert loading.status_code == 503, f"/ready said {loading.status_code} before any model was loaded"
    assert loading.json() == {"status": "loading", "loaded": 0, "workers": 2}
    assert int(loading.headers["Retry-After"]) > 0, "a 503 from /ready must say when to come back"
    body = wait_until_ready(server, loaded=2, workers=2)
    assert body["status"] == "ready"


# Two ways a server is stopped: its supervisor signals the master, or the
# learner presses Ctrl-C, which signals every process of the terminal's group.
STOPS = {
    "SIGTERM": lambda master: os.kill(master, signal.SIGTERM),
    "Ctrl-C": lambda master: os.killpg(master, signal.SIGINT),
}


@pytest.mark.since("02")
@pytest.mark.parametrize("stop", STOPS)
def test_a_stop_while_the_model_loads_ends_the_loading_workers_at_once(step, start, stop):
    """chat_app.stop_signals_end_the_load: without it a dirty worker told to stop during
    its load loads on, and is killed at the end of dirty_graceful_timeout (30 s)."""
    server = start(env=SLOW_LOAD, args=("--dirty-workers", "2"), ready=False)
    server.wait_for_log("Loading the chat model in dirty worker", count=2, timeout=GUARD)
    STOPS[stop](server.pid)
    server.proc.wait(GUARD)
    log = server.log()
    assert "Chat model loaded" not in log, "a dirty worker went on loading after the stop"
    assert "killed by signal" not in log, "a dirty worker did not end until it was killed"
    assert server.proc.returncode == 0, f"the server ended with code {server.proc.returncode}"


@pytest.mark.since("02")
def test_a_chat_sent_while_the_model_loads_gets_its_answer_or_a_clear_503(step, start):
    server = start(env=SLOW_LOAD, args=("--dirty-workers", "2"), ready=False)
    assert ready(server).status_code == 503, "the model was loaded already: this test proves nothing"
    answers: list[httpx.Response] = []

    def ask():
        with loopback_client(server.base_url, timeout=GUARD, headers=AUTH) as client:
            answers.append(client.post("/chat/sync", json={"prompt": "hello"}))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    streams = [start_chat(server, "hello") for _ in range(2)] if step.number >= 3 else []
    for thread in threads:
        thread.join(GUARD)
    results = [stream.finish() for stream in streams]
    assert_never_socket_not_ready([answer.text for answer in answers] + [r.body.decode() for r in results])
    for answer in answers:
        if answer.status_code == 503:
            assert "still loading" in answer.json()["detail"], answer.text
            assert int(answer.headers["Retry-After"]) > 0
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json()["response"].startswith("Hello!")
    for result in results:
        assert not result.errors, f"a stream sent while the model loaded failed: {result.errors}"
        assert "waiting" in result.payloads[0], "a stream sent while loading did not hear that it waits"
        assert any(p.get("reason") == "loading" for p in result.payloads), "no stream heard why"
        assert result.text.startswith("Hello!")


@pytest.mark.since("02")
def test_a_respawned_worker_is_counted_and_gets_no_chat_before_it_has_loaded(step, start_faulty):
    """Round-robin hands requests to a worker as soon as it is forked: while the
    replacement loads (8 s, longer than the arbiter waits), no chat may reach it."""
    # Only the replacement loads slowly (fault_conf.py): the first two need not.
    respawn_slowly = {"CHAT_RESPAWN_LOAD_SECONDS": SLOW_LOAD["CHAT_LOAD_SECONDS"]}
    server = start_faulty(None, env=respawn_slowly, args=("--dirty-workers", "2"), dirty_workers=2)
    wait_until_ready(server, loaded=2, workers=2)
    victim = min(dirty_pids(server))
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    # The arbiter's dirty_worker_exit hook runs even after a SIGKILL.
    wait_until_ready(server, loaded=1, workers=2)
    texts = []
    with loopback_client(server.base_url, timeout=GUARD, headers=AUTH) as client:
        for _ in range(4):
            answer = client.post("/chat/sync", json={"prompt": "hello"})
            texts.append(answer.text)
            assert answer.status_code in (200, 503), answer.text
            if answer.status_code == 503:
                assert "still loading" in answer.json()["detail"] and "Retry-After" in answer.headers
    assert_never_socket_not_ready(texts)
    wait_until_ready(server, loaded=2, workers=2)
    assert victim not in dirty_pids(server)
    loading = time.monotonic() - killed
    assert loading > ARBITER_WAIT, f"the replacement loaded in {loading:.1f} s: this test proves nothing"


@pytest.mark.since("02")
def test_a_worker_counts_as_loaded_only_once_it_listens(step, start_faulty):
    """gunicorn runs dirty_worker_init before the worker listens, and the arbiter
    connects as soon as the socket file exists: a chat let through in between is
    refused. Here the worker waits between binding its socket and listening."""
    server = start_faulty(None, env={"CHAT_LISTEN_DELAY": "2"}, args=("--dirty-workers", "1"), ready=False)
    wait_until_ready(server, loaded=1, workers=1)
    assert re.search(DIRTY_READY, server.log()), "/ready counted a dirty worker that did not listen yet"
    with loopback_client(server.base_url, timeout=GUARD, headers=AUTH) as client:
        answer = client.post("/chat/sync", json={"prompt": "hello"})
    assert answer.status_code == 200, answer.text


# An answer of about a second is long enough for a second chat to find the one worker busy.
@pytest.mark.paced(0.3)
@pytest.mark.since("03")
def test_the_line_follows_dirty_workers_set_by_the_environment(step, start):
    server = start(env={"DIRTY_WORKERS": "1"}, dirty_workers=1)
    wait_until_ready(server, loaded=1, workers=1)
    first = start_chat(server)
    first.first_token()
    second = start_chat(server)
    assert "waiting" in second.first_event(), "a 2nd chat on 1 dirty worker was not told it waits"
    first.finish()
    second.finish()


def third_chat_waits(server) -> tuple[bool, list[ChatStream]]:
    """Two chats get a word each, then a third is sent: was it told to wait? And all three, ended."""
    running = [start_chat(server) for _ in range(2)]
    for chat in running:
        chat.first_token()
    third = start_chat(server)
    waited = "waiting" in third.first_event()
    return waited, [chat.finish() for chat in [*running, third]]


# Answers of about a second are long enough for a third chat to find both
# workers busy.
@pytest.mark.paced(0.3)
@pytest.mark.since("03")
def test_the_line_follows_the_flag_and_ttin_and_ttou(step, start):
    # No DIRTY_WORKERS: the step's own default (32 in step 05) is overridden by the flag.
    server = start(args=("--dirty-workers", "2"), dirty_workers=2)
    wait_until_ready(server, loaded=2, workers=2)
    waited, _ = third_chat_waits(server)
    assert waited, "--dirty-workers 2: a 3rd chat did not hear it waits"

    os.kill(arbiter_pid(server), signal.SIGTTIN)
    wait_until_ready(server, loaded=3, workers=3)
    waited, results = third_chat_waits(server)
    assert not waited, "after TTIN, a 3rd chat still waited in line"
    assert not [result.errors for result in results if result.errors], "a chat failed after TTIN"

    os.kill(arbiter_pid(server), signal.SIGTTOU)
    wait_until_ready(server, loaded=2, workers=2)
    waited, _ = third_chat_waits(server)
    assert waited, "after TTOU, the line still let 3 chats run at once"


@pytest.mark.paced
@pytest.mark.since("03")
def test_ttou_stops_the_oldest_dirty_worker_even_mid_answer(step, start):
    """What docs/going-further/real-model.md says: gunicorn 27.0.1 picks the oldest
    dirty worker and sends it SIGTERM at once; the answer it was writing is cut,
    and its client hears an error event (as from any worker that dies mid-answer:
    harness.load.ended_by_a_dead_worker), then [DONE]."""
    server = start(args=("--dirty-workers", "2"), dirty_workers=2)
    chats = [start_chat(server) for _ in range(2)]
    for chat in chats:
        chat.first_token()
    os.kill(arbiter_pid(server), signal.SIGTTOU)
    results = [chat.finish() for chat in chats]
    cut = [result for result in results if result.errors]
    errors = [result.errors for result in results]
    assert len(cut) == 1, f"TTOU with both workers answering should cut exactly one answer: {errors}"
    assert ended_by_a_dead_worker(cut[0].status, cut[0].errors[0]), errors
    whole = next(result for result in results if not result.errors)
    assert whole.text.startswith("Dirty workers are"), "the answer on the worker that stays was not whole"
    wait_until_ready(server, loaded=1, workers=1)


@pytest.mark.since("02")
def test_ready_says_503_when_the_dirty_arbiter_does_not_answer(step, start):
    server = start(args=("--dirty-workers", "1"), dirty_workers=1)
    arbiter = arbiter_pid(server)
    os.kill(arbiter, signal.SIGSTOP)
    try:
        stuck = ready(server)
        with loopback_client(server.base_url, timeout=10) as http:
            health = http.get("/health")
    finally:
        os.kill(arbiter, signal.SIGCONT)
    assert stuck.status_code == 503, f"/ready said {stuck.status_code} while no arbiter could answer"
    assert "unavailable" in stuck.json()["detail"], stuck.text
    assert health.status_code == 200, "/health must not depend on the dirty arbiter"
    wait_until_ready(server, loaded=1, workers=1)


@pytest.mark.only("02")
def test_a_chat_that_waits_too_long_for_the_model_gets_a_clear_503(step, start):
    """A model that loads for longer than main.LOAD_WAIT (set by CHAT_LOAD_WAIT): the held chat is refused."""
    # A load of seconds more than the wait, however slowly the server starts.
    server = start(env={**SLOW_LOAD, "CHAT_LOAD_WAIT": "1"}, args=("--dirty-workers", "1"), ready=False)
    assert ready(server).status_code == 503, "the model was loaded already: this test proves nothing"
    with loopback_client(server.base_url, timeout=GUARD, headers=AUTH) as client:
        answer = client.post("/chat/sync", json={"prompt": "hello"})
    assert answer.status_code == 503, answer.text
    assert answer.json() == {"detail": "the model is still loading: 0 of 1 dirty workers are ready"}
    assert int(answer.headers["Retry-After"]) > 0

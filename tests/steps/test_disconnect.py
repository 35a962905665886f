"""A client that hangs up must stop the generation, and leave no socket behind."""

import re
import statistics
import time

import httpx
import pytest

from harness.procs import settled_socket_count, socket_count
from harness.server import AUTH, loopback_client
from harness.sse import stream_chat

pytestmark = pytest.mark.since("03")

ONE_WORKER = {"env": {"DIRTY_WORKERS": "1"}, "dirty_workers": 1}


@pytest.fixture
def one_worker(shared):
    """The step's server with a single dirty worker: a busy worker shows at once."""
    return shared(**ONE_WORKER)


def first_token_time(http: httpx.Client, prompt: str = "hello") -> float:
    result = stream_chat(http, prompt)
    assert result.ended_with_done and not result.errors
    return result.first_token_at


def test_a_client_that_stays_gets_everything(step, one_worker, step_module):
    # The other half of disconnect detection: a live client is never cut off,
    # even when it reads slowly.
    with loopback_client(one_worker.base_url, timeout=60, headers=AUTH) as http:
        with http.stream("POST", "/chat", json={"prompt": "explain"}) as response:
            chunks = []
            for chunk in response.iter_raw(64):
                chunks.append(chunk)
                time.sleep(0.005)
    body = b"".join(chunks).decode()
    assert body.endswith("data: [DONE]\n\n")
    assert '"error"' not in body


# Half a real model's pace: a dropped answer would still hold the worker for
# about a second, several times what the next chat's first token takes.
@pytest.mark.paced(0.5)
def test_dropping_a_stream_frees_the_dirty_worker(step, one_worker, step_module):
    chat_app = step_module("chat_app")
    remaining_tokens = len(chat_app.split_tokens(chat_app.EXPLAIN)) - 3
    # Even at the shortest pause, finishing the dropped answer would take this
    # long (this process's model keeps a real pace: the server's is scaled).
    remaining_seconds = remaining_tokens * chat_app.WORD_DELAY[0] * float(one_worker.env["CHAT_PACE"])
    with loopback_client(one_worker.base_url, timeout=60, headers=AUTH) as http:
        idle = statistics.median(first_token_time(http) for _ in range(3))
        after_drop = []
        for _ in range(3):
            dropped = stream_chat(http, "explain", stop_after_tokens=3)
            assert len(dropped.token_events) == 3
            after_drop.append(first_token_time(http))
    # The next user is served about as fast as on an idle server, not after
    # the abandoned answer.
    assert statistics.median(after_drop) < min(remaining_seconds / 2, idle + 0.5), (idle, after_drop)


def test_sockets_return_to_their_idle_count(step, start):
    server = start(env={"DIRTY_WORKERS": "2"}, dirty_workers=2)
    headers = {**AUTH, "Connection": "close"}

    def full_round(http):
        # Two answers in a row reach both dirty workers (round robin).
        for prompt in ("hello", "code"):
            assert stream_chat(http, prompt).ended_with_done

    with loopback_client(server.base_url, timeout=60, headers=headers) as http:
        full_round(http)
    idle = settled_socket_count(server.pids)

    with loopback_client(server.base_url, timeout=60, headers=headers) as http:
        for _ in range(10):
            stream_chat(http, "explain", stop_after_tokens=2)
            assert http.post("/chat/sync", json={"prompt": "hi"}).status_code == 200
            assert stream_chat(http, "streaming").ended_with_done
        full_round(http)

    deadline = time.monotonic() + 10
    while (count := socket_count(server.pids())) != idle and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count == idle


# What gunicorn_conf.HangUps leaves of a hang-up in the server's log.
CALM_LINE = r"client hung up: the request on dirty worker \d+ is cancelled"


@pytest.mark.paced
def test_a_hang_up_is_one_calm_log_line(step, start):
    server = start(**ONE_WORKER)
    with loopback_client(server.base_url, timeout=60, headers=AUTH) as http:
        dropped = stream_chat(http, "explain", stop_after_tokens=3)
        assert len(dropped.token_events) == 3
        server.wait_for_log(CALM_LINE)
        # The one dirty worker answers the next chat once it has dealt with
        # the hang-up, so whatever it logs of the hang-up is in the log by then.
        assert first_token_time(http) > 0
    log = server.log()
    assert len(re.findall(CALM_LINE, log)) == 1, f"a hang-up should give one calm line:\n{log}"
    for noise in ("Traceback", "ERROR", "Broken pipe", "Connection lost"):
        assert noise not in log, f"a hang-up should log no {noise!r}:\n{log}"


def test_a_model_that_fails_still_logs_its_traceback(step, start_faulty):
    server = start_faulty("raise:3", **ONE_WORKER)
    with loopback_client(server.base_url, timeout=60, headers=AUTH) as http:
        result = stream_chat(http, "explain")
    assert [error["type"] for error in result.errors] == ["model_error"], result.text
    server.wait_for_log(r"Traceback[\s\S]*RuntimeError: injected fault: the model crashed")
    assert "ERROR" in server.log(), "a model that fails should be logged as an error"
    assert not re.search(CALM_LINE, server.log()), "a model that fails is not a hang-up"

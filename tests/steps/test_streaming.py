"""The SSE wire protocol of POST /chat (step 03 on)."""

import json
import re

import pytest

from harness.server import AUTH, loopback_client
from harness.sse import stream_chat

pytestmark = pytest.mark.since("03")

DATA_LINE = re.compile(r"^data: (\[DONE\]|\{.*\})$")


@pytest.fixture
def chat(client):
    return lambda prompt="hello", **kwargs: stream_chat(client, prompt, **kwargs)


def test_headers(step, chat):
    result = chat()
    assert result.status == 200
    assert result.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert result.headers["cache-control"] == "no-cache"
    assert result.headers["x-accel-buffering"] == "no"


def test_every_event_is_one_data_line(step, chat):
    result = chat("code please")
    body = result.body.decode("utf-8")
    # Events are separated by one blank line and nothing else is on the wire.
    assert body.endswith("\n\n")
    events = body[:-2].split("\n\n")
    assert len(events) == len(result.events) > 5
    for event in events:
        assert DATA_LINE.match(event), event
    assert events[-1] == "data: [DONE]"
    assert events.count("data: [DONE]") == 1


def test_every_event_but_done_carries_a_token(step, chat):
    result = chat("explain")
    for payload in result.payloads:
        assert isinstance(payload["token"], str)
        assert "error" not in payload


@pytest.mark.parametrize("prompt", ["hello", "explain", "streaming", "code", "anything else"])
def test_stream_text_equals_sync_text(step, chat, client, prompt):
    streamed = chat(prompt)
    synced = client.post("/chat/sync", json={"prompt": prompt}).json()["response"]
    assert streamed.text == synced
    assert streamed.ended_with_done


@pytest.mark.paced
def test_tokens_arrive_progressively(step, chat):
    result = chat("explain")
    tokens = result.token_events
    assert len(tokens) > 20
    # Arrival times only grow, and the answer arrives spread over its length:
    # half the tokens are in before the last one by a clear margin.
    times = [event.at for event in tokens]
    assert times == sorted(times)
    middle = times[len(times) // 2]
    assert middle - times[0] > (times[-1] - times[0]) / 4
    assert times[-1] - middle > (times[-1] - times[0]) / 4


@pytest.mark.paced
def test_first_token_comes_long_before_the_last(step, chat):
    result = chat("explain")
    tokens = result.token_events
    # Ordering, not a wall-clock threshold: the first token's arrival splits
    # the stream so that almost all of it comes later.
    assert tokens[0].at - result.started < (tokens[-1].at - result.started) / 5


def test_bad_input_on_chat_gets_json_before_any_stream(step, client):
    response = client.post("/chat", json={"prompt": "   "})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert "blank" in json.dumps(response.json())


@pytest.mark.parametrize("body", [{"prompt": 1}, ["x"], {"thinking": True}])
def test_chat_validates_like_chat_sync(step, client, body):
    response = client.post("/chat", json=body)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_chat_refuses_other_content_types(step, client):
    response = client.post("/chat", data={"prompt": "hello"})
    assert response.status_code == 415
    response = client.post("/chat", content=b"x" * 100_000, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_model_error_mid_stream_becomes_an_error_event(step, start_faulty):
    server = start_faulty("raise:3", dirty_workers=1, env={"DIRTY_WORKERS": "1"})
    with loopback_client(server.base_url, timeout=30, headers=AUTH) as http:
        result = stream_chat(http, "explain")
        assert result.status == 200
        # Three tokens made it, then one error event, then [DONE].
        assert len(result.token_events) == 3
        assert len(result.errors) == 1
        assert "error" in result.payloads[-1]
        assert result.errors[0]["type"] == "model_error"
        assert "injected fault" in result.errors[0]["message"]
        assert "Traceback" not in result.errors[0]["message"], "the worker's traceback belongs in the log"
        assert result.ended_with_done
        # The sync endpoint answers the same failure with a clear 503.
        response = http.post("/chat/sync", json={"prompt": "explain"})
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert "model" in detail
        assert "injected fault" in detail
        assert "Traceback" not in detail, "the worker's traceback belongs in the log"
        assert http.get("/health").status_code == 200


def test_error_events_name_their_kind(step, step_module):
    """What a client reads when a stream fails: busy, timeout or model_error.

    The busy kind comes from a wait in line longer than MAX_WAIT (30 s), too
    long for a live test; the line itself is tested in test_capacity.py.
    """
    from gunicorn.dirty import DirtyAppError, DirtyTimeoutError

    main = step_module("main")
    busy = main.error_event(main.Busy("waited 30 s for a free model worker", 10))
    assert busy == {"error": {"message": "waited 30 s for a free model worker", "type": "busy"}}
    assert main.error_event(DirtyTimeoutError("Worker timeout", 10))["error"]["type"] == "timeout"
    assert main.error_event(DirtyAppError("boom"))["error"]["type"] == "model_error"

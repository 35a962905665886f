"""Step 06: API keys, rate limits, metrics, request ids in JSON logs, the
OpenAI-compatible endpoint, and the deployment files."""

import json
import re

import pytest

from harness.server import AUTH, DEV_KEY, loopback_client
from harness.sse import stream_chat

pytestmark = pytest.mark.since("06")

KEY = DEV_KEY


def test_chat_endpoints_need_a_key(step, server):
    with loopback_client(server.base_url, timeout=30) as anonymous:
        for path in ("/chat", "/chat/sync", "/v1/chat/completions"):
            response = anonymous.post(path, json={"prompt": "hi"})
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
            assert "missing API key" in response.json()["detail"]
            wrong = anonymous.post(path, json={"prompt": "hi"}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert wrong.json() == {"detail": "invalid API key"}
        # Health and metrics stay open, for load balancers and scrapers.
        assert anonymous.get("/health").json() == {"status": "ok"}
        assert anonymous.get("/metrics").status_code == 200


def test_the_key_comes_from_the_environment(step, start):
    server = start(env={"CHAT_API_KEY": "s3cret", "DIRTY_WORKERS": "1"}, dirty_workers=1)
    with loopback_client(server.base_url, timeout=30) as http:
        dev = http.post("/chat/sync", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {KEY}"})
        assert dev.status_code == 401
        ok = http.post("/chat/sync", json={"prompt": "hi"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
    assert "CHAT_API_KEY is not set" not in server.log()


def test_the_dev_key_warns_at_startup(step, server):
    assert "CHAT_API_KEY is not set" in server.log()


def test_rate_limit_answers_429_with_retry_after(step, start):
    server = start(env={"CHAT_RATE_LIMIT": "3/minute", "DIRTY_WORKERS": "1"}, dirty_workers=1)
    with loopback_client(server.base_url, timeout=30, headers=AUTH) as http:
        statuses = [http.post("/chat/sync", json={"prompt": "hi"}).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = http.post("/chat", json={"prompt": "hi"})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "rate limit" in refused.json()["detail"]
        assert http.get("/health").status_code == 200


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
def quiet_client(start):
    """A client of a server of its own: a shared server may still be ending
    another test's stream, whose duration would land between two readings."""
    server = start(env={"DIRTY_WORKERS": "1"}, dirty_workers=1)
    with loopback_client(server.base_url, timeout=60, headers=AUTH) as http:
        yield http


def test_metrics_count_requests_streams_and_tokens(step, quiet_client):
    client = quiet_client
    before = client.get("/metrics").text
    result = stream_chat(client, "hello")
    assert client.post("/chat/sync", json={"prompt": "   "}).status_code == 422
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    requests = 'chat_http_requests_total'
    assert metric(text, requests, '{endpoint="/chat",status="200"}') == metric(
        before, requests, '{endpoint="/chat",status="200"}') + 1
    assert metric(text, requests, '{endpoint="/chat/sync",status="422"}') >= 1
    tokens = "chat_tokens_streamed_total"
    assert metric(text, tokens) - metric(before, tokens) == len(result.token_events)
    first = "chat_time_to_first_token_seconds_count"
    assert metric(text, first) == metric(before, first) + 1
    duration = "chat_stream_duration_seconds_count"
    assert metric(text, duration) == metric(before, duration) + 1
    assert metric(text, "chat_streams_in_flight") == 0


def test_metrics_count_dirty_errors(step, start_faulty):
    server = start_faulty("raise:2", env={"DIRTY_WORKERS": "1"}, dirty_workers=1)
    with loopback_client(server.base_url, timeout=30, headers=AUTH) as http:
        assert stream_chat(http, "hello").errors
        text = http.get("/metrics").text
    assert metric(text, "chat_dirty_errors_total", '{type="model_error"}') == 1


def json_lines(log: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines() if line.strip()]


def test_logs_are_json_with_the_request_id_on_both_sides(step, server, client):
    response = client.post("/chat/sync", json={"prompt": "hi"}, headers={"X-Request-ID": "trace-me-42"})
    assert response.headers["x-request-id"] == "trace-me-42"
    server.wait_for_log(r'"request_id": "trace-me-42".*"tokens"')
    # The access line comes once the response is sent, maybe after the dirty worker's last line.
    server.wait_for_log(r"request_id=trace-me-42")
    lines = json_lines(server.log())
    mine = [line for line in lines if line.get("request_id") == "trace-me-42"]
    # The HTTP worker and the dirty worker both logged it: two processes.
    assert {line["message"] for line in mine} >= {"answer started", "generating an answer", "answer ended"}
    assert len({line["pid"] for line in mine}) == 2
    access = [line["message"] for line in lines if line["name"] == "gunicorn.access"]
    assert any("request_id=trace-me-42" in message for message in access)


def test_a_strange_request_id_is_replaced(step, client):
    response = client.post("/chat/sync", json={"prompt": "hi"}, headers={"X-Request-ID": "bad id\twith tabs"})
    assert re.fullmatch(r"[0-9a-f]{16}", response.headers["x-request-id"])


def openai_sdk():
    """The OpenAI SDK, imported when a test needs it: the import takes most of a
    second, in every test process that collects this file."""
    import openai

    return openai


@pytest.fixture
def openai_client(server):
    with openai_sdk().OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=30) as api:
        yield api


def test_openai_client_gets_the_answer(step, openai_client, client):
    expected = client.post("/chat/sync", json={"prompt": "explain"}).json()["response"]
    completion = openai_client.chat.completions.create(
        model="dirty-chat",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "explain"}],
    )
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens > 10


def test_openai_client_streams_the_answer(step, openai_client, client):
    expected = client.post("/chat/sync", json={"prompt": "code"}).json()["response"]
    chunks = list(
        openai_client.chat.completions.create(
            model="dirty-chat", messages=[{"role": "user", "content": "code"}], stream=True
        )
    )
    assert len(chunks) > 10
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({chunk.id for chunk in chunks}) == 1


def test_openai_wire_format_ends_with_done(step, client):
    body = {"model": "dirty-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.strip().split("\n\n")
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0].removeprefix("data: "))
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": [{"role": "system", "content": "only a system message"}]},
        {"messages": [{"role": "user", "content": "  "}]},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
        {"prompt": "hi"},
    ],
)
def test_openai_endpoint_validates_its_input(step, client, body):
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_openai_endpoint_reports_a_model_error(step, start_faulty):
    server = start_faulty("raise:2", env={"DIRTY_WORKERS": "1"}, dirty_workers=1)
    messages = [{"role": "user", "content": "hi"}]
    openai = openai_sdk()
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=30) as api:
        with pytest.raises(openai.APIError, match="injected fault"):
            list(api.chat.completions.create(model="m", messages=messages, stream=True))
        with pytest.raises(openai.InternalServerError):
            api.chat.completions.create(model="m", messages=messages)

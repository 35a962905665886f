"""The HTTP contract every step keeps: /health, /chat/sync and input validation."""

import pytest
from bad_input import BAD_REQUESTS, JSON, assert_clear_json_error, unsized_body

from harness.server import AUTH, loopback_client


def test_health(step, client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


PROMPTS = ["hello", "Can you explain?", "tell me about streaming", "code please", "weather?"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_chat_sync_answers_with_the_canned_text(step, client, canned, prompt):
    response = client.post("/chat/sync", json={"prompt": prompt})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"response": canned(prompt)}


def test_chat_sync_ignores_a_field_it_does_not_know(step, client, canned):
    response = client.post("/chat/sync", json={"prompt": "hello", "colour": "blue"})
    assert response.status_code == 200, "a field the request does not declare should be ignored"
    assert response.json() == {"response": canned("hello")}


@pytest.mark.until("03")
@pytest.mark.parametrize("thinking", [True, False, "yes"], ids=repr)
def test_thinking_is_an_unknown_field_before_it_is_taught(step, client, canned, thinking):
    response = client.post("/chat/sync", json={"prompt": "hello", "thinking": thinking})
    assert response.status_code == 200, "before step 04, `thinking` should be ignored like any unknown field"
    assert response.json() == {"response": canned("hello")}, "no thinking before step 04"


@pytest.mark.since("04")
def test_chat_sync_accepts_thinking_false(step, client, canned):
    response = client.post("/chat/sync", json={"prompt": "hello", "thinking": False})
    assert response.status_code == 200
    assert response.json()["response"] == canned("hello")


@pytest.mark.parametrize("path", ["/chat/sync"])
@pytest.mark.parametrize("case", BAD_REQUESTS, ids=str)
def test_bad_input_gets_a_clear_json_error(step, client, path, case):
    kwargs, status, words = BAD_REQUESTS[case]
    assert_clear_json_error(client.post(path, **kwargs), status, words)
    # And the server is still there for the next request.
    assert client.get("/health").status_code == 200


def test_body_without_length_is_limited_too(step, client):
    response = client.post("/chat/sync", content=unsized_body(), headers=JSON)
    assert_clear_json_error(response, 413, "larger than")
    # The rest of the body was never read: the server closes the connection,
    # and says so, or the client would send its next request down a dead one.
    assert response.headers.get("connection") == "close", response.headers
    assert client.get("/health").status_code == 200


def test_unknown_path_and_method(step, client):
    assert client.get("/nope").status_code == 404
    assert client.get("/chat/sync").status_code == 405


def test_server_survives_a_burst_of_garbage(step, server):
    with loopback_client(server.base_url, timeout=30, headers=AUTH) as http:
        for case in BAD_REQUESTS.values():
            http.post("/chat/sync", **case[0])
        assert http.get("/health").json() == {"status": "ok"}

"""Thinking mode (step 04 on): a visible thinking phase, then the answer."""

import pytest
from bad_input import THINKING_REQUESTS, assert_clear_json_error

from harness.sse import stream_chat

pytestmark = pytest.mark.since("04")


def phases(result) -> list[str]:
    return [payload["phase"] for payload in result.payloads]


def test_thinking_comes_first_then_the_answer(step, client, step_module):
    result = stream_chat(client, "hello", thinking=True)
    assert result.ended_with_done and not result.errors
    found = phases(result)
    assert set(found) == {"thinking", "answer"}
    # One switch only: every thinking event comes before every answer event.
    first_answer = found.index("answer")
    assert all(phase == "thinking" for phase in found[:first_answer])
    assert all(phase == "answer" for phase in found[first_answer:])
    thinking_text = "".join(p["token"] for p in result.payloads if p["phase"] == "thinking")
    assert thinking_text == "[thinking.....]\n\n"
    answer_text = "".join(p["token"] for p in result.payloads if p["phase"] == "answer")
    assert answer_text == step_module("chat_app").GREETING


def test_without_thinking_every_event_is_answer(step, client):
    result = stream_chat(client, "hello", thinking=False)
    assert phases(result) and set(phases(result)) == {"answer"}
    assert "[thinking" not in result.text


@pytest.mark.paced
def test_thinking_is_slower_than_the_answer(step, client):
    result = stream_chat(client, "explain", thinking=True)
    times = {"thinking": [], "answer": []}
    for event in result.events[:-1]:
        times[event.json()["phase"]].append(event.at)

    def mean_gap(stamps):
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    # The dots come at a slower pace than the words.
    assert mean_gap(times["thinking"][1:-1]) > mean_gap(times["answer"])


@pytest.mark.parametrize("thinking", [True, False])
def test_sync_returns_the_same_text_as_the_stream(step, client, thinking):
    streamed = stream_chat(client, "code", thinking=thinking)
    synced = client.post("/chat/sync", json={"prompt": "code", "thinking": thinking}).json()["response"]
    assert streamed.text == synced
    assert synced.startswith("[thinking") is thinking


@pytest.mark.parametrize("case", THINKING_REQUESTS, ids=str)
def test_thinking_that_is_not_a_boolean_gets_a_clear_json_error(step, client, case):
    kwargs, status, words = THINKING_REQUESTS[case]
    text = assert_clear_json_error(client.post("/chat/sync", **kwargs), status, words)
    assert "thinking" in text, f"the error should name the thinking field: {text}"

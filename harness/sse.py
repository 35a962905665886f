"""A small, strict SSE client for the chat endpoints.

It keeps the raw bytes and the arrival time of every event, so that tests can
check the wire format and the pacing, and benchmarks can time tokens.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

DONE = "[DONE]"


class StreamFormatError(AssertionError):
    """The server broke the wire format of a chat stream (an assertion: a test that meets it fails)."""


@dataclass
class Event:
    """One SSE event: its raw text (without the blank line) and when it arrived."""

    raw: str
    at: float

    @property
    def lines(self) -> list[str]:
        return self.raw.split("\n")

    @property
    def data(self) -> str:
        return "\n".join(line[len("data: "):] for line in self.lines if line.startswith("data: "))

    @property
    def done(self) -> bool:
        return self.data == DONE

    def json(self) -> dict:
        try:
            return json.loads(self.data)
        except json.JSONDecodeError:
            raise StreamFormatError(
                f"the stream sent an event whose data is not JSON: {self.data[:80]!r}; every event of a chat"
                f" stream is one JSON object, and the last one is `data: {DONE}`"
            ) from None

    @property
    def is_token(self) -> bool:
        """An event that carries a non-empty token (not [DONE], not a waiting event)."""
        return not self.done and bool(self.json().get("token"))


@dataclass
class ChatStream:
    """Everything a client saw of one POST /chat."""

    status: int
    headers: httpx.Headers
    started: float
    body: bytes = b""
    events: list[Event] = field(default_factory=list)
    finished: float | None = None

    @property
    def payloads(self) -> list[dict]:
        """The JSON of every event but [DONE]."""
        return [event.json() for event in self.events if not event.done]

    @property
    def text(self) -> str:
        return "".join(payload.get("token", "") for payload in self.payloads)

    @property
    def token_events(self) -> list[Event]:
        return [e for e in self.events if e.is_token]

    @property
    def first_token_at(self) -> float | None:
        events = self.token_events
        return events[0].at - self.started if events else None

    @property
    def errors(self) -> list[dict]:
        return [p["error"] for p in self.payloads if "error" in p]

    @property
    def ended_with_done(self) -> bool:
        return bool(self.events) and self.events[-1].done


def split_events(data: bytes) -> tuple[list[bytes], bytes]:
    """Cut SSE bytes into events: the complete ones at the head of `data`, and the unfinished rest.

    An event ends with a blank line; each is returned without it. A reader
    of a stream keeps the rest and puts the next chunk after it, since an
    event may be split between two reads.
    """
    *events, rest = data.split(b"\n\n")
    return events, rest


def iter_events(response: httpx.Response, result: ChatStream):
    """Yield each event of an SSE response as soon as it is complete.

    The raw bytes go to `result.body` as they arrive. An event's time is that
    of the read that completed it: events read together share it.
    """
    rest = b""
    for chunk in response.iter_raw():
        arrived = time.monotonic()
        result.body += chunk
        events, rest = split_events(rest + chunk)
        for raw in events:
            yield Event(raw.decode("utf-8"), arrived)


def stream_chat(
    client: httpx.Client,
    prompt: str,
    thinking: bool = False,
    *,
    path: str = "/chat",
    stop_after_tokens: int | None = None,
    json_body: dict | None = None,
) -> ChatStream:
    """POST a prompt and read the SSE answer event by event.

    With `stop_after_tokens`, the client hangs up after that many token
    events, as a user pressing Stop would.
    """
    body = json_body if json_body is not None else {"prompt": prompt, "thinking": thinking}
    started = time.monotonic()
    with client.stream("POST", path, json=body) as response:
        result = ChatStream(status=response.status_code, headers=response.headers, started=started)
        if response.status_code != 200 or "text/event-stream" not in response.headers.get("content-type", ""):
            result.body = response.read()
            result.finished = time.monotonic()
            return result
        tokens = 0
        for event in iter_events(response, result):
            result.events.append(event)
            tokens += event.is_token
            if stop_after_tokens is not None and tokens >= stop_after_tokens:
                break
        result.finished = time.monotonic()
    return result

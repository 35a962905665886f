"""Load helpers: fire many chats at once, say how each one ended, sample a server.

Used by the overload and hardening tests and by `make soak`; a benchmark can
build on it too. Nothing in here is part of the tutorial's code.

Every chat must end in exactly one of three ways (CONTRIBUTING.md, wire protocol):

- COMPLETE: a stream of tokens ending with ``data: [DONE]``;
- REFUSED: ``503`` JSON with a ``Retry-After`` header, before any stream starts;
- FAILED: a stream that has begun tells of one error, ``{"error": ...}``, then ``[DONE]``.

Anything else (a connection closed without a word, a stream without
``[DONE]``, a client timeout) is a protocol violation.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.procs import MEMORY_KIND, memory_kib, socket_count
from harness.server import AUTH, loopback_client
from harness.sse import ChatStream, Event, iter_events, stream_chat

COMPLETE = "complete"
REFUSED = "refused"
FAILED = "failed"
ERROR_TYPES = {"busy", "timeout", "model_error"}


class ProtocolViolation(AssertionError):
    """A chat ended in none of the three allowed ways."""


def classify(result: ChatStream) -> str:
    """COMPLETE, REFUSED or FAILED; raise ProtocolViolation for anything else."""

    def violation(why: str) -> ProtocolViolation:
        return ProtocolViolation(f"{why}: status {result.status}, body {result.body[-300:]!r}")

    content_type = result.headers.get("content-type", "")
    if result.status == 503:
        if not content_type.startswith("application/json"):
            raise violation("a 503 that is not JSON")
        retry_after = result.headers.get("retry-after", "")
        if not (retry_after.isdigit() and int(retry_after) > 0):
            raise violation(f"a 503 without a usable Retry-After ({retry_after!r})")
        if not isinstance(json.loads(result.body).get("detail"), str):
            raise violation("a 503 without a detail")
        return REFUSED
    if result.status != 200 or not content_type.startswith("text/event-stream"):
        raise violation("neither a stream nor a 503")
    if not result.ended_with_done or sum(event.done for event in result.events) != 1:
        raise violation("a stream that does not end with exactly one [DONE]")
    if not result.body.endswith(b"\n\n"):
        raise violation("a stream cut in the middle of an event")
    payloads = result.payloads
    errors = [index for index, payload in enumerate(payloads) if "error" in payload]
    if not errors:
        if not all(isinstance(payload.get("token"), str) for payload in payloads):
            raise violation("an event that is neither a token nor an error")
        if not result.text:
            raise violation("a complete stream without a single token")
        return COMPLETE
    if errors != [len(payloads) - 1]:
        raise violation("an error event that is not the last event before [DONE], or more than one")
    error = payloads[-1]["error"]
    if not (isinstance(error.get("message"), str) and error.get("type") in ERROR_TYPES):
        raise violation(f"an error event without a message or a known type: {error}")
    return FAILED


def ended_by_a_dead_worker(status: int, error: dict) -> bool:
    """Whether a chat ended as one does whose dirty worker died mid-answer.

    `status` is the HTTP status, `error` the error event of a stream (status
    200) or the JSON body of /chat/sync. Gunicorn 27.0.1's dirty arbiter learns
    of the death twice: the worker's socket closes, and the worker exits
    (SIGCHLD). Seen in that order, the arbiter fails the request at once: a
    model_error event, or 503. Seen the other way round, it drops the request
    without a word, and the chat fails only when the HTTP worker's deadline for
    the whole answer (ANSWER_TIMEOUT) runs out: a timeout event, or 504.
    """
    if status == 200:
        return error.get("type") in ("model_error", "timeout")
    detail = error.get("detail", "")
    return (status == 503 and detail.startswith("the model is unavailable")) or (
        status == 504 and detail.startswith("the model took too long")
    )


@dataclass
class Shot:
    """One chat of a burst: what came back, or what went wrong on the way."""

    index: int
    result: ChatStream | None = None
    exception: BaseException | None = None

    @property
    def kind(self) -> str:
        """COMPLETE, REFUSED or FAILED; raise ProtocolViolation otherwise."""
        if self.result is None:
            raise ProtocolViolation(f"chat {self.index} got no answer: {self.exception!r}")
        return classify(self.result)


def fire(
    base_url: str,
    count: int,
    prompt: str = "hello",
    *,
    body: Callable[[int], dict] | None = None,
    timeout: float = 60.0,
) -> list[Shot]:
    """Send `count` chats at the same moment, one thread and one connection each.

    Every read waits at most `timeout` seconds, and the whole burst at most
    `timeout` more than its slowest answer could take: a chat still running
    after that is reported as a Shot without a result.
    """
    shots = [Shot(index) for index in range(count)]
    ready = threading.Barrier(count)

    def run(shot: Shot) -> None:
        payload = body(shot.index) if body else {"prompt": prompt}
        with loopback_client(base_url, timeout=timeout, headers=AUTH) as http:
            ready.wait()
            try:
                shot.result = stream_chat(http, prompt, json_body=payload)
            except Exception as exc:  # reported through Shot.kind
                shot.exception = exc

    threads = [threading.Thread(target=run, args=(shot,), daemon=True) for shot in shots]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 2 * timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for shot, thread in zip(shots, threads, strict=True):
        if thread.is_alive():
            shot.exception = TimeoutError(f"still running after {2 * timeout:.0f} s")
    return shots


def past_halfway(moment: float, start: float, end: float) -> bool:
    """Whether `moment` came later than halfway from `start` to `end`.

    How a test tells that one answer waited for another: each chat is read
    by a thread of its own, and on a busy machine a thread may come to a
    word tens of milliseconds late, so "after the other's last word" cannot
    be told to the millisecond. Two answers given at once, or a chat that
    did not wait, miss halfway by half an answer.
    """
    return moment > start + (end - start) / 2


class WatchedChat:
    """One chat read on a thread of its own, watched while it streams.

    For tests that act in the middle of a stream (kill a worker, stop the
    server, send another chat): `wait_for_tokens` returns once that many
    tokens have arrived, `first_event` and `first_token` once the first has,
    and `finish` returns everything the client saw. Every read, and every
    wait here unless told otherwise, lasts at most `timeout` seconds, so a
    stream that stalls ends in an exception, not a hang.
    """

    def __init__(self, base_url: str, prompt: str = "explain", *, timeout: float = 30.0, **body):
        self.base_url = base_url
        self.body = {"prompt": prompt, **body}
        self.timeout = timeout
        self.result: ChatStream | None = None
        self.exception: BaseException | None = None
        self._ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> WatchedChat:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with loopback_client(self.base_url, timeout=self.timeout, headers=AUTH) as http:
                started = time.monotonic()
                with http.stream("POST", "/chat", json=self.body) as response:
                    result = ChatStream(response.status_code, response.headers, started)
                    with self._changed:
                        self.result = result
                    for event in iter_events(response, result):
                        with self._changed:
                            result.events.append(event)
                            self._changed.notify_all()
                    result.finished = time.monotonic()
        except Exception as exc:  # the test sees it through finish()
            self.exception = exc
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    @property
    def running(self) -> bool:
        """True until the chat has ended, one way or another."""
        with self._changed:
            return not self._ended

    def _wait(self, arrived: Callable[[ChatStream], bool], timeout: float | None) -> bool:
        def seen() -> bool:
            return self.result is not None and arrived(self.result)

        with self._changed:
            self._changed.wait_for(lambda: seen() or self._ended, timeout or self.timeout)
            return seen()

    def wait_for_tokens(self, count: int, timeout: float | None = None) -> bool:
        """True once `count` tokens have arrived; False if the chat ended or time ran out first."""
        return self._wait(lambda result: len(result.token_events) >= count, timeout)

    def first_event(self, timeout: float | None = None) -> dict:
        """The payload of the chat's first event (a token, or a place in line), once it has arrived.

        Raises ProtocolViolation if the chat ends, or time runs out, before any event.
        """
        if not self._wait(lambda result: bool(result.events), timeout):
            raise ProtocolViolation(f"no event came: {self!r}")
        with self._changed:
            return self.result.payloads[0]

    def first_token(self, timeout: float | None = None) -> Event:
        """The chat's first token, once it has arrived.

        Raises ProtocolViolation if the chat ends, or time runs out, before any token.
        """
        if not self.wait_for_tokens(1, timeout):
            raise ProtocolViolation(f"no token came: {self!r}")
        with self._changed:
            return self.result.token_events[0]

    def finish(self, timeout: float | None = None) -> ChatStream:
        """Wait for the chat to end and return it; raise what went wrong, if anything did.

        A chat that ends without [DONE] raises ProtocolViolation.
        """
        timeout = self.timeout * 2 if timeout is None else timeout
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the chat was still running after {timeout:.0f} s: {self!r}")
        if self.exception is not None:
            raise self.exception
        assert self.result is not None
        if not self.result.ended_with_done:
            raise ProtocolViolation(f"the chat did not end with [DONE]: {self!r}")
        return self.result

    def __repr__(self) -> str:
        result, state = self.result, "running" if self.running else "ended"
        if result is None:
            return f"<chat {self.body['prompt']!r}, {state}, no answer yet>"
        return (
            f"<chat {self.body['prompt']!r}, {state}: status {result.status}, "
            f"{len(result.events)} events, ends {result.body[-200:]!r}>"
        )


@dataclass
class Sample:
    """One look at a process tree."""

    at: float
    rss_kib: int
    pss_kib: int  # PSS, or USS on a platform without it (harness.procs.MEMORY_KIND)
    sockets: int
    processes: int


def sample(pids: list[int]) -> Sample:
    return Sample(
        at=time.monotonic(),
        rss_kib=memory_kib(pids, "rss"),
        pss_kib=memory_kib(pids, MEMORY_KIND),
        sockets=socket_count(pids),
        processes=len(pids),
    )


@dataclass
class Tally:
    """Counts of chat outcomes, safe to update from several threads."""

    counts: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str | None, violation: str | None = None) -> None:
        with self.lock:
            if violation is not None:
                self.violations.append(violation)
                kind = "violation"
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

"""The bench's clients (one chat each, timed event by event) and its probes: /health
from another process, the client's own event loop, the server's process tree."""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from harness import load as strict
from harness.server import LiveServer
from harness.sse import ChatStream, Event, split_events
from harness.steps import ROOT
from tools.bench.options import PROMPT, Options

# --------------------------------------------------------------------------
# The client: one chat, and what became of it
# --------------------------------------------------------------------------


@dataclass
class ChatResult(ChatStream):
    """A chat stream as harness.sse sees it, plus how the connection ended."""

    transport_error: str | None = None
    dropped: bool = False
    tokens_seen: int = 0

    @property
    def duration(self) -> float | None:
        return self.finished - self.started if self.finished is not None else None

    @property
    def gaps(self) -> list[float]:
        """Seconds between consecutive tokens of this stream."""
        times = [event.at for event in self.token_events]
        return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


def classify(result: ChatResult) -> str:
    """complete, refused (503 + Retry-After before any stream), error (one
    error event, then [DONE]), cut_off (the connection ended without [DONE],
    or without any message) or other (anything else harness.load rejects)."""
    if result.status in (0, 200) and (
        result.transport_error is not None or not result.ended_with_done or not result.payloads
    ):
        return "cut_off"
    try:
        return {strict.COMPLETE: "complete", strict.REFUSED: "refused", strict.FAILED: "error"}[
            strict.classify(result)
        ]
    except (strict.ProtocolViolation, ValueError):
        return "other"


def take_events(buffer: bytes, now: float, result: ChatResult, stop_after_tokens: int | None) -> bytes:
    """Move the complete events at the head of `buffer` into `result`; return the rest.

    Only a chat that will hang up counts its tokens as they come: the
    client's time is the measurement's, so the rest is parsed afterwards.
    """
    events, rest = split_events(buffer)
    for raw in events:
        event = Event(raw.decode("utf-8"), now)
        result.events.append(event)
        result.body += raw + b"\n\n"
        if stop_after_tokens is not None and not event.done and event.json().get("token"):
            result.tokens_seen += 1
            if result.tokens_seen >= stop_after_tokens:
                result.dropped = True
                break
    return rest


class RawClient:
    """A minimal HTTP/1.1 client on asyncio streams, one connection per chat.

    It is the default because it costs the event loop a fraction of what
    httpx costs per event: on 2 cores with 32 streams, httpx alone put tens of
    milliseconds on every first token (BENCH_CLIENT=httpx shows it).
    """

    def __init__(self, base_url: str, connections: int = 1):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        return None

    async def chat(self, prompt: str = PROMPT, *, stop_after_tokens: int | None = None,
                   thinking: bool = False) -> ChatResult:
        """POST /chat and read the SSE answer, timing each event as it arrives.

        With `stop_after_tokens`, hang up after that many tokens, as a user
        pressing Stop would.
        """
        started = time.monotonic()
        result = ChatResult(status=0, headers=httpx.Headers(), started=started)
        writer = None
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            body = json.dumps({"prompt": prompt, "thinking": thinking}).encode()
            writer.write(
                b"POST /chat HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (self.host.encode(), self.port, len(body), body)
            )
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            result.status = int(head[0].split()[1])
            fields = (line.split(":", 1) for line in head[1:] if ":" in line)
            result.headers = httpx.Headers([(name, value.strip()) for name, value in fields])
            if result.headers.get("transfer-encoding", "").lower() != "chunked":
                length = result.headers.get("content-length")
                result.body = await (reader.readexactly(int(length)) if length else reader.read())
                return result
            buffer = b""
            while not result.dropped:
                size = int((await reader.readline()).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                buffer = take_events(buffer + chunk[:-2], time.monotonic(), result, stop_after_tokens)
        except (OSError, EOFError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            result.transport_error = f"{type(exc).__name__}: {exc}"
        finally:
            result.finished = time.monotonic()
            if writer is not None:
                writer.close()
        return result


class HttpxClient:
    """The same chat through httpx.AsyncClient, to compare (BENCH_CLIENT=httpx)."""

    def __init__(self, base_url: str, connections: int = 1):
        # One connection per stream, so that no chat waits for the client's pool.
        limits = httpx.Limits(max_connections=connections + 8, max_keepalive_connections=connections + 8)
        timeout = httpx.Timeout(90.0, connect=15.0)
        self.http = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout)

    async def __aenter__(self) -> HttpxClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.http.aclose()

    async def chat(self, prompt: str = PROMPT, *, stop_after_tokens: int | None = None,
                   thinking: bool = False) -> ChatResult:
        started = time.monotonic()
        result = ChatResult(status=0, headers=httpx.Headers(), started=started)
        try:
            body = {"prompt": prompt, "thinking": thinking}
            async with self.http.stream("POST", "/chat", json=body) as response:
                result.status, result.headers = response.status_code, response.headers
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    result.body = await response.aread()
                    return result
                buffer = b""
                async for chunk in response.aiter_raw():
                    buffer = take_events(buffer + chunk, time.monotonic(), result, stop_after_tokens)
                    if result.dropped:
                        break
        except (httpx.HTTPError, ValueError) as exc:
            result.transport_error = f"{type(exc).__name__}: {exc}"
        finally:
            result.finished = time.monotonic()
        return result


CLIENTS = {"raw": RawClient, "httpx": HttpxClient}


def new_client(base_url: str, connections: int, kind: str = "raw") -> RawClient | HttpxClient:
    return CLIENTS[kind](base_url, connections)


async def chats_at_once(base_url: str, count: int, opts: Options) -> list[ChatResult]:
    async with new_client(base_url, count, opts.client) as client:
        chats = (client.chat(opts.prompt) for _ in range(count))
        return await asyncio.wait_for(asyncio.gather(*chats), opts.scenario_timeout)


# --------------------------------------------------------------------------
# Probes: /health from another process, the client's own loop, the server tree
# --------------------------------------------------------------------------


def health_probe(url: str, interval: float) -> None:
    """Poll GET /health on one kept-alive connection until stdin says stop.

    It runs as its own process (`python -m tools.bench --health-probe URL`) so that neither
    the client's event loop nor its GIL adds to the latencies it reports.
    """
    parts = urlsplit(url)
    latencies: list[float] = []
    # When each answered probe was sent, on the clock the chats are timed by.
    sent: list[float] = []
    errors = 0

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)

    conn = connect()
    print("ready", flush=True)
    started = time.process_time()
    while not select.select([sys.stdin], [], [], 0)[0]:
        begin, begin_monotonic = time.perf_counter(), time.monotonic()
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                latencies.append(time.perf_counter() - begin)
                sent.append(begin_monotonic)
            else:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = connect()
        time.sleep(interval)
    conn.close()
    print(json.dumps({"latencies": latencies, "sent": sent, "errors": errors,
                      "cpu": time.process_time() - started}))


class HealthProbe:
    """The health_probe process, started and stopped around a load."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    @classmethod
    async def start(cls, base_url: str, interval: float = 0.02) -> HealthProbe:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tools.bench", "--health-probe", base_url, "--interval", str(interval),
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        await asyncio.wait_for(proc.stdout.readline(), 30)
        return cls(proc)

    async def stop(self) -> dict:
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        out, _ = await asyncio.wait_for(self.proc.communicate(), 30)
        return json.loads(out)


async def watch_loop(stop: asyncio.Event, interval: float = 0.005) -> list[float]:
    """How late this client's event loop wakes up: its own share of any delay."""
    loop = asyncio.get_running_loop()
    lags = []
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(interval)
        lags.append(loop.time() - before - interval)
    return lags


def tree_sample(server: LiveServer) -> dict:
    look = strict.sample(server.pids())
    return {"pss": look.pss_kib, "rss": look.rss_kib, "sockets": look.sockets, "processes": look.processes}

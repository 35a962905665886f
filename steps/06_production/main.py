"""The chat service for production: API keys, rate limits, metrics, request ids in
the logs and an OpenAI-compatible endpoint, beside the chat page and its stream."""

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from capacity import Busy, Capacity, Place
from chat_request import MAX_BODY_BYTES, ChatRequest, check_input, require_json
from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent, format_sse_event
from fastapi.staticfiles import StaticFiles
from gunicorn.dirty import DirtyClient, DirtyError, DirtyTimeoutError
from gunicorn.dirty.client import get_dirty_socket_path
from gunicorn.dirty.stash import StashClient
from gunicorn_conf import Tables, dirty_workers
from metrics import (
    CHATS_IN_FLIGHT,
    DIRTY_ERRORS,
    STREAM_DURATION,
    STREAMS_IN_FLIGHT,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
    CountRequests,
    render_metrics,
)
from openai_format import Completion, CompletionRequest
from pydantic import BaseModel
from security import rate_limit

log = logging.getLogger("gunicorn.error")

# The dirty app to call, as named in gunicorn_conf.dirty_apps.
CHAT_APP = "chat_app:ChatApp"
# The chat page's files, found next to this module from any working directory.
STATIC_DIR = Path(__file__).parent / "static"

# The deadlines, set together from the longest answer (about 7 s, and 2.5 s
# more of thinking):
# - a whole answer may take ANSWER_TIMEOUT once it has a dirty worker;
# - a request waits in line at most MAX_WAIT, with WAITING_PER_WORKER
#   requests per dirty worker at most, and hears where it stands every
#   WAIT_UPDATE seconds; gunicorn_conf.dirty_timeout bounds a gap between tokens.
ANSWER_TIMEOUT = 30.0
MAX_WAIT = 30.0
WAITING_PER_WORKER = 4
WAIT_UPDATE = 5.0
# What a refused client is told: by then a long answer has finished.
RETRY_AFTER = 10
# What a client is told while a model loads, and how long a look at the
# stash may take before /ready gives up on the arbiter.
LOADING_RETRY_AFTER = 5
STASH_TIMEOUT = 2.0
# How often the line looks again at the dirty workers there are.
FOLLOW_EVERY = 0.5


class ChatResponse(BaseModel):
    response: str


async def look_at_model_workers() -> None:
    """Size the line from the dirty workers the arbiter keeps now, however their
    number was set (DIRTY_WORKERS, --dirty-workers, TTIN or TTOU)."""
    # A look that fails changes nothing: the line keeps what it knew.
    with contextlib.suppress(DirtyError):
        loaded, workers = await asyncio.to_thread(model_workers)
        capacity.resize(workers, WAITING_PER_WORKER * workers, loading=loaded < workers)


async def follow_model_workers() -> None:
    # Looks again and again, so that a model that has loaded starts those waiting.
    while True:
        await look_at_model_workers()
        await asyncio.sleep(FOLLOW_EVERY)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    follower = asyncio.create_task(follow_model_workers())
    yield
    follower.cancel()


app = FastAPI(title="Dirty chat", lifespan=lifespan)
# Bad input gets a clear JSON error before the model is asked (chat_request.py).
check_input(app)
app.add_middleware(CountRequests)
# gunicorn_conf's number until a look at the dirty workers (at start, and
# before every chat) says how many the arbiter keeps.
capacity = Capacity(dirty_workers, WAITING_PER_WORKER * dirty_workers, RETRY_AFTER)


@app.exception_handler(DirtyError)
async def dirty_error(request: Request, exc: DirtyError):
    # A failure on the dirty side is the model being unavailable, not a bug here.
    # The client gets its message; its details (the worker's traceback among
    # them) stay in the server's log.
    if isinstance(exc, DirtyTimeoutError):
        return JSONResponse({"detail": f"the model took too long: {exc.message}"}, status_code=504)
    return JSONResponse({"detail": f"the model is unavailable: {exc.message}"}, status_code=503)


@app.exception_handler(Busy)
async def busy(request: Request, exc: Busy):
    return JSONResponse(
        {"detail": f"the model is busy: {exc}"},
        status_code=503,
        headers={"Retry-After": str(exc.retry_after)},
    )


@app.get("/health")
async def health():
    return {"status": "ok"}


def model_workers() -> tuple[int, int]:
    """How many dirty workers have loaded the model, and how many the arbiter keeps.

    gunicorn_conf's hooks keep both in the stash. The stash client blocks:
    call this in a thread.
    """
    with StashClient(get_dirty_socket_path(), timeout=STASH_TIMEOUT) as store:
        return len(store.keys(Tables.LOADED)), store.get(Tables.POOL, "workers", 0)


@app.get("/ready")
async def ready():
    # /health says the process answers; this says a model can answer too,
    # for load balancers and orchestrators that wait before sending traffic.
    loaded, workers = await asyncio.to_thread(model_workers)
    if not loaded:
        return JSONResponse(
            {"status": "loading", "loaded": 0, "workers": workers},
            status_code=503,
            headers={"Retry-After": str(LOADING_RETRY_AFTER)},
        )
    return {"status": "ready", "loaded": loaded, "workers": workers}


@app.get("/metrics")
async def metrics():
    # Open like /health: keep it on an internal network, or behind the proxy.
    return Response(render_metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")


REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id(response: Response, x_request_id: Annotated[str | None, Header()] = None) -> str:
    """The caller's X-Request-ID if it is sane (a proxy may set one), else a new
    one; it goes back in the response and into every log line of the request."""
    rid = x_request_id if x_request_id and REQUEST_ID.fullmatch(x_request_id) else uuid.uuid4().hex[:16]
    response.headers["X-Request-ID"] = rid
    return rid


RequestId = Annotated[str, Depends(request_id)]


async def place_in_line():
    """Join the line for a dirty worker, or answer 503 before any stream starts."""
    # A fresh look first, so that a chat sees the workers /ready saw before it.
    await look_at_model_workers()
    place = capacity.join()
    # In flight until the answer ends, so that a restart can wait for it (rolling_restart.py).
    with CHATS_IN_FLIGHT.track_inprogress():
        try:
            yield place
        finally:
            place.leave()


Line = Annotated[Place, Depends(place_in_line)]


async def dirty_client() -> AsyncIterator[DirtyClient]:
    """One client per request, closed when the request is over.

    The shared client of get_dirty_client_async() would leave a socket open
    after every request, and could hand a stream the leftovers of another.
    A dependency, not an `async with` in the endpoint: a stream's generator
    may be left paused when its client hangs up, but FastAPI always tears
    down a request's dependencies, and closing the socket is what stops the
    dirty worker.
    """
    async with DirtyClient(get_dirty_socket_path(), timeout=ANSWER_TIMEOUT) as client:
        yield client


Dirty = Annotated[DirtyClient, Depends(dirty_client)]


def waiting_event(position: int) -> dict:
    event = {"token": "", "waiting": position}
    if capacity.loading:
        # The line stands still while a model worker loads: say why.
        event["reason"] = "loading"
    return event


def error_event(exc: Exception) -> dict:
    if isinstance(exc, Busy):
        kind = "busy"
    elif isinstance(exc, DirtyTimeoutError):
        kind = "timeout"
    else:
        kind = "model_error"
    # As in dirty_error: the message, not the details.
    message = exc.message if isinstance(exc, DirtyError) else str(exc)
    return {"error": {"message": message, "type": kind}}


async def model_events(
    client: DirtyClient, prompt: str, thinking: bool, rid: str, started: float
) -> AsyncIterator[dict]:
    """The model's events for one request, counted for /metrics and logged."""
    log.info("answer started", extra={"request_id": rid})
    tokens = 0
    STREAMS_IN_FLIGHT.inc()
    try:
        # The request id travels to the dirty worker, which logs it too.
        async for event in client.stream_async(CHAT_APP, "stream", prompt, thinking, rid):
            if tokens == 0:
                TIME_TO_FIRST_TOKEN.observe(time.monotonic() - started)
            tokens += 1
            TOKENS.inc()
            yield event
    except DirtyError as exc:
        DIRTY_ERRORS.labels(error_event(exc)["error"]["type"]).inc()
        raise
    finally:
        STREAMS_IN_FLIGHT.dec()
        STREAM_DURATION.observe(time.monotonic() - started)
        log.info("answer ended", extra={"request_id": rid, "tokens": tokens})


# Who may call, and how often: checked before anything else is done.
PROTECTED = [Depends(rate_limit), Depends(require_json)]


@app.post(
    "/chat/sync",
    response_model=ChatResponse,
    dependencies=PROTECTED,
    max_body_size=MAX_BODY_BYTES,
)
async def chat_sync(request: ChatRequest, place: Line, client: Dirty, rid: RequestId):
    started = time.monotonic()
    await place.wait_turn(MAX_WAIT)
    events = model_events(client, request.prompt, request.thinking, rid, started)
    tokens = [event["token"] async for event in events]
    return ChatResponse(response="".join(tokens))


@app.post(
    "/chat",
    response_class=EventSourceResponse,
    dependencies=PROTECTED,
    max_body_size=MAX_BODY_BYTES,
)
async def chat(request: ChatRequest, place: Line, client: Dirty, rid: RequestId):
    started = time.monotonic()
    try:
        # Tell a waiting client where it stands, rather than leave it staring.
        async for position in place.turn(WAIT_UPDATE, MAX_WAIT):
            yield waiting_event(position)
        # Each event says its phase, so a client can show thinking apart.
        async for event in model_events(client, request.prompt, request.thinking, rid, started):
            yield event
    except (DirtyError, Busy) as exc:
        # The stream has started, so a failure can only be told in the stream.
        yield error_event(exc)
    yield ServerSentEvent(raw_data="[DONE]")


# The chat page is plain files (no build step): the HTML at /, the rest at /static.
app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


@app.get("/", include_in_schema=False)
async def index():
    return FileResponse(STATIC_DIR / "index.html")


@app.post("/v1/chat/completions", dependencies=PROTECTED, max_body_size=MAX_BODY_BYTES)
async def chat_completions(body: CompletionRequest, place: Line, client: Dirty, rid: RequestId):
    """The same model behind OpenAI's chat-completions format, so that the
    official clients (and the tools built on them) can talk to it."""
    started = time.monotonic()
    completion = Completion(body.model)
    if not body.stream:
        await place.wait_turn(MAX_WAIT)
        events = model_events(client, body.prompt, False, rid, started)
        tokens = [event["token"] async for event in events]
        return completion.whole("".join(tokens), body.prompt, len(tokens))
    return StreamingResponse(
        completion_chunks(client, body.prompt, completion, place, rid, started),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-ID": rid},
    )


async def completion_chunks(
    client: DirtyClient, prompt: str, completion: Completion, place: Place, rid: str, started: float
):
    """OpenAI's streaming format: chunks with a `delta`, then `data: [DONE]`.

    FastAPI's SSE support frames events that a generator endpoint yields; this
    endpoint answers JSON or a stream depending on the body, so it frames them
    with FastAPI's own format_sse_event instead.
    """

    def event(data: dict) -> bytes:
        return format_sse_event(data_str=json.dumps(data))

    try:
        await place.wait_turn(MAX_WAIT)
        yield event(completion.chunk({"role": "assistant", "content": ""}))
        async for answer_event in model_events(client, prompt, False, rid, started):
            yield event(completion.chunk({"content": answer_event["token"]}))
        yield event(completion.chunk({}, finish_reason="stop"))
    except (DirtyError, Busy) as exc:
        yield event(error_event(exc))
    yield format_sse_event(data_str="[DONE]")

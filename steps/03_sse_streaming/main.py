"""A chat endpoint that streams the answer token by token as Server-Sent Events."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from capacity import Busy, Capacity, Place
from chat_request import MAX_BODY_BYTES, ChatRequest, check_input, require_json
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from gunicorn.dirty import DirtyClient, DirtyError, DirtyTimeoutError
from gunicorn.dirty.client import get_dirty_socket_path
from gunicorn.dirty.stash import StashClient
from gunicorn_conf import Tables, dirty_workers
from pydantic import BaseModel

# The dirty app to call, as named in gunicorn_conf.dirty_apps.
CHAT_APP = "chat_app:ChatApp"

# The deadlines, set together from the longest answer (about 7 s):
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


async def place_in_line():
    """Join the line for a dirty worker, or answer 503 before any stream starts."""
    # A fresh look first, so that a chat sees the workers /ready saw before it.
    await look_at_model_workers()
    place = capacity.join()
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


@app.post(
    "/chat/sync",
    response_model=ChatResponse,
    dependencies=[Depends(require_json)],
    max_body_size=MAX_BODY_BYTES,
)
async def chat_sync(request: ChatRequest, place: Line, client: Dirty):
    await place.wait_turn(MAX_WAIT)
    tokens = [token async for token in client.stream_async(CHAT_APP, "stream", request.prompt)]
    return ChatResponse(response="".join(tokens))


@app.post(
    "/chat",
    response_class=EventSourceResponse,
    dependencies=[Depends(require_json)],
    max_body_size=MAX_BODY_BYTES,
)
async def chat(request: ChatRequest, place: Line, client: Dirty):
    try:
        # Tell a waiting client where it stands, rather than leave it staring.
        async for position in place.turn(WAIT_UPDATE, MAX_WAIT):
            yield waiting_event(position)
        async for token in client.stream_async(CHAT_APP, "stream", request.prompt):
            yield {"token": token}
    except (DirtyError, Busy) as exc:
        # The stream has started, so a failure can only be told in the stream.
        yield error_event(exc)
    yield ServerSentEvent(raw_data="[DONE]")

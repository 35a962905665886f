"""A chat endpoint whose HTTP worker asks a dirty worker for the answer."""

import asyncio
import os

from chat_request import MAX_BODY_BYTES, ChatRequest, check_input, require_json
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from gunicorn.dirty import DirtyAppError, DirtyClient, DirtyError, DirtyTimeoutError
from gunicorn.dirty.client import get_dirty_socket_path
from gunicorn.dirty.stash import StashClient
from gunicorn_conf import Tables
from pydantic import BaseModel

# The dirty app to call, as named in gunicorn_conf.dirty_apps.
CHAT_APP = "chat_app:ChatApp"
# Seconds the HTTP worker waits for a whole answer; the longest takes about 7 s.
ANSWER_TIMEOUT = 30.0
# What a client is told while a model loads, and how long a look at the
# stash may take before /ready gives up on the arbiter.
LOADING_RETRY_AFTER = 5
STASH_TIMEOUT = 2.0
# How long a chat waits for a dirty worker that loads, and how often it looks.
# CHAT_LOAD_WAIT sets the wait in seconds: a real model's should be longer
# than its slowest load.
LOAD_WAIT = float(os.environ.get("CHAT_LOAD_WAIT", "30"))
LOOK_EVERY = 0.5


class ChatResponse(BaseModel):
    response: str


app = FastAPI(title="Dirty chat")
# Bad input gets a clear JSON error before the model is asked (chat_request.py).
check_input(app)


def took_too_long(exc: DirtyError) -> bool:
    """Whether dirty_timeout ran out, by the arbiter's clock or the dirty worker's.

    Both time an answer; when the worker's clock is first, its DirtyTimeoutError
    arrives wrapped in a DirtyAppError, as the last line of the worker's traceback.
    """
    if isinstance(exc, DirtyTimeoutError):
        return True
    if not isinstance(exc, DirtyAppError) or not exc.traceback:
        return False
    raised = exc.traceback.strip().splitlines()[-1]
    return raised.startswith(f"{DirtyTimeoutError.__module__}.{DirtyTimeoutError.__name__}:")


@app.exception_handler(DirtyError)
async def dirty_error(request: Request, exc: DirtyError):
    # A failure on the dirty side is the model being unavailable, not a bug here.
    # The client gets its message; its details (the worker's traceback among
    # them) stay in the server's log.
    if took_too_long(exc):
        return JSONResponse({"detail": f"the model took too long: {exc.message}"}, status_code=504)
    return JSONResponse({"detail": f"the model is unavailable: {exc.message}"}, status_code=503)


async def model_loaded() -> None:
    """Hold a chat until every dirty worker has loaded its model.

    The arbiter hands requests to its workers in turn, loaded or not, and
    gives up on one that is not listening after 5 s.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOAD_WAIT
    while True:
        loaded, workers = await asyncio.to_thread(model_workers)
        if workers and loaded >= workers:
            return
        if loop.time() > deadline:
            raise HTTPException(
                503,
                f"the model is still loading: {loaded} of {workers} dirty workers are ready",
                headers={"Retry-After": str(LOADING_RETRY_AFTER)},
            )
        await asyncio.sleep(LOOK_EVERY)


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


@app.post(
    "/chat/sync",
    response_model=ChatResponse,
    dependencies=[Depends(require_json), Depends(model_loaded)],
    max_body_size=MAX_BODY_BYTES,
)
async def chat_sync(request: ChatRequest):
    # One client per request, closed on the way out: the shared client of
    # get_dirty_client_async() would leave a socket open after every request.
    async with DirtyClient(get_dirty_socket_path(), timeout=ANSWER_TIMEOUT) as client:
        # The event loop stays free while a dirty worker writes the answer.
        text = await client.execute_async(CHAT_APP, "generate", request.prompt)
    return ChatResponse(response=text)

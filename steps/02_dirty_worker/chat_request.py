"""What a chat request must look like, checked before the model is asked.

Bad input gets a clear JSON answer and never reaches the model: 415 for a
body that is not JSON, 413 for one too large, 422 for one that does not fit
ChatRequest (400 if it cannot even be parsed), each saying what was wrong.
"""

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

MAX_PROMPT_CHARS = 4000
MAX_BODY_BYTES = 64 * 1024


class ChatRequest(BaseModel):
    """A chat's body. A field it does not declare is ignored (pydantic's
    default), so a client may send more than this server reads."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)

    @field_validator("prompt")
    @classmethod
    def prompt_is_not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("prompt must not be blank")
        return prompt


def body_too_large() -> JSONResponse:
    # The unread body is still on its way: close the connection after
    # answering, and say so, so that the client does not reuse it.
    return JSONResponse(
        {"detail": f"request body is larger than {MAX_BODY_BYTES} bytes"},
        status_code=413,
        headers={"Connection": "close"},
    )


class LimitBodySize:
    """Refuse a body that announces itself as too large, before reading it.

    The routes' own ``max_body_size`` still guards bodies sent without a
    Content-Length; `http_error` gives those the same answer.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = Headers(scope=scope).get("content-length")
            if length is not None and int(length) > MAX_BODY_BYTES:
                await body_too_large()(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def http_error(request: Request, exc: StarletteHTTPException):
    # max_body_size raises a bare 413 once it has read too much of a body.
    if exc.status_code == 413:
        return body_too_large()
    return await http_exception_handler(request, exc)


async def validation_error(request: Request, exc: RequestValidationError):
    # Say what was wrong and where, without echoing the (maybe huge) input.
    errors = [{key: error[key] for key in ("type", "loc", "msg")} for error in exc.errors()]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def check_input(app: FastAPI) -> None:
    """Make the app answer a body too large, or one that fails validation, in JSON."""
    app.add_middleware(LimitBodySize)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


async def require_json(request: Request) -> None:
    """A route dependency: 415 unless the body says it is JSON."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "Content-Type must be application/json")

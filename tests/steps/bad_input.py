"""Bad requests and what each must get back, shared by the tests of /chat/sync and /chat.

BAD_REQUESTS holds for every step; THINKING_REQUESTS from step 04 on, where
the request has a `thinking` field (before it, an unknown field is ignored).
"""

from collections.abc import Iterator

import httpx

JSON = {"content-type": "application/json"}

# (what is sent, expected status, words the error must contain)
BAD_REQUESTS = {
    "not JSON": (dict(content=b"hello there", headers=JSON), 422, "JSON"),
    "empty body": (dict(content=b"", headers=JSON), 422, "required"),
    "empty object": (dict(json={}), 422, "prompt"),
    "prompt is a number": (dict(json={"prompt": 42}), 422, "string"),
    "prompt is null": (dict(json={"prompt": None}), 422, "string"),
    "body is an array": (dict(json=["hello"]), 422, "object"),
    "empty prompt": (dict(json={"prompt": ""}), 422, "at least 1 character"),
    "blank prompt": (dict(json={"prompt": " \n\t "}), 422, "blank"),
    "prompt too long": (dict(json={"prompt": "x" * 4001}), 422, "at most 4000"),
    "invalid UTF-8": (dict(content=b'{"prompt": "\xff\xfe"}', headers=JSON), 400, "parsing the body"),
    "form-encoded": (dict(data={"prompt": "hello"}), 415, "application/json"),
    "text/plain": (
        dict(content=b'{"prompt": "hello"}', headers={"content-type": "text/plain"}),
        415,
        "application/json",
    ),
    "no content type": (dict(content=b'{"prompt": "hello"}'), 415, "application/json"),
    "1 MB prompt": (dict(json={"prompt": "x" * 1_000_000}), 413, "larger than"),
}

# The same shape, for the `thinking` field that step 04 adds.
THINKING_REQUESTS = {
    "thinking is a string": (dict(json={"prompt": "hi", "thinking": "yes"}), 422, "boolean"),
    "thinking is a number": (dict(json={"prompt": "hi", "thinking": 1}), 422, "boolean"),
    "thinking is null": (dict(json={"prompt": "hi", "thinking": None}), 422, "boolean"),
}


def error_text(response: httpx.Response) -> str:
    """The error's words, whether FastAPI gave one message or a list of them."""
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else " ".join(f"{e['loc']} {e['msg']}" for e in detail)


def assert_clear_json_error(response: httpx.Response, status: int, words: str) -> str:
    """The answer to a bad request: the status, JSON that says `words`, the input not echoed back."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.text
    text = error_text(response)
    assert words.lower() in text.lower(), f"the error should say {words!r}: {text}"
    assert "xxxxxxxxxx" not in response.text, "the error echoes the input back"
    return text


def unsized_body(kilobytes: int = 100) -> Iterator[bytes]:
    """A prompt of many kilobytes sent in chunks, with no Content-Length to refuse it by."""
    yield b'{"prompt": "'
    for _ in range(kilobytes):
        yield b"x" * 1024
    yield b'"}'

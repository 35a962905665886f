"""API keys and rate limits for the chat endpoints.

Clients send their key the way OpenAI clients do: `Authorization: Bearer <key>`.
"""

import logging
import math
import os
import secrets
import time
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

log = logging.getLogger("gunicorn.error")

# Good enough on a laptop; anywhere else, set CHAT_API_KEY.
DEV_API_KEY = "dev-key"
API_KEY = os.environ.get("CHAT_API_KEY") or DEV_API_KEY
if API_KEY == DEV_API_KEY:
    log.warning("CHAT_API_KEY is not set: anyone can use the development key %r", DEV_API_KEY)

# Requests per key. With "memory://" each HTTP worker counts on its own, so
# with N workers a key may make up to N times as many requests; a shared
# store such as "redis://localhost:6379" makes it one count for all workers
# and all machines.
RATE_LIMIT = parse(os.environ.get("CHAT_RATE_LIMIT", "30/minute"))
limiter = MovingWindowRateLimiter(storage_from_string(os.environ.get("CHAT_RATE_LIMIT_STORAGE", "memory://")))

# auto_error=False: we answer a missing key ourselves, with a clearer message.
bearer = HTTPBearer(auto_error=False)
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def api_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The caller's API key, or 401."""
    if credentials is None:
        raise HTTPException(401, "missing API key: send the header Authorization: Bearer <key>", CHALLENGE)
    # compare_digest takes as long for a near miss as for a wild guess.
    if not secrets.compare_digest(credentials.credentials.encode(), API_KEY.encode()):
        raise HTTPException(401, "invalid API key", CHALLENGE)
    return credentials.credentials


def rate_limit(key: Annotated[str, Depends(api_key)]) -> None:
    """Count one request for this key, or 429 with the seconds to wait."""
    if not limiter.hit(RATE_LIMIT, key):
        reset_at = limiter.get_window_stats(RATE_LIMIT, key).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise HTTPException(429, f"rate limit exceeded: {RATE_LIMIT}", {"Retry-After": str(retry_after)})

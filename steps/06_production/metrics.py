"""Prometheus metrics, in prometheus_client's multiprocess mode.

Gunicorn serves from several processes. Each writes its samples to files in
PROMETHEUS_MULTIPROC_DIR (gunicorn_conf.py sets it before any worker starts),
and GET /metrics adds them all up.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

REQUESTS = Counter("chat_http_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"])
# livesum: add up the gauges of the workers that are alive now.
STREAMS_IN_FLIGHT = Gauge("chat_streams_in_flight", "Answers in progress", multiprocess_mode="livesum")
# Every chat this instance still owes an answer, waiting in line included: a
# rolling restart (rolling_restart.py) waits for it to reach 0.
CHATS_IN_FLIGHT = Gauge(
    "chat_in_flight", "Chats being answered or waiting in line", multiprocess_mode="livesum"
)
TIME_TO_FIRST_TOKEN = Histogram(
    "chat_time_to_first_token_seconds",
    "From the request to its first token, waiting in line included",
    buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
STREAM_DURATION = Histogram(
    "chat_stream_duration_seconds",
    "From the request to its last token",
    buckets=(0.5, 1, 2, 4, 8, 15, 30, 60),
)
TOKENS = Counter("chat_tokens_streamed_total", "Tokens sent to clients")
DIRTY_ERRORS = Counter("chat_dirty_errors_total", "Failures on the dirty side, by kind", ["type"])


def render_metrics() -> bytes:
    """Every worker's samples, added up, in the Prometheus text format."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


class CountRequests:
    """ASGI middleware: count each response by route and status code."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app fails before it answers

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            # The route's path, not the URL, so that /nope/1, /nope/2... make one series.
            route = scope.get("route")
            REQUESTS.labels(route.path if route else "unmatched", str(status)).inc()

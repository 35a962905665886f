"""Where a chat lands: the dirty arbiter routes in turn, blind to load.

These tests pin what docs/concepts/capacity.md says about gunicorn 27: the
line in capacity.py bounds how many chats run at once, but the arbiter picks
the dirty worker round-robin, so a chat can wait behind a busy worker while
another one sits idle; nothing in gunicorn's settings changes that (not
`dirty_threads`, which gives a worker no second answer at once, nor per-app
worker limits). If gunicorn ever routes to the idle worker, these tests fail,
and the page must change with them.
"""

import concurrent.futures
import re
import time
from pathlib import Path

import pytest
from gunicorn.dirty import DirtyClient

from harness.load import WatchedChat, past_halfway
from harness.server import DIRTY_READY

# The tests lean on the model's real answer times: long waits short.
pytestmark = [pytest.mark.since("03"), pytest.mark.paced]

# The long answer (61 words, about 3.4 s at a real model's pace) and the short one (37 words, about 2 s).
LONG, SHORT = "explain dirty workers", "hello"
CHAT_APP = "chat_app:ChatApp"
# make bench's config: with BENCH_ROUTING=least-busy, the arbiter picks the least busy worker.
BENCH_CONF = Path(__file__).resolve().parents[2] / "tools" / "bench_conf.py"
# Bounds every wait of these tests, so that a broken server fails them instead of hanging.
GUARD = 60.0


def start_chat(server, prompt: str) -> WatchedChat:
    """A chat read on a thread of its own (harness.load), every wait bounded by GUARD."""
    return WatchedChat(server.base_url, prompt, timeout=GUARD).start()


def c_waited_for_a(server, margin: float) -> bool:
    """A (long) and B (short) take the two workers; C is sent once B is over.

    Returns whether C's first word waited for A's last: came more than
    halfway from C's sending to A's last word (harness.load.past_halfway).
    A must still have more than `margin` seconds to go when C is sent, or
    the experiment proves nothing.
    """
    a = start_chat(server, LONG)
    a.first_token()
    b = start_chat(server, SHORT)
    b.first_token()
    b.finish()
    assert a.running, "the long chat ended before the short one, so the experiment proves nothing"
    c = start_chat(server, SHORT).finish()
    a_last = a.finish().token_events[-1].at
    waited = any("waiting" in payload for payload in c.payloads)
    assert not waited, "the line held back a chat although one of the two dirty workers was free"
    assert a_last - c.started > margin, (
        f"the long answer ended {a_last - c.started:.2f} s after C was sent: the experiment proves nothing"
    )
    return past_halfway(c.token_events[0].at, c.started, a_last)


# The long answer outlasts the short one by 1.3 s at a real model's pace, less what a busy
# machine takes to send C: on A's worker, C waits for whatever is left of A, however little.
@pytest.mark.paced
def test_a_chat_waits_behind_a_busy_worker_while_another_is_idle(start):
    """Round-robin sends C to A's worker: C's first word waits for A to end, not for a word's time."""
    assert c_waited_for_a(start(env={"DIRTY_WORKERS": "2"}, dirty_workers=2), margin=0), (
        "a chat sent while one dirty worker was idle got its first word before the busy worker "
        "finished: the arbiter no longer routes blind to load, and docs/concepts/capacity.md must change"
    )


# On the idle worker, C's first word comes a word's time after C was sent: well short of
# halfway only if A has a second or more to go, so the model runs at half a real one's
# speed (A then outlasts B by 2.6 s).
@pytest.mark.paced(2)
def test_a_least_busy_arbiter_would_put_that_chat_on_the_idle_worker(start):
    """The same experiment with make bench's least-busy arbiter: the test above can fail, and would."""
    server = start(config=BENCH_CONF, env={"DIRTY_WORKERS": "2", "BENCH_ROUTING": "least-busy"},
                   dirty_workers=2)
    assert not c_waited_for_a(server, margin=1.0), (
        "with the arbiter patched to pick the least busy worker, the chat still waited for the busy one: "
        "tools/bench_conf.py's least-busy yardstick does not route as it says"
    )


def answer_times(socket_path: str, prompt: str) -> list[float]:
    """Ask the dirty app straight through the arbiter, as the HTTP worker does; when each event came."""
    with DirtyClient(socket_path, timeout=GUARD) as client:
        return [time.monotonic() for _event in client.stream(CHAT_APP, "stream", prompt)]


# Only the order of the answers counts: at any pace, one begins as the one before ends.
@pytest.mark.paced(0.3)
def test_dirty_threads_give_a_worker_no_second_answer_at_once(start):
    """One dirty worker with 4 threads, 3 answers asked at once: they still come one after another.

    The requests go to the arbiter directly, past the HTTP worker's line,
    which would otherwise hold two of them back itself.
    """
    server = start(env={"DIRTY_WORKERS": "1"}, args=("--dirty-threads", "4"), dirty_workers=1)
    socket_path = re.search(r"Dirty arbiter listening on ([^\s\"]+)", server.log()).group(1)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: answer_times(socket_path, SHORT), range(3)))
    assert all(answers), "an answer came back empty"
    answers.sort()
    for earlier, later in zip(answers, answers[1:], strict=False):
        assert past_halfway(later[0], earlier[0], earlier[-1]), (
            "two answers streamed at once from one dirty worker: dirty_threads now gives concurrency, "
            "and docs/concepts/dirty-workers.md must change"
        )


# A fact about gunicorn, not about a step: step 06's JSON log config hides the arbiter's debug line it reads.
@pytest.mark.until("05")
def test_apps_limited_to_one_worker_each_share_the_first_worker(start):
    """Two apps of one worker each cannot give each chat a worker of its own: both load in the first."""
    conf = Path(__file__).with_name("routing_conf.py")
    server = start(config=conf, env={"DIRTY_WORKERS": "2", "PYTHONPATH": str(conf.parent)},
                   args=("--log-level", "debug"), ready=False)
    # Two lines, either way: two workers listening, or one and the arbiter's word that none is needed.
    server.wait_for_log(f"No apps need more workers|{DIRTY_READY}", count=2, timeout=GUARD)
    spawned = re.findall(r"Spawned dirty worker \(pid: \d+\) with apps: (.*)", server.log())
    assert len(spawned) == 1, f"gunicorn now spreads apps limited to one worker each over workers: {spawned}"
    assert "chat_app:ChatApp" in spawned[0] and "routing_conf:SecondChatApp" in spawned[0], (
        f"the one dirty worker did not load both apps: {spawned[0]}"
    )

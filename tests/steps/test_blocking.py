"""The problem of step 01 and its fix in step 02: does a chat block /health?"""

import threading
import time

import pytest

from harness.server import AUTH, loopback_client

PROBE_GAP = 0.02


def probe_health_during_chat(base_url: str):
    """Send one chat, and /health probes one after another until it is answered.

    The probes come a few milliseconds apart: back to back, they would keep a
    core busy for the whole chat, and a blocked server shows just as well.

    Returns the chat's (sent, done) times and every probe's (sent, answered).
    """
    chat: dict[str, float] = {}

    def run_chat():
        with loopback_client(base_url, timeout=60, headers=AUTH) as http:
            chat["sent"] = time.monotonic()
            response = http.post("/chat/sync", json={"prompt": "explain"})
            chat["done"] = time.monotonic()
            chat["status"] = response.status_code

    thread = threading.Thread(target=run_chat)
    thread.start()
    probes = []
    # A fresh connection per probe: a blocked server may drop an idle
    # keep-alive connection the moment it wakes up.
    with loopback_client(base_url, timeout=60, headers={**AUTH, "Connection": "close"}) as http:
        while "done" not in chat:
            sent = time.monotonic()
            assert http.get("/health").status_code == 200
            probes.append((sent, time.monotonic()))
            time.sleep(PROBE_GAP)
    thread.join()
    assert chat["status"] == 200
    return chat, probes


@pytest.mark.paced
@pytest.mark.only("01")
def test_chat_blocks_health_in_step_01(step, server):
    chat, probes = probe_health_during_chat(server.base_url)
    # A probe sent well before the chat ended was answered only when it ended
    # (give or take the two responses racing back to this process).
    blocked = [p for p in probes if p[0] < chat["done"] - 0.5 and p[1] >= chat["done"] - 0.05]
    assert blocked, probes


@pytest.mark.paced
@pytest.mark.since("02")
def test_health_answers_during_a_chat(step, server):
    chat, probes = probe_health_during_chat(server.base_url)
    answered_during_chat = [p for p in probes if chat["sent"] < p[0] and p[1] < chat["done"]]
    # The chat takes seconds; /health answered many times meanwhile.
    assert len(answered_during_chat) >= 10, (
        f"/health answered only {len(answered_during_chat)} times during a chat of"
        f" {chat['done'] - chat['sent']:.1f} s: the model blocks the HTTP worker again"
        " (is it called through the dirty client, with an await?)"
    )

"""Step 06's page asks for the API key and keeps it out of the URL."""

import pytest
from playwright.sync_api import expect

from harness.server import DEV_KEY

pytestmark = [pytest.mark.since("06"), pytest.mark.browser]


def test_the_page_sends_the_key_the_user_types(step, server, page):
    requests = []
    page.on("request", lambda request: requests.append(request))
    page.goto(server.base_url)
    key = page.get_by_label("API key")
    # Start with no key at all: the server refuses, and the page says what to do.
    key.fill("")
    page.get_by_role("button", name="hello", exact=True).click()
    expect(page.locator(".msg.bot").last.locator(".error")).to_contain_text("Enter a valid API key")
    # Type the key, as a user would, and ask again.
    key.fill(DEV_KEY)
    page.get_by_role("button", name="code", exact=True).click()
    answer = page.locator(".msg.bot").last.locator(".answer")
    expect(answer).to_contain_text("Here is a dirty app", timeout=30_000)
    chats = [request for request in requests if request.url.endswith("/chat")]
    assert [request.headers.get("authorization") for request in chats] == [None, f"Bearer {DEV_KEY}"]
    # The key travels in the header only: never in a URL the browser requested.
    assert all(DEV_KEY not in request.url for request in requests)
    assert DEV_KEY not in page.url

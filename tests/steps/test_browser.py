"""The chat page in a real browser (step 05 on).

The tests drive the page the step serves, in Chromium. Where a test needs the
server to say what it never says on its own (an HTML-looking token, events cut
at awkward places, a place in line on demand), the page's POST /chat goes to a
stub instead, which sends the chunks the test hands it, one at a time: each
chunk leaves only once the page has read the one before, so what the page
shows in between can be checked without sleeping.
"""

import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from harness.server import AUTH, ROOT, loopback_client
from harness.sse import stream_chat
from tools.screenshot import take_screenshots

pytestmark = [pytest.mark.since("05"), pytest.mark.browser]

OUTPUT = ROOT / "test-output"
# The newest answer of the conversation, in JavaScript.
LAST_BOT = "[...document.querySelectorAll('.msg.bot')].at(-1)"
WAITING = "Waiting for a free model worker: you are number {} in line…"
LOADING = "The model is still loading: you are number {} in line…"
ONE_WORKER = {"env": {"DIRTY_WORKERS": "1"}, "dirty_workers": 1}


def sync_answer(server, prompt: str, thinking: bool = False) -> str:
    with loopback_client(server.base_url, timeout=60, headers=AUTH) as http:
        response = http.post("/chat/sync", json={"prompt": prompt, "thinking": thinking})
    assert response.status_code == 200, response.text
    return response.json()["response"]


def last_bot(page):
    return page.locator(".msg.bot").last


def answer_text(page) -> str:
    # text_content, not inner_text: the exact characters, whitespace included.
    return last_bot(page).locator(".answer").text_content()


def chip(page, name: str):
    return page.get_by_role("button", name=name, exact=True)


def wait_until_ready(page, timeout: float = 30_000) -> None:
    """The answer is over: Send is back, the cursor gone, the chips usable."""
    expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=timeout)
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    expect(page.locator(".cursor")).to_have_count(0)
    expect(chip(page, "hello")).to_be_enabled()


# Every length the newest answer shows, noted by the page itself each time it
# changes: polled from the test, a busy machine would miss some of them.
WATCH_ANSWER = f"""() => {{
    window.answerLengths = [];
    new MutationObserver(() => {{
        const length = {LAST_BOT}?.querySelector('.answer')?.textContent.length;
        if (length !== undefined && length !== window.answerLengths.at(-1)) window.answerLengths.push(length);
    }}).observe(document.getElementById('log'), {{childList: true, subtree: true, characterData: true}});
}}"""


def answer_lengths(page) -> list[int]:
    """The lengths the newest answer showed since WATCH_ANSWER, once it is over."""
    page.wait_for_function(f"() => !{LAST_BOT}.hasAttribute('aria-busy')", timeout=30_000)
    return page.evaluate("window.answerLengths")


# --- The real server --------------------------------------------------------


@pytest.mark.paced
@pytest.mark.parametrize("name", ["hello", "explain", "streaming"])
def test_a_suggestion_streams_its_answer(step, server, page, canned, name):
    page.goto(server.base_url)
    prompt = chip(page, name).get_attribute("data-prompt")
    page.evaluate(WATCH_ANSWER)
    chip(page, name).click()
    expect(page.locator(".msg.user")).to_have_text(prompt)
    lengths = answer_lengths(page)
    # The text only ever grew, in many steps: it streamed, it did not land at once.
    assert lengths == sorted(set(lengths)), lengths
    assert len(lengths) > 10, lengths
    full = canned(prompt)
    assert lengths[-1] == len(full)
    assert answer_text(page) == full
    expect(page.locator(".thinking")).to_have_count(0)
    expect(last_bot(page).get_by_role("alert")).to_have_count(0)
    wait_until_ready(page)


def test_code_comes_as_a_code_block(step, server, page, step_module):
    code = step_module("chat_app").CODE
    page.goto(server.base_url)
    chip(page, "code").click()
    wait_until_ready(page)
    block = last_bot(page).locator(".answer pre > code")
    expect(block).to_have_count(1)
    expect(block).to_have_class("language-python")
    assert block.text_content() == code.split("```python\n")[1].split("\n```")[0]
    text = answer_text(page)
    assert "```" not in text
    assert text.startswith(code.splitlines()[0])
    assert text.endswith(code.splitlines()[-1])


def test_thinking_shows_apart_from_the_answer(step, server, page):
    page.goto(server.base_url)
    page.get_by_label("show thinking").check()
    with page.expect_request("**/chat") as sent:
        chip(page, "hello").click()
    assert sent.value.post_data_json == {"prompt": "Hello!", "thinking": True}
    thinking = last_bot(page).locator("details.thinking")
    expect(thinking).to_be_visible()
    wait_until_ready(page)
    thought = thinking.locator(".thinking-text").text_content()
    said = answer_text(page)
    assert thought == "[thinking.....]"
    assert "[thinking" not in said
    # Together they are the text /chat/sync gives, less the blank lines between.
    assert sync_answer(server, "Hello!", thinking=True) == f"{thought}\n\n{said}"
    # Its own element, beside the answer, not inside it, and dimmed.
    assert thinking.evaluate(
        "e => !e.closest('.answer') && !!e.parentElement.querySelector(':scope > .answer')"
    )
    colors = last_bot(page).evaluate(
        "bot => ['.thinking', '.answer'].map(s => getComputedStyle(bot.querySelector(s)).color)"
    )
    assert colors[0] != colors[1]
    # And the reader can fold it away.
    thinking.locator("summary").click()
    expect(thinking.locator(".thinking-text")).to_be_hidden()
    expect(last_bot(page).locator(".answer")).to_be_visible()


@pytest.mark.paced
def test_stop_ends_the_stream_and_the_page_is_ready_again(step, server, page, step_module, canned):
    full = step_module("chat_app").EXPLAIN
    failed = []
    page.on("requestfailed", lambda request: failed.append((request.url, request.failure)))
    page.goto(server.base_url)
    chip(page, "explain").click()
    page.wait_for_function(f"() => {LAST_BOT}.querySelector('.answer').textContent.length > 40")
    page.get_by_role("button", name="Stop").click()
    expect(last_bot(page).locator(".note")).to_have_text("Stopped.")
    wait_until_ready(page)
    expect(page.get_by_label("Your message")).to_be_focused()
    stopped_at = answer_text(page)
    assert 40 < len(stopped_at) < len(full)
    assert full.startswith(stopped_at)
    # The browser closed the connection: that is what stops the model.
    assert failed == [(f"{server.base_url}/chat", "net::ERR_ABORTED")]
    # The server is fine; and in the time a whole answer takes, the stopped
    # one has not grown.
    assert sync_answer(server, "explain", thinking=True).endswith(full)
    assert answer_text(page) == stopped_at
    # The page answers the next question.
    chip(page, "hello").click()
    wait_until_ready(page)
    assert answer_text(page) == canned("hello")


@pytest.mark.paced
def test_the_keyboard_alone_is_enough(step, server, page, canned):
    sent = []
    page.on("request", lambda request: sent.append(request) if request.url.endswith("/chat") else None)
    page.goto(server.base_url)
    box = page.get_by_label("Your message")
    expect(box).to_be_focused()
    page.keyboard.press("Enter")  # nothing typed: nothing sent
    page.keyboard.type("hello")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("there")
    expect(box).to_have_value("hello\nthere")
    expect(page.locator(".msg")).to_have_count(0)
    with page.expect_request("**/chat") as request:
        page.keyboard.press("Enter")
    assert request.value.post_data_json == {"prompt": "hello\nthere", "thinking": False}
    expect(box).to_have_value("")
    expect(box).to_be_focused()
    assert page.locator(".msg.user").last.text_content() == "hello\nthere"
    wait_until_ready(page)
    assert answer_text(page) == canned("hello")
    # Escape stops an answer, like the Stop button.
    page.keyboard.type("explain")
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => {LAST_BOT}.querySelector('.answer').textContent.length > 10")
    page.keyboard.press("Escape")
    expect(last_bot(page).locator(".note")).to_have_text("Stopped.")
    wait_until_ready(page)
    expect(box).to_be_focused()
    assert len(sent) == 2


def test_usable_on_a_phone(step, server, page):
    width, height = 375, 667
    page.set_viewport_size({"width": width, "height": height})
    page.goto(server.base_url)
    page.get_by_label("show thinking").check()
    chip(page, "code").click()
    wait_until_ready(page)
    # Nothing sticks out sideways: no horizontal scrolling of the page.
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    controls = [chip(page, name) for name in ("hello", "explain", "streaming", "code")]
    controls += [page.get_by_label("Your message"), page.get_by_label("show thinking")]
    controls += [page.get_by_role("button", name="Send")]
    for control in controls:
        box = control.bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, box
        assert box["y"] + box["height"] <= height, box
    assert page.get_by_role("button", name="Send").bounding_box()["height"] >= 44
    # The code block scrolls inside itself instead.
    pre = last_bot(page).locator(".answer pre")
    assert pre.evaluate("e => e.scrollWidth > e.clientWidth && getComputedStyle(e).overflowX === 'auto'")
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=OUTPUT / "ui.png", animations="disabled")


def test_a_model_error_mid_stream_is_shown(step, start_faulty, page, step_module):
    server = start_faulty("raise:3", **ONE_WORKER)
    page.goto(server.base_url)
    chip(page, "explain").click()
    alert = last_bot(page).get_by_role("alert")
    expect(alert).to_contain_text("The model failed.")
    expect(alert).to_contain_text("injected fault: the model crashed")
    wait_until_ready(page)
    # What came before the failure stays.
    chat_app = step_module("chat_app")
    assert answer_text(page) == "".join(chat_app.split_tokens(chat_app.EXPLAIN)[:3])


@pytest.mark.paced
def test_a_full_server_puts_the_page_in_line(step, start, page, canned):
    server = start(**ONE_WORKER)
    page.goto(server.base_url)
    claimed = threading.Event()
    held = []

    def hold_the_only_worker():
        # The response starts once the request has its place: the only worker.
        hooks = {"response": [lambda response: claimed.set()]}
        with loopback_client(server.base_url, timeout=60, event_hooks=hooks, headers=AUTH) as http:
            held.append(stream_chat(http, "explain", thinking=True))

    thread = threading.Thread(target=hold_the_only_worker)
    thread.start()
    try:
        assert claimed.wait(30)
        chip(page, "hello").click()
        waiting = last_bot(page).locator(".waiting")
        expect(waiting).to_have_text(WAITING.format(1))
        expect(page.locator(".cursor")).to_have_count(0)
        # Its turn comes when the other answer is over.
        expect(waiting).to_be_hidden(timeout=30_000)
        wait_until_ready(page)
    finally:
        thread.join(60)
    assert answer_text(page) == canned("hello")
    (other,) = held
    assert other.ended_with_done and not other.errors
    assert not any("waiting" in payload for payload in other.payloads)


@pytest.mark.paced
def test_a_chat_sent_while_the_model_loads_says_so(step, start, page, canned):
    # A load slow enough to click before it ends, as a real model's would be.
    server = start(env={"DIRTY_WORKERS": "1", "CHAT_LOAD_SECONDS": "8"}, ready=False)
    with loopback_client(server.base_url, timeout=10, headers=AUTH) as http:
        assert http.get("/ready").status_code == 503, "the model was loaded already: this test proves nothing"
    page.goto(server.base_url)
    chip(page, "hello").click()
    waiting = last_bot(page).locator(".waiting")
    expect(waiting).to_have_text(LOADING.format(1), timeout=30_000)
    expect(page.locator(".cursor")).to_have_count(0)
    # Once the model has loaded, the answer comes.
    expect(waiting).to_be_hidden(timeout=60_000)
    wait_until_ready(page)
    assert answer_text(page) == canned("hello")
    expect(last_bot(page).get_by_role("alert")).to_have_count(0)


def test_a_server_that_is_down_gets_a_clear_message(step, start, page):
    server = start(**ONE_WORKER)
    page.goto(server.base_url)
    server.stop()
    page.get_by_label("Your message").fill("hello")
    page.keyboard.press("Enter")
    alert = last_bot(page).get_by_role("alert")
    expect(alert).to_contain_text("Cannot reach the server.")
    wait_until_ready(page)
    assert answer_text(page) == ""


# At a real model's pace, as make screenshots runs: at the tests' fast pace the
# answer could end before the mid-stream picture is taken.
@pytest.mark.paced
def test_the_screenshot_tool_pictures_a_finished_chat(step, server, page, canned, tmp_path):
    # A folder of its own: steps 05 and 06 may run this test at the same time.
    paths = take_screenshots(page, server.base_url, tmp_path)
    assert [path.name for path in paths] == ["chat-ui-streaming.png", "chat-ui.png"]
    pictures = [path.read_bytes() for path in paths]
    assert all(picture.startswith(b"\x89PNG\r\n\x1a\n") for picture in pictures)
    assert pictures[0] != pictures[1]
    expect(last_bot(page).locator("details.thinking")).to_have_count(1)
    expect(page.locator(".cursor")).to_have_count(0)
    assert answer_text(page) == canned("Explain dirty workers")


# --- Answers routed by the test ----------------------------------------------


class StubChat:
    """A stand-in for POST /chat: it answers with the chunks a test puts in `chunks`."""

    def __init__(self):
        self.chunks: queue.Queue[bytes | None] = queue.Queue()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.end_headers()
                # No Content-Length: the body ends when the connection closes.
                while (chunk := stub.chunks.get(timeout=60)) is not None:
                    try:
                        self.wfile.write(chunk)
                    except OSError:
                        return  # the page hung up

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/chat"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.chunks.put(None)
        self.http.shutdown()
        self.http.server_close()


# Counts the page's reads of response bodies, so that feed() can wait for them.
COUNT_READS = """
window.__reads = 0;
const read = ReadableStreamDefaultReader.prototype.read;
ReadableStreamDefaultReader.prototype.read = async function () {
  const result = await read.call(this);
  if (!result.done) window.__reads += 1;
  return result;
};
"""


@pytest.fixture
def stub():
    fake = StubChat()
    yield fake
    fake.close()


@pytest.fixture
def stub_page(page, server, stub):
    """The step's own page, with its POST /chat answered by the stub."""
    page.add_init_script(COUNT_READS)
    page.route("**/chat", lambda route: route.continue_(url=stub.url))
    page.goto(server.base_url)
    return page


def feed(page, stub: StubChat, *chunks: bytes) -> None:
    """Send chunks one by one, each once the page has read (and handled) the one before."""
    for chunk in chunks:
        reads = page.evaluate("window.__reads")
        stub.chunks.put(chunk)
        page.wait_for_function("n => window.__reads > n", arg=reads)


def test_events_cut_anywhere_arrive_whole(step, stub, stub_page):
    page = stub_page
    chip(page, "hello").click()
    # A line cut in two, a two-byte "é" cut in two, a "\r\n" cut in two.
    feed(page, stub, b'data: {"tok', b'en": "H\xc3', b'\xa9"}\r')
    assert answer_text(page) == ""
    feed(page, stub, b"\n\r\n")
    assert answer_text(page) == "Hé"
    # Comments, unknown fields and events of another type are passed over.
    feed(
        page, stub, b': keep-alive\r\nretry: 1000\r\nfoo: bar\r\nevent: other\r\ndata: {"token": "X"}\r\n\r\n'
    )
    # A four-byte emoji cut in two, and lines that end with "\r" alone.
    emoji = "🙂".encode()
    feed(page, stub, b'data: {"token": "llo ' + emoji[:2], emoji[2:] + b'"}\r', b"\r")
    assert answer_text(page) == "Héllo 🙂"
    # Whatever follows [DONE] is not shown.
    feed(page, stub, b'data: {"token": " w\xc3\xb6rld"}\n\ndata: [DONE]\n\ndata: {"token": "AFTER"}\n\n')
    wait_until_ready(page)
    assert answer_text(page) == "Héllo 🙂 wörld"
    expect(last_bot(page).get_by_role("alert")).to_have_count(0)


def test_html_in_the_stream_shows_as_text(step, stub, stub_page):
    page = stub_page
    page.get_by_label("Your message").fill("<img src=x onerror=window.__xss=3>")
    page.keyboard.press("Enter")
    # The tags are cut across chunks and across events, as a model's tokens cut them.
    feed(
        page,
        stub,
        b'data: {"token": "<i>hm</i>", "phase": "thinking"}\n\ndata: {"token": "<img src=x oner',
        b'ror=window.__xss=1>", "phase": "answer"}\n\ndata: {"token": " <scr',
        b'ipt>window.__xss=2</script>"}\n\ndata: {"token": " <b"}\n\n',
        b'data: {"token": ">bold</b>"}\n\n',
        b'data: {"error": {"message": "<svg onload=window.__xss=4>", "type": "model_error"}}\n\n',
        b"data: [DONE]\n\n",
    )
    wait_until_ready(page)
    literal = "<img src=x onerror=window.__xss=1> <script>window.__xss=2</script> <b>bold</b>"
    assert answer_text(page) == literal
    assert page.locator(".msg.user").text_content() == "<img src=x onerror=window.__xss=3>"
    assert last_bot(page).locator(".thinking-text").text_content() == "<i>hm</i>"
    expect(last_bot(page).get_by_role("alert")).to_contain_text("<svg onload=window.__xss=4>")
    # None of it became an element, and no script ran.
    assert page.locator("#log img, #log script, #log b, #log i, #log svg").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_waiting_in_line_is_shown_until_the_first_token(step, stub, stub_page):
    page = stub_page
    chip(page, "hello").click()
    waiting = last_bot(page).locator(".waiting")
    feed(page, stub, b'data: {"token": "", "waiting": 2}\n\n')
    expect(waiting).to_have_text(WAITING.format(2))
    # The message stands in for the cursor: nothing looks frozen.
    expect(page.locator(".cursor")).to_have_count(0)
    feed(page, stub, b'data: {"token": "", "waiting": 1}\n\n')
    expect(waiting).to_have_text(WAITING.format(1))
    # The line stands still while a model loads: the page says that, not that workers are busy.
    feed(page, stub, b'data: {"token": "", "waiting": 1, "reason": "loading"}\n\n')
    expect(waiting).to_have_text(LOADING.format(1))
    feed(page, stub, b'data: {"token": "Hi", "phase": "answer"}\n\n')
    expect(waiting).to_be_hidden()
    expect(page.locator(".cursor")).to_have_count(1)
    assert answer_text(page) == "Hi"
    feed(page, stub, b"data: [DONE]\n\n")
    wait_until_ready(page)


def test_the_conversation_follows_the_stream_unless_scrolled_up(step, stub, stub_page):
    page = stub_page
    page.set_viewport_size({"width": 375, "height": 500})
    log = page.locator("#log")
    at_end = "e => e.scrollHeight - e.scrollTop - e.clientHeight < 2"
    chip(page, "hello").click()
    lines = b"".join(b'data: {"token": "line %d\\n"}\n\n' % n for n in range(40))
    feed(page, stub, lines)
    assert log.evaluate("e => e.scrollHeight > 2 * e.clientHeight")
    assert log.evaluate(at_end)
    # The reader scrolls up to read: new words no longer pull the view down.
    log.evaluate("e => { e.scrollTop = 0; }")
    feed(page, stub, b'data: {"token": "more\\n"}\n\n')
    assert log.evaluate("e => e.scrollTop") == 0
    # Back at the end, the view follows again, down to the error that ends the answer.
    log.evaluate("e => { e.scrollTop = e.scrollHeight; }")
    feed(page, stub, lines, b'data: {"error": {"message": "gone", "type": "model_error"}}\n\n')
    feed(page, stub, b"data: [DONE]\n\n")
    wait_until_ready(page)
    assert log.evaluate(at_end)
    expect(last_bot(page).get_by_role("alert")).to_be_in_viewport()


def test_a_stream_cut_short_is_reported(step, stub, stub_page):
    page = stub_page
    chip(page, "hello").click()
    feed(page, stub, b'data: {"token": "Half"}\n\n')
    stub.chunks.put(None)  # the server closes without [DONE]
    expect(last_bot(page).get_by_role("alert")).to_contain_text("The answer was cut off.")
    wait_until_ready(page)
    assert answer_text(page) == "Half"


# (status, headers, JSON body, what the message must say)
HTTP_ERRORS = {
    "busy": (
        503,
        {"Retry-After": "7"},
        {"detail": "the model is busy: every model worker is busy and the line is full"},
        ["Busy, try again in 7 s.", "the line is full"],
    ),
    "unavailable": (
        503,
        {},
        {"detail": "the model is unavailable: no dirty worker"},
        ["The server failed (503", "no dirty worker"],
    ),
    "invalid": (
        422,
        {},
        {"detail": [{"loc": ["body", "prompt"], "msg": "String should have <b>at most</b> 4000"}]},
        ["The server refused the message (422", "prompt: String should have <b>at most</b> 4000"],
    ),
    "too large": (
        413,
        {},
        {"detail": "request body is larger than 65536 bytes"},
        ["The server refused the message (413", "larger than 65536 bytes"],
    ),
}


@pytest.mark.parametrize("case", HTTP_ERRORS, ids=str)
def test_an_error_before_the_stream_is_explained(step, server, page, case):
    status, headers, body, words = HTTP_ERRORS[case]
    page.route(
        "**/chat",
        lambda route: route.fulfill(
            status=status,
            headers={**headers, "Content-Type": "application/json"},
            body=json.dumps(body),
        ),
    )
    page.goto(server.base_url)
    chip(page, "hello").click()
    alert = last_bot(page).get_by_role("alert")
    for word in words:
        expect(alert).to_contain_text(word)
    wait_until_ready(page)
    expect(page.get_by_label("Your message")).to_be_focused()
    assert answer_text(page) == ""
    assert page.locator("#log b").count() == 0


# --- The SSE parser on its own, inside the page --------------------------------


def event(data: str, type: str = "message", id: str = "") -> dict:
    return {"type": type, "data": data, "id": id}


EMOJI = "é🙂".encode()  # 2 + 4 bytes
PARSER_CASES = {
    "a line cut in two": (
        [b"da", b'ta: {"a": 1}\n', b"\n"],
        [[], [], [event('{"a": 1}')]],
    ),
    "characters cut in two": (
        [b"data: " + EMOJI[:1], EMOJI[1:4], EMOJI[4:] + b"\n\n"],
        [[], [], [event("é🙂")]],
    ),
    "CRLF": ([b"data: a\r\n\r\ndata: b\r\n\r\n"], [[event("a"), event("b")]]),
    "CRLF cut in two": ([b"data: a\r", b"\ndata: b\r\n\r\n"], [[], [event("a\nb")]]),
    "CRLF cut, then LF": ([b"data: a\r", b"\n", b"\n"], [[], [], [event("a")]]),
    "CR alone": ([b"data: a\r\rdata: b\r", b"\r"], [[event("a")], [event("b")]]),
    "comments and unknown fields": (
        [b": ping\nfoo: bar\nretry: 5\nid: 7\nevent: other\ndata: x\n\n:\ndata: y\n\n"],
        [[event("x", "other", "7"), event("y", "message", "7")]],
    ),
    "data on several lines": ([b"data: a\ndata:b\ndata\n\n"], [[event("a\nb\n")]]),
    "no blank line yet": ([b"data: a\n"], [[]]),
    "an event without data": ([b"event: x\n\n", b"data: [DONE]\n\n"], [[], [event("[DONE]")]]),
}

PARSE = """chunks => {
  const parser = createSSEParser();
  return chunks.map(chunk => parser.push(new Uint8Array(chunk)));
}"""


@pytest.fixture(scope="module")
def parse(step, servers, module_page):
    """The page's parser, in one tab for every case of a step: each case makes a parser of its own."""
    module_page.goto(servers.shared_server(step).base_url)
    return lambda chunks: module_page.evaluate(PARSE, [list(chunk) for chunk in chunks])


@pytest.mark.parametrize("case", PARSER_CASES, ids=str)
def test_the_parser(step, parse, case):
    chunks, expected = PARSER_CASES[case]
    assert parse(chunks) == expected


def test_the_parser_byte_by_byte(step, parse):
    stream = ': hi\r\nid: 1\r\ndata: {"token": "wörld 🙂"}\r\n\r\n'.encode()
    stream += b"data: a\ndata: b\n\ndata: [DONE]\n\n"
    at_once = parse([stream])[0]
    assert at_once == [event('{"token": "wörld 🙂"}', id="1"), event("a\nb", id="1"), event("[DONE]", id="1")]
    one_byte_each = [e for events in parse([stream[i : i + 1] for i in range(len(stream))]) for e in events]
    assert one_byte_each == at_once

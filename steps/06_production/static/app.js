// Dirty chat in the browser: send a prompt to POST /chat and show the answer
// as its tokens arrive. Plain JavaScript, no build step, no libraries.
"use strict";

// ---------------------------------------------------------------------------
// Reading Server-Sent Events
//
// EventSource, the browser's own SSE client, can only send GET requests, and
// /chat takes a POST with a JSON body. So the page reads the response body
// itself, and this parser turns its bytes into events.
// ---------------------------------------------------------------------------

/**
 * A parser for a text/event-stream body that arrives in chunks.
 *
 * push(bytes) takes the next chunk (a Uint8Array) and returns the events it
 * completed, each {type, data, id}. A chunk can end anywhere: in the middle
 * of a line, of an event, or of a multi-byte character.
 *
 * A top-level function, so the tests (and you, in the console) can call it.
 */
function createSSEParser() {
  // With {stream: true} the decoder keeps the first bytes of a character that
  // is split between two chunks until the rest arrives, instead of making "�".
  const decoder = new TextDecoder("utf-8");
  let buffer = ""; // text after the last complete line
  let dataLines = []; // the data lines of the event being read
  let type = "";
  let lastId = "";
  let afterCR = false; // the last chunk ended with "\r"

  function processLine(line, events) {
    if (line === "") {
      // A blank line ends the event; one without data is dropped.
      if (dataLines.length > 0) {
        events.push({ type: type || "message", data: dataLines.join("\n"), id: lastId });
      }
      dataLines = [];
      type = "";
      return;
    }
    if (line.startsWith(":")) return; // a comment, such as a keep-alive ping
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1); // "data: x" means "x"
    if (field === "data") dataLines.push(value);
    else if (field === "event") type = value;
    else if (field === "id" && !value.includes("\0")) lastId = value;
    // Any other field (retry, or one this parser does not know) is ignored.
  }

  function push(bytes) {
    let text = decoder.decode(bytes, { stream: true });
    if (text === "") return []; // only the start of a character so far
    // A chunk that ends with "\r" may have cut a "\r\n" in two: the "\n"
    // that starts the next chunk belongs to it, and is not a blank line.
    if (afterCR && text.startsWith("\n")) text = text.slice(1);
    afterCR = text.endsWith("\r");
    // Lines may end with "\r\n", "\n" or "\r".
    const lines = (buffer + text).split(/\r\n|\n|\r/);
    // The last piece has no line ending yet: it waits for the next chunk.
    buffer = lines.pop();
    const events = [];
    for (const line of lines) processLine(line, events);
    return events;
  }

  return { push };
}

// ---------------------------------------------------------------------------
// Rendering: server text always stays text
//
// Every piece of text from the server reaches the page through textContent
// or text nodes, never innerHTML, so a token such as "<img onerror=...>" is
// shown as those characters and never becomes an element.
// ---------------------------------------------------------------------------

/**
 * Split an answer into text parts and ```fenced``` code parts:
 * [{code: false, text}, {code: true, lang: "python", text}, ...].
 * A fence that is not closed yet (the answer is still streaming) runs to the end.
 */
function splitFences(text) {
  const parts = [];
  let current = { code: false, lang: "", lines: [] };
  for (const line of text.split("\n")) {
    const fence = /^\s*```\s*([\w+#.-]*)\s*$/.exec(line);
    if (fence) {
      parts.push(current);
      current = current.code
        ? { code: false, lang: "", lines: [] }
        : { code: true, lang: fence[1], lines: [] };
    } else {
      current.lines.push(line);
    }
  }
  parts.push(current);
  const result = parts.map((part) => ({ code: part.code, lang: part.lang, text: part.lines.join("\n") }));
  if (result.length === 1) return result; // no fence: the text exactly as sent
  // Next to a code block, the blank lines around the fences would only add
  // space that the block's margin already gives.
  return result
    .map((part) => (part.code ? part : { ...part, text: part.text.replace(/^\n+|\n+$/g, "") }))
    .filter((part) => part.code || part.text);
}

/** Build the DOM nodes of an answer from its text. */
function answerNodes(text) {
  return splitFences(text).map((part) => {
    if (!part.code) return document.createTextNode(part.text);
    const pre = document.createElement("pre");
    const code = document.createElement("code");
    if (part.lang) {
      pre.dataset.lang = part.lang;
      code.className = `language-${part.lang}`;
    }
    code.textContent = part.text;
    pre.append(code);
    return pre;
  });
}

/** A new element with a class and, optionally, text. */
function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---------------------------------------------------------------------------
// Talking to the server
// ---------------------------------------------------------------------------

// The first line of the message shown for each error type of the stream.
const ERROR_TITLES = {
  busy: "No model worker became free in time.",
  timeout: "The model took too long.",
  model_error: "The model failed.",
};

/** Seconds from a Retry-After header: either a number of seconds or a date. */
function retryAfterSeconds(header) {
  if (!header) return null;
  if (/^\s*\d+\s*$/.test(header)) return Number(header);
  const date = Date.parse(header);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

/** FastAPI's "detail": a sentence, or a list of validation errors. */
function describeDetail(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((error) => {
        // loc is like ["body", "prompt"]: the field's name is what helps.
        const where = Array.isArray(error.loc) ? error.loc.slice(1).join(".") : "";
        return where ? `${where}: ${error.msg}` : String(error.msg);
      })
      .join("; ");
  }
  return detail == null ? "" : JSON.stringify(detail);
}

/** [title, detail] for an answer that is not a stream: 4xx, 503, 5xx. */
async function describeHttpError(response) {
  let detail = "";
  try {
    detail = describeDetail((await response.json()).detail);
  } catch {
    // Not JSON (a proxy's error page, say): the status line says enough.
  }
  const status = `${response.status} ${response.statusText}`.trim();
  const retry = retryAfterSeconds(response.headers.get("Retry-After"));
  if (response.status === 401) return ["Enter a valid API key in the field below.", detail];
  if (response.status === 429 && retry !== null) return [`Too many messages: try again in ${retry} s.`, detail];
  if (response.status === 503 && retry !== null) return [`Busy, try again in ${retry} s.`, detail];
  if (response.status >= 500) return [`The server failed (${status}).`, detail];
  return [`The server refused the message (${status}).`, detail];
}

// ---------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------

const log = document.getElementById("log");
const form = document.getElementById("form");
const input = document.getElementById("prompt");
const thinkingToggle = document.getElementById("thinking");
const keyInput = document.getElementById("api-key");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const announce = document.getElementById("announce");
const chips = document.querySelectorAll(".chip");

// The AbortController of the answer being streamed, or null when idle.
let controller = null;

/** Add the user's message and an empty answer to the conversation. */
function addTurn(prompt) {
  document.getElementById("empty")?.remove();
  const bot = element("div", "msg bot");
  // aria-busy asks screen readers to wait until the answer is complete.
  bot.setAttribute("aria-busy", "true");
  const turn = {
    bot,
    waiting: element("p", "waiting"),
    answer: element("div", "answer"),
    cursor: element("span", "cursor"),
    thinking: null, // the <details> of the thinking phase, made when it starts
    thinkingText: null,
    text: "", // the answer so far
    thought: "", // the thinking so far
    isWaiting: false,
    streaming: true,
  };
  turn.waiting.hidden = true;
  turn.cursor.setAttribute("aria-hidden", "true");
  bot.append(turn.waiting, turn.answer);
  log.append(element("div", "msg user", prompt), bot);
  render(turn);
  log.scrollTop = log.scrollHeight; // a new question always comes into view
  return turn;
}

/** Whether the conversation is scrolled to (nearly) its end. */
function atBottom() {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 60;
}

/**
 * Change the conversation; if its end was in view, keep it in view. A reader
 * who has scrolled up to read something is left where they are.
 */
function update(change) {
  const follow = atBottom();
  change();
  if (follow) log.scrollTop = log.scrollHeight;
}

/** Redraw a turn's answer from its text. */
function render(turn) {
  // Rebuilding the whole answer on every token keeps this simple and always
  // right (a code fence can open or close with any token); answers are short.
  const nodes = answerNodes(turn.text);
  // While waiting in line the message says so, instead of a frozen cursor.
  if (turn.streaming && !turn.isWaiting) nodes.push(turn.cursor);
  turn.answer.replaceChildren(...nodes);
}

function showWaiting(turn, position, reason) {
  turn.isWaiting = true;
  // "loading": the line stands still because a model worker is still loading, not because all are busy.
  const why = reason === "loading" ? "The model is still loading" : "Waiting for a free model worker";
  turn.waiting.textContent = `${why}: you are number ${Number(position)} in line…`;
  turn.waiting.hidden = false;
  render(turn);
}

function stopWaiting(turn) {
  if (!turn.isWaiting) return;
  turn.isWaiting = false;
  turn.waiting.hidden = true;
  turn.waiting.textContent = "";
}

function addThinking(turn, token) {
  if (!turn.thinking) {
    // <details open>: shown while it streams, and the reader can fold it away.
    turn.thinking = element("details", "thinking");
    turn.thinking.open = true;
    turn.thinking.append(element("summary", "", "Thinking"));
    turn.thinkingText = element("div", "thinking-text");
    turn.thinking.append(turn.thinkingText);
    turn.bot.insertBefore(turn.thinking, turn.answer);
  }
  turn.thought += token;
  // The thinking ends with blank lines that separate it from the answer: the
  // box already does that, so they are left out of it.
  turn.thinkingText.textContent = turn.thought.trimEnd();
}

function showError(turn, title, detail) {
  const box = element("div", "error");
  // role=alert: screen readers say it at once.
  box.setAttribute("role", "alert");
  box.append(element("strong", "", title));
  if (detail) box.append(element("span", "", detail));
  update(() => turn.bot.append(box));
}

/** Apply one event of the stream to the page. */
function handlePayload(turn, payload) {
  if (payload.error) {
    const title = ERROR_TITLES[payload.error.type] || "Something went wrong.";
    showError(turn, title, String(payload.error.message ?? ""));
    return;
  }
  if (typeof payload.waiting === "number") {
    showWaiting(turn, payload.waiting, payload.reason);
    return;
  }
  if (!payload.token) return;
  stopWaiting(turn); // the first real token: our turn has come
  if (payload.phase === "thinking") {
    addThinking(turn, payload.token);
  } else {
    turn.text += payload.token;
  }
  render(turn);
}

/** Read the SSE body until [DONE]; report a stream that ends without it. */
async function readStream(turn, response) {
  const reader = response.body.getReader();
  const parser = createSSEParser();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    for (const event of parser.push(value)) {
      if (event.data === "[DONE]") {
        // The answer is complete; let go of the connection at once.
        await reader.cancel();
        return;
      }
      if (event.type !== "message") continue; // /chat sends no other kind
      let payload;
      try {
        payload = JSON.parse(event.data);
      } catch {
        showError(turn, "The server sent an event this page cannot read.", event.data.slice(0, 200));
        await reader.cancel();
        return;
      }
      update(() => handlePayload(turn, payload));
    }
  }
  showError(turn, "The answer was cut off.", "The server closed the stream before it was complete.");
}

/** Send a prompt and stream its answer into a new turn of the conversation. */
async function send(prompt) {
  if (controller || !prompt.trim()) return;
  controller = new AbortController();
  const turn = addTurn(prompt);
  setBusy(true);
  input.focus();
  let response = null;
  try {
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    // The way OpenAI clients send their key, too.
    if (keyInput.value) headers.Authorization = `Bearer ${keyInput.value}`;
    // Relative URL, like the page's own files: works under a proxy's path too.
    response = await fetch("chat", {
      method: "POST",
      headers,
      body: JSON.stringify({ prompt, thinking: thinkingToggle.checked }),
      signal: controller.signal,
    });
    const type = response.headers.get("Content-Type") || "";
    if (!response.ok) {
      showError(turn, ...(await describeHttpError(response)));
    } else if (!type.startsWith("text/event-stream")) {
      showError(turn, "The server did not answer with a stream.", `It sent ${type || "no content type"}.`);
    } else {
      await readStream(turn, response);
    }
  } catch (error) {
    // Stop aborts the request: fetch or read() then rejects with an AbortError.
    // Closing the connection is what tells the server to stop generating.
    if (controller.signal.aborted) {
      update(() => turn.bot.append(element("p", "note", "Stopped.")));
    } else if (response === null) {
      // fetch itself rejects when no HTTP answer came at all.
      showError(turn, "Cannot reach the server.", `Is it running? (${error.message})`);
    } else {
      showError(turn, "The connection was lost.", error.message);
    }
  } finally {
    finish(turn);
  }
}

/** Put the page back into its ready state after an answer, whatever happened. */
function finish(turn) {
  turn.streaming = false;
  update(() => {
    stopWaiting(turn);
    render(turn);
  });
  turn.bot.removeAttribute("aria-busy");
  announce.textContent = turn.text ? "Answer finished." : "";
  controller = null;
  setBusy(false);
  input.focus();
}

/** While an answer streams: Stop instead of Send, and no second prompt. */
function setBusy(busy) {
  sendButton.hidden = busy;
  stopButton.hidden = !busy;
  for (const chip of chips) chip.disabled = busy;
}

/** Grow the input with its text, up to the max-height of the stylesheet. */
function fitInput() {
  input.style.height = "auto";
  input.style.height = `${input.scrollHeight + input.offsetHeight - input.clientHeight}px`;
}

form.addEventListener("submit", (event) => {
  event.preventDefault(); // the page talks to the server itself, no reload
  const prompt = input.value;
  if (controller || !prompt.trim()) return;
  input.value = "";
  fitInput();
  send(prompt);
});

input.addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter makes a new line. isComposing: an Enter that
  // confirms an input method's candidate (Japanese, Chinese...) must not send.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  } else if (event.key === "Escape" && controller) {
    controller.abort();
  }
});

input.addEventListener("input", fitInput);

stopButton.addEventListener("click", () => controller?.abort());

for (const chip of chips) {
  chip.addEventListener("click", () => send(chip.dataset.prompt));
}

input.focus();

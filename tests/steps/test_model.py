"""Unit tests of the simulated model: the keyword table, whole words, token order."""

import pytest


@pytest.fixture
def chat_app(step_module, monkeypatch):
    module = step_module("chat_app")
    # No pauses in unit tests: the live tests check the pacing.
    monkeypatch.setattr(module, "WORD_DELAY", (0, 0))
    monkeypatch.setattr(module, "LOAD_SECONDS", 0, raising=False)
    return module


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        ("hello", "GREETING"),
        ("Hi there!", "GREETING"),
        ("HEY", "GREETING"),
        ("greetings, model", "GREETING"),
        ("please explain this", "EXPLAIN"),
        ("how does streaming work?", "STREAMING"),
        ("show me some code", "CODE"),
        ("what is the weather like?", "GENERAL"),
        # Whole words only: none of these contains a keyword as a word.
        ("I think so", "GENERAL"),
        ("this and that", "GENERAL"),
        ("they explained it", "GENERAL"),
        ("barcode scanner", "GENERAL"),
        # The first row of the table wins, whatever the order in the prompt.
        ("explain the code, hello", "GREETING"),
        ("code for streaming", "STREAMING"),
        ("explain streaming code", "EXPLAIN"),
    ],
)
def test_pick_answer(step, chat_app, prompt, answer):
    assert chat_app.pick_answer(prompt) == getattr(chat_app, answer)


def test_answers_are_distinct_and_well_formed(step, chat_app):
    answers = [chat_app.GREETING, chat_app.EXPLAIN, chat_app.STREAMING, chat_app.CODE, chat_app.GENERAL]
    assert len(set(answers)) == len(answers)
    assert chat_app.GREETING.startswith("Hello")
    assert "```python\n" in chat_app.CODE
    for answer in answers:
        assert answer == answer.strip()


def test_tokens_keep_their_spacing(step, chat_app):
    for text in (chat_app.GREETING, chat_app.CODE, "one  two\nthree"):
        tokens = chat_app.split_tokens(text)
        assert "".join(tokens) == text
        assert tokens[0] == text.split()[0]
        # Every token is one word with the spacing that came before it.
        assert all(len(token.split()) == 1 for token in tokens)


def model_class(chat_app):
    return getattr(chat_app, "ChatApp", None) or chat_app.ChatModel


def answer_tokens(model, prompt: str) -> list[str]:
    """The answer's tokens, from `stream` (step 03 on) or `tokens` (before).

    From step 04 on, `stream` yields {"token", "phase"} events.
    """
    produce = getattr(model, "stream", None) or model.tokens
    return [item if isinstance(item, str) else item["token"] for item in produce(prompt)]


def test_the_model_produces_the_answer_word_by_word(step, chat_app):
    model = model_class(chat_app)()
    assert answer_tokens(model, "hello") == chat_app.split_tokens(chat_app.GREETING)


@pytest.mark.until("02")
def test_generate_joins_the_words(step, chat_app):
    assert model_class(chat_app)().generate("hello") == chat_app.GREETING


def test_the_model_pauses_between_words(step, chat_app, monkeypatch):
    pauses = []
    monkeypatch.setattr(chat_app.time, "sleep", pauses.append)
    monkeypatch.setattr(chat_app, "WORD_DELAY", (0.03, 0.08))
    answer_tokens(model_class(chat_app)(), "hello")
    assert len(pauses) == len(chat_app.split_tokens(chat_app.GREETING))
    assert all(0.03 <= pause <= 0.08 for pause in pauses)


@pytest.mark.since("02")
def test_dirty_app_loads_once_in_init(step, chat_app, caplog):
    from gunicorn.dirty import DirtyApp

    app = chat_app.ChatApp()
    assert isinstance(app, DirtyApp)
    with caplog.at_level("INFO", logger="gunicorn.error"):
        app.init()
    assert "Chat model loaded" in caplog.text
    # Actions are called by name, as the dirty worker does.
    action = "stream" if hasattr(app, "stream") else "generate"
    assert "".join(answer_tokens(app, "hello")) == chat_app.GREETING
    assert app(action, "hello") is not None

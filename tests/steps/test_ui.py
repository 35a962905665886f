"""The chat page's files (step 05 on), checked over HTTP without a browser."""

import re
from html.parser import HTMLParser

import pytest

pytestmark = pytest.mark.since("05")

STATIC_FILES = {
    "index.html": {"text/html"},
    "app.js": {"text/javascript", "application/javascript"},
    "app.css": {"text/css"},
}


class References(HTMLParser):
    """Collect every src and href of a page."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def references(html: str) -> list[str]:
    parser = References()
    parser.feed(html)
    return parser.urls


def test_the_page_is_served_at_the_root(step, client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    html = response.text
    assert html.lower().startswith("<!doctype html>")
    assert '<meta charset="utf-8">' in html
    assert 'name="viewport"' in html
    assert response.content == (step.path / "static" / "index.html").read_bytes()


def test_the_page_loads_its_script_and_stylesheet(step, client):
    urls = references(client.get("/").text)
    assert "static/app.js" in urls
    assert "static/app.css" in urls
    assert (step.path / "static" / "app.js").is_file()


@pytest.mark.parametrize("name", STATIC_FILES)
def test_static_files_have_the_right_content_type(step, client, name):
    response = client.get(f"/static/{name}")
    assert response.status_code == 200
    media_type, _, params = response.headers["content-type"].partition(";")
    assert media_type in STATIC_FILES[name]
    assert params.strip() == "charset=utf-8"
    assert response.content == (step.path / "static" / name).read_bytes()


def test_every_local_reference_is_served(step, client):
    for url in references(client.get("/").text):
        if url.startswith("data:"):
            continue
        # Relative to the page at /, so that a proxy may serve it under a path.
        assert not url.startswith("/"), url
        assert client.get(f"/{url}").status_code == 200, url


@pytest.mark.parametrize("name", STATIC_FILES)
def test_the_page_needs_no_other_server(step, name):
    # Works offline: no CDN, no web fonts, nothing fetched from elsewhere.
    text = (step.path / "static" / name).read_text()
    assert not re.search(r"https?://", text, re.IGNORECASE)
    assert not re.search(r"""(src|href)\s*=\s*["']?//|url\(\s*["']?//|@import""", text, re.IGNORECASE)


def test_unknown_static_files_are_404(step, client):
    assert client.get("/static/missing.js").status_code == 404
    # Only the static folder is served, not the Python files next to it.
    assert client.get("/static/%2e%2e/main.py").status_code == 404
    assert client.get("/main.py").status_code == 404

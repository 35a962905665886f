"""Take the pictures of the chat page that the docs show: `python -m tools.screenshot [OUT_DIR]`.

`make screenshots` calls it. It serves step 05, opens the page in a headless
Chromium, turns "show thinking" on, asks "explain", and saves the page while
the answer streams (chat-ui-streaming.png) and once it is complete
(chat-ui.png), in docs/assets/generated/ unless OUT_DIR says otherwise.
The browser tests run the same `take_screenshots` into test-output/.
"""

import shutil
import sys
from pathlib import Path

from harness.server import ROOT, start_server
from harness.steps import find

OUT_DIR = ROOT / "docs" / "assets" / "generated"
# Debian's chromium: Playwright cannot download its own browser everywhere.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless in a container: no sandbox (it needs privileges a container lacks),
# no GPU, and none of the background traffic a desktop browser makes.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# About a large phone: the layout the page is designed for first.
VIEWPORT = {"width": 430, "height": 800}
# The streaming picture is taken once the answer has this many words.
WORDS_MID_STREAM = 12


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def take_screenshots(page, base_url: str, out_dir: Path) -> list[Path]:
    """Ask "explain" with thinking on; save the page mid-stream and finished."""
    out_dir.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size(VIEWPORT)
    page.goto(base_url)
    page.get_by_label("show thinking").check()
    page.get_by_role("button", name="explain", exact=True).click()
    page.wait_for_function(
        "words => (document.querySelector('.msg.bot .answer')?.textContent.split(' ').length ?? 0) > words",
        arg=WORDS_MID_STREAM,
    )
    streaming = out_dir / "chat-ui-streaming.png"
    # animations="disabled" stops the cursor's blink at its visible state.
    page.screenshot(path=streaming, animations="disabled")
    # Send comes back when the answer is complete.
    page.get_by_role("button", name="Send").wait_for(timeout=30_000)
    finished = out_dir / "chat-ui.png"
    page.screenshot(path=finished, animations="disabled")
    return [streaming, finished]


def main(argv: list[str]) -> int:
    from playwright.sync_api import sync_playwright

    out_dir = Path(argv[1]).resolve() if len(argv) > 1 else OUT_DIR
    if not Path(CHROMIUM).is_file():
        print(f"No Chromium at {CHROMIUM}: install it (Debian: apt install chromium).", file=sys.stderr)
        return 2
    with start_server(find("05").path) as server, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            for path in take_screenshots(browser.new_page(), server.base_url, out_dir):
                print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

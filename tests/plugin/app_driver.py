"""Drive the FiftyOne App (1.22) in headless Chromium the way a user clicks it.

Every forced click and wait that FiftyOne's UI needs lives here, so tests read as user steps:
open the operator browser, pick an operator, fill its form by label, execute, read the grid.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from plugin_helpers import REPO, subprocess_env

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
PROMPT = '[data-cy="operators-prompt-modal"]'
#: The dialog where operators that report progress show it, then their result (the prompt closes).
OUTPUT = '[role="dialog"]:not([data-cy="operators-prompt-modal"])'
TILE, TILE_TAG = '[data-cy="looker"]', '[data-cy="tag-name"]'
#: How long a click or a fill waits for its element: a form being resolved again is not editable, and
#: on a busy 2-core machine that can take longer than Playwright's default 30 s.
UI_TIMEOUT_MS = 90_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    """Poll ``url`` until it answers; fail with the log's tail if ``process`` dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer: {log.read_text()[-3000:]}") from None
            time.sleep(1)


@contextmanager
def app_server(log: Path, extra_env: dict | None = None, command: list[str] | None = None, port: int | None = None):
    """A FiftyOne App server in a child process (this plugin importable there); yields its base URL."""
    port = port or free_port()
    env = {**subprocess_env(), "FIFTYONE_DO_NOT_TRACK": "true", **(extra_env or {})}
    command = command or [sys.executable, "-m", "fiftyone.server.main", "--port", str(port), "--address", "127.0.0.1"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/", server, log)
            yield f"http://127.0.0.1:{port}", server
        finally:
            if server.poll() is None:
                server.terminate()
                server.wait(timeout=30)


#: One Chromium for the tests of a module (starting Playwright and a browser takes about 2 s; the
#: plugin tests' conftest stops it after each module); each page gets a context of its own, as
#: separate from the others as a fresh browser.
_running: dict = {}


def _browser(playwright_api):
    if "browser" not in _running or not _running["browser"].is_connected():
        close_browser()
        _running["playwright"] = playwright_api.sync_playwright().start()
        _running["browser"] = _running["playwright"].chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    return _running["browser"]


def close_browser() -> None:
    """Stop the session's Chromium and Playwright, if started."""
    browser, playwright = _running.pop("browser", None), _running.pop("playwright", None)
    try:
        if browser is not None and browser.is_connected():
            browser.close()
    finally:
        if playwright is not None:
            playwright.stop()


@contextmanager
def browser_page(playwright_api):
    """A page in a fresh browser context (own cookies and storage)."""
    context = _browser(playwright_api).new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        yield page
    finally:
        context.close()


#: Records every notice (snackbar) the App shows, since they vanish after a few seconds.
RECORD_NOTICES = """
window.__notices = [];
new MutationObserver(() => document.querySelectorAll('#notistack-snackbar').forEach(e => {
  if (!window.__notices.includes(e.innerText)) window.__notices.push(e.innerText);
})).observe(document, {subtree: true, childList: true, characterData: true});
"""


class App:
    """One browser tab on one dataset of the App."""

    def __init__(self, page, url: str):
        self.page = page
        self.url = url
        page.add_init_script(RECORD_NOTICES)

    def wait_for_notice(self, text: str, timeout_s: float = 30) -> str:
        """The first notice shown so far (or within ``timeout_s``) that contains ``text``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [n for n in self.page.evaluate("window.__notices || []") if text in n]
            if found:
                return found[0]
            self.page.wait_for_timeout(250)
        raise AssertionError(f"no notice with {text!r}; shown: {self.page.evaluate('window.__notices || []')}")

    # ---- page ------------------------------------------------------------------------------
    def open(self, url: str | None = None, ready: str = TILE_TAG) -> App:
        """Load the page; ready once an element matching ``ready`` (default: a tile's label) shows."""
        self.page.goto(url or self.url)
        self.page.wait_for_selector(ready, timeout=120_000)
        self.dismiss_popups()
        return self

    def dismiss_popups(self) -> None:
        """The "Explore Enterprise" popover and the analytics banner cover parts of the page."""
        for name in ("Dismiss", "Disable"):
            button = self.page.get_by_role("button", name=name, exact=True)
            if button.count():
                try:
                    button.first.click(timeout=3000)
                except Exception:  # noqa: BLE001  (gone in the meantime)
                    pass

    def clear_view(self) -> None:
        """Click the view bar's clear button (the App restores the last view set by an operator)."""
        clear = self.page.locator('[data-cy="btn-clear-view-bar"]')
        if clear.count() and clear.first.is_visible():
            clear.first.click()
            self.page.wait_for_timeout(1500)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.wait_for_timeout(800)  # thumbnails finish drawing
        self.page.screenshot(path=str(path))
        return path

    # ---- operators -------------------------------------------------------------------------
    def open_operator(self, label: str) -> None:
        """Backtick opens the operator browser; type the label, pick the match, wait for its form."""
        self.page.keyboard.press("Escape")
        self.page.locator("body").click(position={"x": 700, "y": 40}, force=True)
        self.page.keyboard.press("Backquote")
        search = self.page.get_by_placeholder(re.compile("search", re.I)).last
        search.wait_for(timeout=10_000)
        search.fill(label)
        self.page.get_by_text(label, exact=True).first.click()
        self.page.locator(PROMPT).wait_for(timeout=30_000)

    def field(self, label: str):
        """The innermost form property whose label is exactly ``label``."""
        prompt = self.page.locator(PROMPT)
        title = self.page.locator("p", has_text=re.compile(f"^{re.escape(label)}$"))
        return prompt.locator(".MuiGrid-item").filter(has=title).last

    def fill(self, label: str, value) -> None:
        box = self.field(label).locator("input").first
        box.fill(str(value))
        box.press("Tab")
        self.settle()

    def choose(self, label: str, option: str) -> None:
        """A radio button or a dropdown choice."""
        field = self.field(label)
        radio = field.get_by_role("radio", name=option, exact=True)
        if radio.count():
            radio.check(force=True)
        else:
            field.get_by_role("combobox").click()
            self.page.get_by_role("option", name=option, exact=True).click()
        self.settle()

    def tick(self, label: str) -> None:
        self.field(label).get_by_role("checkbox").check(force=True)
        self.settle()

    def upload(self, label: str, path: Path) -> None:
        self.field(label).locator('input[type="file"]').set_input_files(str(path))
        self.settle()

    def settle(self) -> None:
        """Dynamic forms re-resolve on the server after each change."""
        self.page.wait_for_timeout(700)

    def prompt_text(self) -> str:
        return self.page.locator(PROMPT).inner_text()

    def execute(self, timeout_s: float = 300) -> str:
        """Click Execute, wait until the operator finished; returns the prompt's output text (if any)."""
        button = self.page.locator(PROMPT).get_by_role("button", name="Execute", exact=True)
        if button.count():  # operators without inputs run as soon as they are picked
            deadline = time.monotonic() + 30
            while button.is_disabled() and time.monotonic() < deadline:
                self.page.wait_for_timeout(250)
            button.click()
        return self.wait_done(timeout_s)

    def execute_refused(self, text: str, timeout_s: float = 120) -> str:
        """Click Execute on a form the operator will refuse: the error notice containing ``text``, once
        shown (the form then opens again with the input kept)."""
        self.page.locator(PROMPT).get_by_role("button", name="Execute", exact=True).click()
        notice = self.wait_for_notice(text, timeout_s)
        self.page.locator(PROMPT).get_by_role("button", name="Execute", exact=True).wait_for(timeout=timeout_s * 1000)
        return notice

    def wait_done(self, timeout_s: float) -> str:
        """Either the prompt closes (no output, or the output in the progress dialog) or it shows the output
        with a Done/Close button."""
        deadline = time.monotonic() + timeout_s
        prompt = self.page.locator(PROMPT)
        previous = None
        while time.monotonic() < deadline:
            texts = prompt.all_inner_texts()  # no waiting: the prompt may close at any moment
            if not texts:
                return "\n".join(self.page.locator(OUTPUT).all_inner_texts())
            text = texts[0]
            finished = re.search(r"\bDone\b|\bClose\b", text) and "Execute" not in text
            if finished and "Error occurred during operator execution" in text:
                prompt.get_by_text("Error occurred during operator execution").click()  # shows the details
                self.page.wait_for_timeout(500)
                return prompt.all_inner_texts()[0]
            if finished and text == previous:  # the output has finished rendering
                return text
            previous = text if finished else None
            self.page.wait_for_timeout(700)
        raise TimeoutError(f"operator did not finish in {timeout_s} s: {prompt.inner_text()[-1500:]}")

    def close_prompt(self) -> None:
        """Close the prompt, or the dialog holding the output of an operator that reported progress."""
        prompt = self.page.locator(f"{PROMPT}, {OUTPUT}").first
        for name in ("Done", "Close", "Cancel"):
            button = prompt.get_by_role("button", name=name, exact=True)
            if button.count():
                button.first.click()
                break
        prompt.wait_for(state="detached", timeout=10_000)

    # ---- grid ------------------------------------------------------------------------------
    def grid(self) -> list[dict[str, str]]:
        """Each tile's drawn tags, field -> text (``name`` is the label), in reading order.

        Read in one pass inside the page: the grid may re-render between two Playwright calls (a
        tile counted a moment ago can be gone, and waiting for it would time out)."""
        found = self.page.eval_on_selector_all(
            TILE,
            """(tiles, tagSelector) => tiles.flatMap((tile) => {
                const box = tile.getBoundingClientRect();
                if (!box.width || !box.height || !tile.querySelector(tagSelector)) return [];
                const drawn = {};
                for (const tag of tile.querySelectorAll('[data-cy^="tag-"]')) {
                    drawn[tag.getAttribute("data-cy").slice(4)] = tag.innerText;
                }
                return [[Math.round(box.y), box.x, drawn]];
            })""",
            TILE_TAG,
        )
        return [drawn for _, _, drawn in sorted(found, key=lambda f: (f[0], f[1]))]

    def labels(self) -> list[str]:
        return [drawn["name"] for drawn in self.grid()]

    def wait_for_labels(self, expected: list[str], timeout_s: float = 60) -> list[str]:
        """Poll until the grid's first tiles are ``expected``; returns what it shows."""
        deadline = time.monotonic() + timeout_s
        while self.labels()[: len(expected)] != expected and time.monotonic() < deadline:
            self.page.wait_for_timeout(500)
        return self.labels()

    def show_field(self, name: str) -> None:
        """Tick a field in the sidebar so its value is drawn on every tile."""
        row = self.page.locator(f'[data-cy="sidebar-field-{name}"]')
        if not row.count():
            self.page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
        checkbox = self.page.locator(f'[data-cy="checkbox-{name}"]')
        if checkbox.count():
            checkbox.first.click()
        else:
            self.page.get_by_text(name, exact=True).first.click()
        self.page.wait_for_timeout(1000)

    def select_tile(self, label: str) -> None:
        """Hover the tile with ``label`` and tick its selection checkbox (top left)."""
        tile = self.page.locator(TILE).filter(has=self.page.locator(TILE_TAG, has_text=label)).first
        tile.hover()
        box = tile.bounding_box()
        self.page.mouse.click(box["x"] + 18, box["y"] + 18)
        self.page.wait_for_function(
            "() => document.querySelectorAll('input[type=checkbox]:checked').length > 0", timeout=10_000
        )

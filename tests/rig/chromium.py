"""Debian's headless Chromium, driven over the DevTools protocol (one websocket, flattened
sessions), for tests of pages the daemon serves.

    with Chromium(tmp_path / "profile") as browser:       # raises BrowserUnavailable if it cannot run
        page = browser.new_page()
        page.navigate(url)
        page.wait_for("document.body.dataset.ready === '1'")
        page.evaluate("document.title"); page.screenshot(tmp_path / "page.png")
        assert page.errors == []

`page.errors` collects what a person would see as red in the console: console.error and
console.assert calls, uncaught exceptions and rejections, and the browser's own error entries
(a failed load, a refused Content-Security-Policy, ...).
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from websockets.sync.client import connect

START_TIMEOUT_S = 20.0


class BrowserUnavailable(RuntimeError):
    """Chromium is not installed or did not start here."""


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    def __init__(self, profile_dir: Path, width: int = 1280, height: int = 1000):
        self.profile_dir = Path(profile_dir)
        self.width, self.height = width, height
        self.process: subprocess.Popen | None = None
        self.ws = None
        self._closing = ExitStack()                 # the websocket
        self._next_id = 0
        self._pages: dict[str, Page] = {}          # session id -> page

    def start(self) -> Chromium:
        binary = chromium_binary()
        if binary is None:
            raise BrowserUnavailable("chromium is not installed (`make test` installs Debian's chromium)")
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.profile_dir / "chromium.log"
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile_dir}", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking",
             f"--window-size={self.width},{self.height}", "about:blank"], stdout=subprocess.DEVNULL, stderr=log_path.open("wb"))
        port, path = self._devtools_address(log_path)
        self.ws = self._closing.enter_context(connect(f"ws://127.0.0.1:{port}{path}", max_size=None,
                                                      open_timeout=10))
        return self

    def _devtools_address(self, log_path: Path) -> tuple[str, str]:
        """Chromium writes its DevTools port and browser path to DevToolsActivePort once it listens."""
        active = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            lines = active.read_text().split("\n") if active.exists() else []
            if len(lines) >= 2 and lines[0].strip() and lines[1].strip():
                return lines[0].strip(), lines[1].strip()
            time.sleep(0.05)
        tail = log_path.read_text(errors="replace")[-800:]
        self.close()
        raise BrowserUnavailable(f"chromium did not start (exit {self.process.returncode}): {tail}")

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        page = self._pages[session] = Page(self, session)
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            page.send(domain)
        return page

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """One DevTools command; events that arrive meanwhile go to their page."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            page = self._pages.get(reply.get("sessionId"))
            if page is not None and "method" in reply:
                page.on_event(reply["method"], reply.get("params", {}))

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.send("Browser.close")
            except Exception:                   # already gone: the process is reaped below
                pass
            self._closing.close()
            self.ws = None
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session
        self.errors: list[str] = []

    def send(self, method: str, **params) -> dict:
        return self.browser.send(method, self.session, **params)

    def on_event(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append("console.error: " + " ".join(
                str(arg.get("value", arg.get("description", ""))) for arg in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append("exception: " + details.get("exception", {}).get("description", details["text"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append(f"{entry['source']}: {entry['text']} ({entry.get('url', '')})")

    def navigate(self, url: str, timeout_s: float = 10.0) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", timeout_s)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 10.0):
        """Evaluate `expression` until it is truthy (a bound on waiting, not a timing check)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                body = self.evaluate("document.body ? document.body.innerText : ''") or ""
                raise TimeoutError(f"still false after {timeout_s} s: {expression}\npage text: {body[:1500]}")
            time.sleep(0.05)

    def dom(self) -> str:
        """The DOM as it is now (what `chromium --dump-dom` prints)."""
        return self.evaluate("document.documentElement.outerHTML")

    def screenshot(self, path: Path) -> Path:
        """The whole page as a PNG."""
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

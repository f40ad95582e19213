"""Debian's headless Chromium, driven over the DevTools protocol with aiohttp's websocket client.

`Chromium` runs the browser process (one per test module); `Cdp` is one websocket to it;
`Page` is a tab in a browser context of its own (its own cookies), with the few things the
console tests do: go to a URL, fill and click, read text and table rows, screenshot.
Every wait is bounded; a navigation is over when a complete document is there that is not
the one the action started from.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

# The first start on a fresh machine can be slow (font caches, a loaded CI box); a start
# that dies without a word is tried again once.
STARTUP_TIMEOUT_S = 90.0
START_ATTEMPTS = 2
STEP_TIMEOUT_S = 20.0
POLL_S = 0.05
_DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")


# Debian's `chromium` is a shell wrapper that reads /etc/chromium.d first; one of those
# files breaks when /dev/shm is mounted twice ("[: …: unexpected operator") and the browser
# never starts. The tests pass every flag they need themselves, so the binary is run as is.
DEBIAN_BINARY = Path("/usr/lib/chromium/chromium")


def chromium_path() -> str | None:
    """The system's Chromium, if installed (scripts/setup installs Debian's `chromium`)."""
    if DEBIAN_BINARY.is_file() and os.access(DEBIAN_BINARY, os.X_OK):
        return str(DEBIAN_BINARY)
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """One headless Chromium for the test module that imports this fixture."""
    browser = Chromium(tmp_path_factory.mktemp("chromium"))
    browser.start()
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
async def cdp(chromium: Chromium) -> AsyncIterator[Cdp]:
    """A DevTools connection to the module's browser, for one test."""
    async with Cdp.connect(chromium.endpoint) as connection:
        yield connection


async def sign_in(page: Page, base_url: str, token: str) -> None:
    """Sign in to the console with an admin token, through its form."""
    await page.goto(f"{base_url}/console/devices")
    assert (await page.url()).endswith("/console/login")
    await page.fill("input[name=token]", token)
    await page.click("form[action='/console/login'] button")
    assert (await page.url()).endswith("/console/devices")


def row_of(rows: list[list[str]], text: str) -> list[str]:
    """The one row with a cell containing `text`."""
    matches = [row for row in rows if any(text in cell for cell in row)]
    assert len(matches) == 1, (text, rows)
    return matches[0]


class Chromium:
    """A headless Chromium process with its DevTools endpoint; `start()` then `close()`."""

    def __init__(self, directory: Path, extra_args: tuple[str, ...] = ()) -> None:
        self._directory = directory
        self._extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""

    def start(self) -> None:
        """Start the browser and wait (bounded) for its DevTools websocket URL."""
        binary = chromium_path()
        if binary is None:
            raise RuntimeError("chromium is not installed (scripts/setup installs it)")
        failures = []
        for attempt in range(1, START_ATTEMPTS + 1):
            failure = self._start_once(binary, attempt)
            if failure is None:
                return
            failures.append(failure)
        raise RuntimeError("chromium did not start:\n" + "\n".join(failures))

    def _start_once(self, binary: str, attempt: int) -> str | None:
        """One start; None once the endpoint is known, else what went wrong."""
        log = self._directory / f"chromium-{attempt}.log"
        started = time.monotonic()
        with log.open("wb") as stderr:
            self._process = subprocess.Popen(
                [
                    binary,
                    "--headless=new",
                    "--no-sandbox",  # tests run as root
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--disable-sync",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                    f"--user-data-dir={self._directory / f'profile-{attempt}'}",
                    *self._extra_args,
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        process = self._process
        while time.monotonic() - started < STARTUP_TIMEOUT_S:
            match = _DEVTOOLS.search(log.read_text(errors="replace"))
            if match:
                self.endpoint = match.group(1)
                return None
            if process.poll() is not None:
                break
            time.sleep(0.05)
        self.close()
        return (
            f"attempt {attempt}: exit status {process.returncode} after "
            f"{time.monotonic() - started:.1f} s; its log: "
            f"{log.read_text(errors='replace')[-2000:]!r}"
        )

    def close(self) -> None:
        """Stop the browser (terminate, then kill), bounded."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class Cdp:
    """One DevTools websocket: commands, each answered by its id."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, endpoint: str) -> AsyncIterator[Cdp]:
        """A connection to the browser endpoint, closed (reader task awaited) on exit."""
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                ws = await http.ws_connect(endpoint, max_msg_size=0)
            cdp = cls(ws)
            try:
                yield cdp
            finally:
                cdp._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cdp._reader
                await ws.close()

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:  # events are not used
                future = self._answers.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
        for future in self._answers.values():
            if not future.done():
                future.set_exception(ConnectionError("the browser closed the DevTools socket"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        """Send a command and return its result; `RuntimeError` with the browser's error."""
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[command_id] = future
        message: dict[str, Any] = {"id": command_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send_str(json.dumps(message))
        async with asyncio.timeout(STEP_TIMEOUT_S):
            answer = await future
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result


class Page:
    """A tab in its own browser context (its own cookie jar)."""

    def __init__(self, cdp: Cdp, session: str) -> None:
        self._cdp = cdp
        self._session = session

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, cdp: Cdp, *, width: int = 1200, height: int = 900) -> AsyncIterator[Page]:
        """A new tab in a fresh browser context, disposed of on exit."""
        context = (await cdp.send("Target.createBrowserContext"))["browserContextId"]
        try:
            target = await cdp.send(
                "Target.createTarget", {"url": "about:blank", "browserContextId": context}
            )
            attached = await cdp.send(
                "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
            )
            page = cls(cdp, attached["sessionId"])
            await page.command("Page.enable")
            await page.viewport(width, height)
            yield page
        finally:
            await cdp.send("Target.disposeBrowserContext", {"browserContextId": context})

    async def command(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A DevTools command for this tab."""
        return await self._cdp.send(method, params, session=self._session)

    async def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        """Emulate a screen of this size (a phone with `mobile`)."""
        await self.command(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    async def _navigation(self, action: Any) -> None:
        # The old document is marked; the new one is there once a complete document has no
        # mark. Stray load events (about:blank's, a late one) cannot be mistaken for it.
        await self.evaluate("window.__replaced = true")
        await action
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while True:
                try:
                    if await self.evaluate(
                        "document.readyState === 'complete' && window.__replaced !== true"
                    ):
                        return
                except RuntimeError:  # the context went away mid-navigation
                    pass
                await asyncio.sleep(POLL_S)

    async def goto(self, url: str) -> None:
        """Load `url` and wait for its load event."""
        await self._navigation(self.command("Page.navigate", {"url": url}))

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (our test code, not the page's)."""
        result = await self.command(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def fill(self, selector: str, value: str) -> None:
        """Set a form field's value (an input or a select)."""
        found = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            f" if (!e) return false; e.value = {json.dumps(value)}; return true; }})()"
        )
        assert found, f"no element {selector}"

    async def check(self, selector: str) -> None:
        """Tick a checkbox."""
        assert await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return false; e.checked = true; return true; })()"
        ), f"no element {selector}"

    async def click(self, selector: str) -> None:
        """Click what `selector` finds and wait for the page it leads to."""

        async def click() -> None:
            assert await self.evaluate(
                f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                " if (!e) return false; e.click(); return true; })()"
            ), f"no element {selector}"

        await self._navigation(click())

    async def text(self, selector: str = "main") -> str:
        """The rendered text of the first element `selector` finds ('' if none)."""
        value = await self.evaluate(
            f"document.querySelector({json.dumps(selector)})?.innerText ?? ''"
        )
        return str(value)

    async def rows(self, selector: str) -> list[list[str]]:
        """The cells' text of each body row of the table `selector` finds."""
        value = await self.evaluate(
            f"Array.from(document.querySelectorAll({json.dumps(selector + ' tbody tr')}))"
            ".map(r => Array.from(r.cells).map(c => c.innerText.trim()))"
        )
        return [list(map(str, row)) for row in value]

    async def url(self) -> str:
        """Where the tab is."""
        return str(await self.evaluate("location.href"))

    async def screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole page; returns the path (and prints it)."""
        shot = await self.command(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        await asyncio.to_thread(_write, path, base64.b64decode(shot["data"]))
        print(f"screenshot: {path}")
        return path


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)

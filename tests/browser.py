"""Headless Chromium for the tests, driven over the Chrome DevTools protocol (a websocket; the
websocket-client package of the dev extra): open a page, type into it, read its DOM, collect its
console errors, uncaught exceptions and every URL it requested, and take a screenshot.

Chromium is Debian's `chromium` package. `find_or_install` installs it when it is missing and this
runs as root with apt-get (from the local apt cache only: `--no-download`; the cached .deb files
themselves when the package lists name a newer version than the cache holds), and otherwise says
why it could not, for the caller's skip."""

from __future__ import annotations

import base64
import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

NAMES = ("chromium", "chromium-browser", "google-chrome")
START_S = 30.0


def find() -> str | None:
    return next((path for name in NAMES if (path := shutil.which(name))), None)


def find_or_install() -> tuple[str | None, str]:
    """(the browser's path, "") or (None, why there is none)."""
    if path := find():
        return path, ""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None, "no chromium on PATH, and no apt-get as root to install Debian's package"
    tries = [["chromium"], sorted(glob.glob("/var/cache/apt/archives/chromium_*.deb"))[-1:]
             + sorted(glob.glob("/var/cache/apt/archives/chromium-common_*.deb"))[-1:]]
    output = ""
    for packages in tries:
        if not packages:
            continue
        result = subprocess.run(["apt-get", "install", "-y", "-q", "--no-download", "--no-install-recommends",
                                 *packages], capture_output=True, text=True, timeout=600,
                                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        output = (result.stdout + result.stderr)[-600:]
        if path := find():
            return path, ""
    return None, f"chromium is not installed and apt-get could not install it from the local cache: {output}"


class Browser:
    """One headless Chromium with one page, until close()."""

    def __init__(self, executable: str, width: int = 1400, height: int = 2000) -> None:
        import websocket  # websocket-client (the dev extra)

        self.profile = tempfile.mkdtemp(prefix="hadis-chromium-")
        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(Path(self.profile) / "stderr.log", "wb"), start_new_session=True)
        port = self._port()
        targets = orjson.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(target for target in targets if target.get("type") == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def _port(self) -> int:
        """The DevTools port Chromium picked (--remote-debugging-port=0 writes it to DevToolsActivePort)."""
        marker = Path(self.profile) / "DevToolsActivePort"
        give_up_at = time.monotonic() + START_S
        while not marker.exists() or not marker.read_text().strip():
            if self.process.poll() is not None:
                log = (Path(self.profile) / "stderr.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"chromium exited with {self.process.returncode}: {log}")
            if time.monotonic() > give_up_at:
                raise RuntimeError(f"chromium did not open its DevTools port within {START_S:.0f} s")
            time.sleep(0.1)
        return int(marker.read_text().split()[0])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """A protocol command's result; the events that arrive meanwhile are kept in self.events."""
        call_id = next(self.ids)
        self.socket.send(orjson.dumps({"id": call_id, "method": method, "params": params}).decode())
        while True:
            message = orjson.loads(self.socket.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def open(self, url: str, timeout_s: float = 30.0) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", timeout_s)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float) -> Any:
        """The value of `expression` once it is truthy; AssertionError with the last value past timeout_s."""
        give_up_at = time.monotonic() + timeout_s
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < give_up_at, f"not true within {timeout_s:.0f} s: {expression} (was {value!r})"
            time.sleep(0.25)
        return value

    def errors(self) -> list[str]:
        """Console errors, failed assertions, uncaught exceptions and error log entries (network
        failures, Content-Security-Policy refusals) so far."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(arg.get("value", arg.get("description", "")))
                                                    for arg in params.get("args", [])))
            elif event["method"] == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
            elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        return found

    def requested(self) -> list[str]:
        """Every URL the page asked for."""
        return [event["params"]["request"]["url"] for event in self.events
                if event["method"] == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)  # its session: the renderers with it
                    self.process.wait(timeout=10)
            shutil.rmtree(self.profile, ignore_errors=True)

"""A headless Chromium driven over the DevTools protocol (websockets, already a viser dependency):
open a page, then take screenshots until one satisfies a condition or time runs out."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def screenshot_when(url: str, ready: Callable[[np.ndarray], bool], *, size: tuple[int, int] = (1000, 700),
                    timeout: float = 90.0) -> tuple[np.ndarray, bool]:
    """Load ``url`` and return (the first screenshot [H, W, 3] for which ``ready`` holds, True), or the last one
    and False at ``timeout`` seconds."""
    from websockets.sync.client import connect

    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = subprocess.Popen(
            [find_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
             "--enable-unsafe-swiftshader", "--no-first-run", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            port = _devtools_port(browser, deadline)
            page = _page_socket(port, url, deadline)
            with connect(page, max_size=None, open_timeout=10) as ws:
                shot = None
                for request_id in range(1, 10**6):
                    ws.send(json.dumps({"id": request_id, "method": "Page.captureScreenshot", "params": {"format": "png"}}))
                    reply = _reply(ws, request_id)
                    shot = np.asarray(Image.open(io.BytesIO(base64.b64decode(reply["result"]["data"]))).convert("RGB"))
                    if ready(shot):
                        return shot, True
                    if time.monotonic() > deadline:
                        return shot, False
                    time.sleep(0.5)
        finally:  # chromium's helper processes share its new session: end them all with it
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait(timeout=10)
    raise AssertionError("unreachable")


def _devtools_port(browser: subprocess.Popen, deadline: float) -> int:
    """Chromium prints 'DevTools listening on ws://127.0.0.1:PORT/...' on stderr once it is up."""
    while time.monotonic() < deadline:
        line = browser.stderr.readline()
        if not line and browser.poll() is not None:
            raise RuntimeError(f"chromium exited with code {browser.returncode} before DevTools came up")
        found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if found:
            return int(found.group(1))
    raise TimeoutError("chromium did not announce its DevTools port")


def _page_socket(port: int, url: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
            pages = [t for t in json.load(response) if t.get("type") == "page" and t.get("url", "").startswith(url)]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.2)
    raise TimeoutError(f"chromium opened no page for {url}")


def _reply(ws, request_id: int) -> dict:
    while True:
        message = json.loads(ws.recv(timeout=30))
        if message.get("id") == request_id:
            if "error" in message:
                raise RuntimeError(f"DevTools error: {message['error']}")
            return message


def save_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path)

"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`):
no WebDriver, no debugging port, no extra Python package, and nothing that may reach the
network (Selenium Manager would try to download a driver).

`./setup.sh test` installs Debian's `chromium` when it is missing (as root with apt-get);
`chromium_or_skip()` skips a test with the reason where that was not possible.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def chromium_or_skip() -> str:
    exe = find_chromium()
    if exe is None:
        pytest.skip(
            "no Chromium on PATH: ./setup.sh test installs Debian's `chromium` when run as root with apt-get; "
            "here it could not (not root, no apt-get, or no package source)"
        )
    return exe


def _wire(commands: int, answers: int) -> None:
    """In the browser's process: the protocol pipe is fds 3 (commands in) and 4 (answers out).
    Both are first moved above 9 so neither dup2 clobbers the other."""
    high_in, high_out = fcntl.fcntl(commands, fcntl.F_DUPFD, 10), fcntl.fcntl(answers, fcntl.F_DUPFD, 10)
    os.dup2(high_in, 3)
    os.dup2(high_out, 4)


class Browser:
    """One headless Chromium; `with Browser(exe) as b: b.open(url); b.eval("js")`."""

    def __init__(self, exe: str) -> None:
        self.exe = exe
        self._id = 0
        self._buf = b""
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def __enter__(self) -> Browser:
        self._profile = tempfile.TemporaryDirectory(prefix="gemma4u-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        args = [self.exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio"]
        args += ["--remote-debugging-pipe", f"--user-data-dir={self._profile.name}", "about:blank"]
        self.proc = subprocess.Popen(
            args,
            preexec_fn=lambda: _wire(to_child_r, from_child_w),
            close_fds=False,  # our fds are non-inheritable (PEP 446) but for 3 and 4, made in _wire
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._to_child)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._from_child)
        self._profile.cleanup()

    def _message(self) -> dict[str, Any]:
        while b"\0" not in self._buf:
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            ev = self._message()
            if ev.get("method") == method:
                return ev
            self.events.append(ev)

    def open(self, path: Path, width: int = 1280, height: int = 1600) -> None:
        """A new tab showing `path`, returned once its load event (images included) fired."""
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)[
            "sessionId"
        ]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        self.send("Page.navigate", {"url": path.resolve().as_uri()})
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        """The value of a JS expression in the page (promises awaited)."""
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

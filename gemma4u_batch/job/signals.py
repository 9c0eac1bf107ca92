"""Stopping a run on request without losing what finished."""

from __future__ import annotations

import os
import signal
from typing import Any


class StopSignal:
    """First SIGINT/SIGTERM: stop taking items and commit. Second: leave at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            os._exit(130)
        self.requested = True
        from ..console import say

        say("gemma4u: stopping — committing finished work (Ctrl-C again to quit now)")

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

"""Progress reporting: a rich live bar for people, JSON lines for schedulers, or nothing."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .messages import USER_STDERR, set_live_console, user_stderr


@dataclass
class Counters:
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    errors: int = 0
    skipped: int = 0
    output_tokens: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    total: int | None = None  # items in the input, once a background count finished

    def add(self, error_kind: str | None, output_tokens: int | None) -> None:
        self.done += 1
        self.output_tokens += output_tokens or 0
        if error_kind is not None:
            self.errors += 1
            self.errors_by_kind[error_kind] = self.errors_by_kind.get(error_kind, 0) + 1

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def snapshot(self) -> dict[str, Any]:
        el = max(self.elapsed, 1e-9)
        rate = self.done / el
        remaining = None if self.total is None else max(0, self.total - self.done - self.skipped)
        return {
            "total": self.total,
            "remaining": remaining,
            "eta_s": None if remaining is None or rate <= 0 else round(remaining / rate, 1),
            "done": self.done,
            "errors": self.errors,
            "skipped": self.skipped,
            "elapsed_s": round(self.elapsed, 3),
            "items_per_s": round(self.done / el, 3),
            "output_tokens_per_s": round(self.output_tokens / el, 3),
            "errors_by_kind": dict(self.errors_by_kind),
        }


class Reporter:
    """mode: 'rich' (live bar on stderr), 'json' (a JSON line every few seconds), 'quiet'."""

    def __init__(self, mode: str = "rich", every: float = 2.0) -> None:
        self.mode = mode if (mode != "rich" or USER_STDERR.isatty()) else "plain"
        self.every = every
        self._last = 0.0
        self._progress: Any = None
        self._task: Any = None

    def start(self, total: int | None) -> None:
        if self.mode == "rich":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]gemma4u"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                transient=False,
                console=Console(file=USER_STDERR),
                # Writes to sys.stdout/stderr are the engine's (diverted by messages.engine_output),
                # not to be printed above the bar; gemma4u's own messages go through messages.say.
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._progress.start()
            set_live_console(self._progress.console)
            self._task = self._progress.add_task("run", total=total, rate="")

    def update(self, c: Counters, force: bool = False) -> None:
        now = time.monotonic()
        if self.mode == "rich" and self._progress is not None:
            s = c.snapshot()
            rate = f"{s['items_per_s']:.2f} it/s · {s['output_tokens_per_s']:.1f} tok/s · {c.errors} errors"
            self._progress.update(self._task, completed=c.done + c.skipped, total=c.total, rate=rate)
            return
        if self.mode == "json" and (force or now - self._last >= self.every):
            self._last = now
            print(json.dumps({"event": "progress", **c.snapshot()}), file=user_stderr(), flush=True)

    def stop(self) -> None:
        if self._progress is not None:
            set_live_console(None)
            self._progress.stop()
            self._progress = None

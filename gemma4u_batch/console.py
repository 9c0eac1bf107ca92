"""What a person sees during a run: gemma4u's own messages (not the engine's log lines) and
the progress reporter (a rich live bar for people, JSON lines for schedulers, or nothing).

vLLM, torch and Triton write to the process's stdout and stderr from several processes (the
CLI, vLLM's engine core and its worker) and from several layers (Python logging configured by
vLLM, torch's logger, `warnings`, C++ warnings written straight to file descriptor 2, tqdm bars).
Python-level settings cannot reach the C++ ones or the child processes, so for the duration of a
run `engine_output()` points file descriptors 1 and 2 of this process (and so of every process it
starts) at a log file, and gemma4u's own messages go to the terminal through `USER_STDERR`.

    default          engine lines go to a temporary log; on a failure its last lines are shown
                     and the file is kept, else it is deleted
    --log-file PATH  engine lines (INFO and up) are appended to PATH
    -v/--verbose     nothing is diverted: engine lines (INFO and up) on stderr, as vLLM prints them

vLLM logs to stdout by default; in every mode it is pointed at stderr, so stdout stays clean.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

TAIL_LINES = 20
"""Last lines of the engine log shown when a run fails."""

_terminal: TextIO | None = None  # the real stderr while engine output is diverted
_live: Any = None  # the rich console of a live progress bar, while it is shown


def user_stderr() -> TextIO:
    """Where gemma4u's own messages go: the terminal, even while engine output is diverted."""
    return _terminal or sys.stderr


def set_live_console(console: Any) -> None:
    """A live progress bar is shown (or gone, with None): messages go above it."""
    global _live
    _live = console


def say(text: str) -> None:
    """One of gemma4u's own messages for the person running it (above a live progress bar)."""
    if _live is not None:
        _live.print(text, markup=False, highlight=False, soft_wrap=True)
        return
    out = user_stderr()
    print(text, file=out, flush=True)


class _UserStderr(io.TextIOBase):
    """A file object that always writes to `user_stderr()` (for rich consoles made once)."""

    def write(self, s: str) -> int:
        return user_stderr().write(s)

    def flush(self) -> None:
        user_stderr().flush()

    def isatty(self) -> bool:
        return user_stderr().isatty()

    def fileno(self) -> int:
        return user_stderr().fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(user_stderr(), "encoding", None) or "utf-8"


USER_STDERR: TextIO = cast(TextIO, _UserStderr())


class _SayHandler(logging.Handler):
    """gemma4u's own log warnings (`engine died …; restarting`) as messages."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            say(self.format(record))
        except Exception:
            self.handleError(record)


def _set_env(updates: dict[str, str], saved: dict[str, str | None], *, keep_user: tuple[str, ...] = ()) -> None:
    for key, value in updates.items():
        if key in keep_user and key in os.environ:
            continue
        saved.setdefault(key, os.environ.get(key))
        os.environ[key] = value


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _tail(path: Path, n: int) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if line.strip()][-n:]


@contextmanager
def engine_output(*, verbose: bool = False, log_file: Path | None = None) -> Iterator[None]:
    """Route the engine's output for the duration of a run (see the module docstring)."""
    with _engine_env(info=verbose or log_file is not None), _our_warnings_on_terminal():
        if verbose and log_file is None:
            yield
            return
        temporary = log_file is None
        path = _temporary_log() if log_file is None else log_file
        with _diverted_to(path, temporary):
            yield


@contextmanager
def _engine_env(*, info: bool) -> Iterator[None]:
    """vLLM prints its logs on stdout unless told otherwise; and INFO when someone will read them."""
    saved_env: dict[str, str | None] = {}
    _set_env({"VLLM_LOGGING_STREAM": "ext://sys.stderr"}, saved_env)
    if info:
        _set_env({"VLLM_LOGGING_LEVEL": "INFO"}, saved_env, keep_user=("VLLM_LOGGING_LEVEL",))
    try:
        yield
    finally:
        _restore_env(saved_env)


@contextmanager
def _our_warnings_on_terminal() -> Iterator[None]:
    ours = logging.getLogger("gemma4u_batch")
    handler = _SayHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(logging.WARNING)
    ours.addHandler(handler)
    try:
        yield
    finally:
        ours.removeHandler(handler)


def _temporary_log() -> Path:
    fd, name = tempfile.mkstemp(prefix="gemma4u-engine-", suffix=".log")
    os.close(fd)
    return Path(name)


@contextmanager
def _diverted_to(path: Path, temporary: bool) -> Iterator[None]:
    """Point fds 1 and 2 (ours and those the engine's processes inherit) at the log; our
    own messages keep the real terminal through `_terminal`."""
    global _terminal
    try:
        sink = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        from .errors import UsageError

        raise UsageError(f"cannot write the log file {path}: {exc.strerror or exc}") from None
    _flush_std()
    try:
        saved_out, saved_err = os.dup(1), os.dup(2)
    except OSError:  # no stdout/stderr to divert (a daemon with them closed): leave things alone
        os.close(sink)
        if temporary:
            path.unlink(missing_ok=True)
        yield
        return
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    terminal = os.fdopen(saved_err, "w", buffering=1, encoding=encoding, errors="backslashreplace")
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    os.close(sink)
    _terminal = terminal
    failed = True
    try:
        yield
        failed = False
    finally:
        _flush_std()
        _terminal = None
        terminal.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        terminal.close()
        _after(path, temporary=temporary, failed=failed)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing buffered can reach it anyway
            continue


def _after(path: Path, *, temporary: bool, failed: bool) -> None:
    """A failed run shows the engine log's last lines (the cause is often only there)."""
    tail = _tail(path, TAIL_LINES) if failed else []
    if temporary and not tail:
        path.unlink(missing_ok=True)
        return
    if tail:
        print(f"gemma4u: last lines of the engine log ({path}):", file=sys.stderr)
        for line in tail:
            print(f"  {line}", file=sys.stderr)
        sys.stderr.flush()


@dataclass
class Counters:
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    errors: int = 0
    skipped: int = 0
    reused: int = 0  # of `done`: copied from a record with the same key (no engine)
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
            "reused": self.reused,
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

    @property
    def shows_total(self) -> bool:
        """Whether progress shows the input's total while the run goes (a live bar, JSON lines)."""
        return self.mode in ("rich", "json")

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

"""Errors the CLI turns into one line and an exit code, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class UsageError(Exception):
    """Bad usage: missing path, bad flag value, unreadable model dir, invalid recipe."""


class ItemError(Exception):
    """A single input cannot be processed; it becomes an error record, the job goes on."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class OutputError(Exception):
    """OUT cannot be written (full, read-only): stop cleanly, committed work stays valid."""


class OutputLocked(UsageError):
    """Another run holds OUT's lock: try again later (a scheduler may retry)."""


class EngineDied(Exception):
    """The inference engine process died; in-flight requests must be requeued."""


class EngineFailure(Exception):
    """The engine kept dying after the allowed restarts: stop, resumable."""


class ExitCode:
    """Documented exit codes a scheduler can act on."""

    OK = 0
    FAILED = 1
    USAGE = 2
    ITEM_ERRORS = 3  # job finished, some items have error records (only with --strict)
    ENGINE_FAILED = 75  # engine died repeatedly: finished work committed, resumable
    LOCKED = 73  # another run is writing into OUT: retry later
    OUTPUT_ERROR = 74  # OUT full or read-only: stopped cleanly, resumable
    INTERRUPTED = 130  # SIGINT/SIGTERM: committed what finished, resumable


@dataclass(frozen=True)
class InvalidField:
    """The first error of a pydantic ValidationError: what its one-line message is made of."""

    kind: str  # pydantic's error type: missing, extra_forbidden, value_error, string_type, …
    loc: tuple[str | int, ...]
    msg: str  # without pydantic's "Value error, " / "Assertion failed, " prefix
    value: Any  # the value refused


def validation_message(exc: ValidationError, wording: Callable[[InvalidField], str] | None = None) -> str:
    """A ValidationError as one line, from its first error only: CLI flags and recipe keys both go
    through here. By default in the flags' words (the validator's own text when it starts with the
    flag's name, else `invalid value for LOC: MSG`); `wording` says it otherwise (recipes name the
    key and what it expects)."""
    first = exc.errors(include_url=False)[0]
    msg = str(first.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    field = InvalidField(kind=first["type"], loc=tuple(first.get("loc", ())), msg=msg, value=first.get("input"))
    return (wording or _flag_wording)(field)


def _flag_wording(field: InvalidField) -> str:
    if field.msg.startswith("--"):
        return field.msg
    return f"invalid value for {'.'.join(str(p) for p in field.loc)}: {field.msg}"

"""Errors the CLI turns into one line and an exit code, never a traceback."""

from __future__ import annotations


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

"""Path rules shared by the sources: how a row's path resolves, and which real paths
the allowed roots admit."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .rows import one_line


def inside_roots(real: str, roots: Iterable[str]) -> bool:
    """Whether the real (resolved) path lies under one of the real roots."""
    for root in roots:
        try:
            if os.path.commonpath([real, root]) == root:
                return True
        except ValueError:  # different drives / relative vs absolute
            continue
    return False


class BadRowPath(Exception):
    """A path a row names that cannot even be resolved (a NUL byte, a name the OS refuses)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def real_path(path: str, base: str | Path | None) -> str:
    """The resolved path a row names, a relative one taken from `base` (None: as given).

    Raises BadRowPath: such a path is the row's fault, not the job's."""
    try:
        joined = path if base is None or os.path.isabs(path) else os.path.join(base, path)
        return os.path.realpath(joined)
    except (ValueError, OSError) as exc:
        raise BadRowPath(f"invalid path {path!r}: {one_line(exc)}") from exc


def outside_roots(path: str, real: str, roots: list[str]) -> str | None:
    """Why a row may not read `path` (resolved to `real`), or None when a root admits it:
    a row from elsewhere must not point the job at arbitrary files."""
    if inside_roots(real, roots):
        return None
    return f"path {path!r} is outside the allowed roots ({', '.join(roots)}); pass --allow-root to allow it"

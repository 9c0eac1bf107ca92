"""Row rules shared by the manifest and dataset sources, so a bad row reads the same
whichever source it came from."""

from __future__ import annotations

import dataclasses
import os

from ..records import WorkItem


def one_line(exc: BaseException) -> str:
    """An exception as one short line: row errors are one-line records."""
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def unknown_type_message(path: str) -> str:
    """Why a row's media type could not be told from its path."""
    ext = os.path.splitext(path)[1]
    return f"unknown media type for extension '{ext}'" if ext else "unknown media type (no file extension)"


class DuplicateIds:
    """Ids seen so far: a repeated id becomes an error item under a new id, so every row
    still gets its own record and the first row keeps the id."""

    def __init__(self) -> None:
        self._first: dict[str, int] = {}

    def note(self, item_id: str, n: int) -> None:
        """Count an id a row took without yielding an item (it was filtered out)."""
        self._first.setdefault(item_id, n)

    def admit(self, item: WorkItem, n: int, where: str, unit: str) -> WorkItem:
        """`item`, or, when an earlier row took its id, the same row as an error item
        under a new id (media dropped: it is not processed)."""
        first = self._first
        if item.id in first:
            dup_id = f"{item.id}#dup{n}"
            while dup_id in first:
                dup_id += "_"
            error = f"{where}: duplicate id {item.id!r} (first on {unit} {first[item.id]})"
            item = dataclasses.replace(item, id=dup_id, path=None, data=None, error=error)
        first[item.id] = n
        return item

"""Deleted inputs: the current records whose input is gone, counted at the end of a run that
walked the whole input, and under --prune retired with a tombstone record each.

The walk's ids go into a temp table of OUT's index a chunk at a time (one statement per chunk),
and the records it did not meet come from one anti-join at the end, so memory stays flat and
the cost per item is a row insert (BENCHMARKS.md). A walk that did not reach the input's end
(a stop, a given sample) says nothing about what is gone: nothing is counted or pruned.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator

from ..records import OutputRecord
from ..sources.chunks import Chunk
from ..store.index import OutIndex
from ..store.layout import INPUTS, OutLayout
from ..store.writer import committed_parts, iter_part_records, json_bytes

log = logging.getLogger(__name__)

TOMBSTONE_COLUMNS = ("id", "task", "key", "source", "modality", "model")


class InputWalk:
    """The ids a run's walk over the input met; whether it met them all."""

    def __init__(self, index: OutIndex) -> None:
        self.index = index
        self.complete = False  # the walk reached the input's end
        self.items = 0
        self._ok = True  # the temp table kept every id (an index rebuilt meanwhile loses it)

    def track(self, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        """`chunks` unchanged; their ids noted a chunk at a time."""
        self._begin()
        for chunk in chunks:
            self._saw(chunk.ids)
            yield chunk
        self.complete = True

    def missing(self) -> int | None:
        """Current records (tombstones aside) whose id the walk did not meet; None unless it met every item."""
        if not (self.complete and self._ok):
            return None
        try:
            return self.index.walk_missing()
        except sqlite3.Error as exc:
            log.info("deleted inputs not counted: %s", exc)
            return None

    def tombstones(self, layout: OutLayout, stamp: Callable[[OutputRecord], None]) -> Iterator[OutputRecord]:
        """A tombstone for each current record whose input is gone (read from its part for its
        source and modality), a part at a time."""
        if self.missing() is None:
            return
        wanted = set(self.index.walk_missing_parts())
        for part in committed_parts(layout):
            if part["part"] not in wanted:
                continue
            rows = self.index.walk_missing_rows(part["part"])
            for i, rec in enumerate(iter_part_records(layout, part, TOMBSTONE_COLUMNS)):
                if i in rows:
                    tomb = tombstone_of(rec)
                    stamp(tomb)
                    yield tomb

    def end(self) -> None:
        try:
            self.index.walk_end()
        except sqlite3.Error as exc:  # a temp table: gone with the connection anyway
            log.info("walk table not dropped: %s", exc)

    def _begin(self) -> None:
        try:
            self.index.walk_begin()
        except sqlite3.Error as exc:
            log.info("deleted inputs not counted: %s", exc)
            self._ok = False

    def _saw(self, ids: list[str]) -> None:
        self.items += len(ids)
        if not self._ok or not ids:
            return
        try:
            self.index.walk_saw(ids)
        except (sqlite3.Error, UnicodeError) as exc:  # the index rebuilt mid-run; an id not UTF-8
            log.info("deleted inputs not counted: %s", exc)
            self._ok = False


def tombstone_of(rec: dict[str, object]) -> OutputRecord:
    """The record that retires `rec`: same id, task, key, source and modality, no result, and
    `supersedes` the key it retires."""
    key = str(rec["key"])
    return OutputRecord(
        id=str(rec["id"]),
        key=key,
        source=str(rec.get("source") or ""),
        modality=None if rec.get("modality") is None else str(rec["modality"]),
        task=str(rec["task"]),
        prompt=None,
        text=None,
        finish_reason=None,
        num_prompt_tokens=None,
        num_output_tokens=None,
        error=None,
        error_kind=None,
        model=str(rec.get("model") or ""),
        content_sha256=None,
        decode_seconds=None,
        supersedes=key,
        tombstone=True,
    )


def write_missing(layout: OutLayout, missing: int, *, run_id: str, items: int, pruned: int) -> None:
    """What `status` shows without walking: the count after this run's walk (and its pruning)."""
    layout.files.put(
        INPUTS,
        json_bytes(
            {"missing_inputs": missing, "walked_at": time.time(), "run_id": run_id, "items": items, "pruned": pruned}
        ),
    )

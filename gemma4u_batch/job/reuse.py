"""Reuse by content: an item whose key OUT already holds a result for is copied, not generated.

A key hashes the input's bytes, the rendered prompt, the model and the settings, never the id:
a moved, renamed or byte-identical copy of an input has the key of a record OUT holds under
another id. Its record is that record's result under the new id (`reused_from` names the id it
came from), made without the engine. Copies wait here in a bounded batch and are read from OUT's
data files a part at a time, so a reorganised library costs one pass over the parts it needs,
not a generation per file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..records import OutputRecord, WorkItem
from ..store.index import OutIndex, RecordAt
from ..store.layout import OutLayout
from ..store.writer import committed_parts, iter_part_records

log = logging.getLogger(__name__)

BATCH = 5000  # copies waiting for their source rows: bounds memory and the parts read per batch


@dataclass(frozen=True)
class Copy:
    """A record to make for `item`'s `task` from the result another id has under `key`."""

    item: WorkItem
    task: str
    key: str
    supersedes: str | None  # the key of the item's own current record (a tombstone's too), if it had one


def copied_record(copy: Copy, src: dict[str, Any]) -> OutputRecord:
    """The source record's result (text, data, segments, log-probabilities, flags) under the new
    id, with the new item's own source and fields."""
    item = copy.item
    return OutputRecord(
        id=item.id,
        key=copy.key,
        source=item.source,
        modality=src.get("modality") or (item.modality.value if item.modality else None),
        task=copy.task,
        prompt=src.get("prompt"),
        text=src.get("text"),
        finish_reason=src.get("finish_reason"),
        num_prompt_tokens=src.get("num_prompt_tokens"),
        num_output_tokens=src.get("num_output_tokens"),
        error=None,
        error_kind=None,
        model=src.get("model") or "",
        content_sha256=src.get("content_sha256"),
        decode_seconds=None,
        segments=src.get("segments"),
        language=src.get("language"),
        data=src.get("data"),
        mean_logprob=src.get("mean_logprob"),
        logprobs=src.get("logprobs"),
        flags=list(src.get("flags") or []),
        retried=bool(src.get("retried")),
        supersedes=copy.supersedes,
        reused_from=src["id"],
        model_fingerprint=src.get("model_fingerprint"),
        fields=dict(item.fields),
    )


class Reuser:
    """Copies waiting for their sources' rows; `flush` reads each part they need once."""

    def __init__(self, layout: OutLayout, index: OutIndex, emit: Callable[[OutputRecord], None]) -> None:
        self.layout = layout
        self.index = index
        self.emit = emit
        self._waiting: list[tuple[Copy, RecordAt]] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, copy: Copy, source: RecordAt) -> None:
        self._waiting.append((copy, source))
        if len(self._waiting) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Emit every waiting copy. A source's part that is gone (a compaction ran meanwhile)
        is found again where the index now puts that key."""
        waiting, self._waiting = self._waiting, []
        for attempt in range(3):
            if not waiting:
                return
            waiting = self._emit_from_parts(waiting)
            if waiting:
                self.index.sync()
                found = self.index.sources_of([c.key for c, _ in waiting])
                lost = [c for c, _ in waiting if c.key not in found]
                if lost:  # only if OUT changed under the run (its lock prevents that)
                    raise RuntimeError(f"OUT no longer holds the records {lost[0].item.id!r} copies")
                waiting = [(c, found[c.key]) for c, _ in waiting]
                log.info("gemma4u: %d copies' sources moved (attempt %d); reading them again", len(waiting), attempt)
        raise RuntimeError("OUT's parts kept changing while this run copied records from them")

    def _emit_from_parts(self, waiting: list[tuple[Copy, RecordAt]]) -> list[tuple[Copy, RecordAt]]:
        """Emit the copies whose part is there; return the others."""
        by_part: dict[str, list[tuple[Copy, RecordAt]]] = {}
        for copy, at in waiting:
            by_part.setdefault(at.part, []).append((copy, at))
        markers = {p["part"]: p for p in committed_parts(self.layout) if p["part"] in by_part}
        missed: list[tuple[Copy, RecordAt]] = []
        for name, copies in by_part.items():
            marker = markers.get(name)
            rows = {at.row for _, at in copies}
            got: dict[int, dict[str, Any]] = {}
            if marker is not None:
                try:
                    for i, rec in enumerate(iter_part_records(self.layout, marker)):
                        if i in rows:
                            got[i] = rec
                except FileNotFoundError:
                    got = {}
            for copy, at in copies:
                src = got.get(at.row)
                if src is None or src.get("key") != copy.key:
                    missed.append((copy, at))
                else:
                    self.emit(copied_record(copy, src))
        return missed

"""Reading an output folder back: what is done, which record of an id is current.

Part files are immutable; when an id is processed again (its file changed, or
--retry-errors), the newer record wins and names the key it `supersedes`. Readers
(resume, status, export) all use `current_records`, so nothing is silently duplicated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .writer import OutLayout, committed_parts, iter_part_records, lock_held


def _ordered_parts(layout: OutLayout) -> list[dict[str, Any]]:
    return sorted(committed_parts(layout), key=lambda p: (p.get("committed_at", 0.0), p["part"]))


def iter_records_in_order(
    layout: OutLayout, columns: tuple[str, ...] | None = None
) -> Iterator[tuple[tuple[int, int], dict[str, Any]]]:
    """((part_index, line), record) in commit order."""
    for pi, part in enumerate(_ordered_parts(layout)):
        for li, rec in enumerate(iter_part_records(layout, part, columns)):
            yield (pi, li), rec


def winners(layout: OutLayout) -> dict[tuple[str, str], tuple[int, int]]:
    """(id, task) → position of its current (latest committed) record."""
    win: dict[tuple[str, str], tuple[int, int]] = {}
    for pos, rec in iter_records_in_order(layout, ("id", "task")):
        win[(rec["id"], rec["task"])] = pos
    return win


def current_records(layout: OutLayout, columns: tuple[str, ...] | None = None) -> Iterator[dict[str, Any]]:
    """The latest committed record of every (id, task) (superseded ones left out)."""
    win = winners(layout)
    cols = None if columns is None else tuple(dict.fromkeys(("id", "task", *columns)))
    for pos, rec in iter_records_in_order(layout, cols):
        if win.get((rec["id"], rec["task"])) == pos:
            yield rec


@dataclass
class Status:
    out: str
    records: int = 0  # current records (one per id)
    done: int = 0
    errors: int = 0
    superseded: int = 0
    parts: int = 0
    writers: list[str] = field(default_factory=list)
    active: bool = False
    active_writers: int = 0
    complete: bool = False
    started_at: float | None = None
    last_update: float | None = None
    throughput: float | None = None
    pending: int | None = None
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    input: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_status(layout: OutLayout) -> Status:
    st = Status(out=str(layout.root))
    parts = _ordered_parts(layout)
    st.parts = len(parts)
    st.writers = sorted({p.get("writer", "?") for p in parts})
    total = 0
    for rec in current_records(layout, ("error", "error_kind")):
        st.records += 1
        if rec["error"] is None:
            st.done += 1
        else:
            st.errors += 1
            kind = rec.get("error_kind") or "error"
            st.errors_by_kind[kind] = st.errors_by_kind.get(kind, 0) + 1
    total = sum(p["records"] for p in parts)
    st.superseded = total - st.records
    if layout.run_manifest.exists():
        man = json.loads(layout.run_manifest.read_text())
        st.started_at = man.get("started_at")
        st.model = man.get("model")
        st.input = (man.get("config") or {}).get("input") or (man.get("config") or {}).get("dataset")
    if parts:
        st.last_update = max(p.get("committed_at", 0.0) for p in parts)
    run_lock = layout.meta / "run.lock"
    alive_writers = [w for w in layout.writers.glob("*.lock")] if layout.writers.exists() else []
    st.active_writers = sum(1 for w in alive_writers if lock_held(w))
    st.active = (run_lock.exists() and lock_held(run_lock)) or st.active_writers > 0
    st.complete = layout.complete_marker.exists() and not st.active
    first = min((p.get("committed_at", 0.0) for p in parts), default=None)
    if first is not None and st.last_update and st.started_at:
        span = max(st.last_update - min(st.started_at, first), 1e-6)
        st.throughput = total / span
    return st


def age(ts: float | None) -> str:
    if ts is None:
        return "never"
    s = time.time() - ts
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"

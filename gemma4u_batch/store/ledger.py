"""Reading an output folder back: which records are current, and the run's status.

Part files are immutable; when an id is processed again (its file changed, or
--retry-errors), the newer record wins and names the key it `supersedes`. Which record
is current comes from OUT's index (`index.py`), so readers (export, status, resume)
read each data file once and never hold every record in memory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .index import OutIndex
from .layout import COMPLETE, RUN_MANIFEST, OutLayout
from .lock import run_lock_held
from .writer import committed_parts, iter_part_records, live_writers


def current_records(layout: OutLayout, columns: tuple[str, ...] | None = None) -> Iterator[dict[str, Any]]:
    """The latest committed record of every (id, task) (superseded ones left out), in commit order."""
    cols = None if columns is None else tuple(dict.fromkeys(("id", "task", *columns)))
    with OutIndex(layout) as index:
        for part in committed_parts(layout):
            keep = index.current_rows(part["part"])
            if not keep:
                continue
            for i, rec in enumerate(iter_part_records(layout, part, cols)):
                if i in keep:
                    yield rec


@dataclass
class Status:
    out: str
    records: int = 0  # current records (one per id and task)
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
    """Counts from the index (no record is read), liveness from the locks."""
    st = Status(out=str(layout.root))
    with OutIndex(layout) as index:
        t = index.totals()
    st.records, st.errors, st.errors_by_kind = t["records"], t["errors"], t["errors_by_kind"]
    st.done = st.records - st.errors
    st.superseded = t["committed"] - st.records
    st.parts, st.writers, st.last_update = t["parts"], t["writers"], t["last_commit"]
    try:
        man = json.loads(layout.files.read(RUN_MANIFEST))
    except FileNotFoundError:
        man = None
    if man is not None:
        st.started_at = man.get("started_at")
        st.model = man.get("model")
        st.input = (man.get("config") or {}).get("input") or (man.get("config") or {}).get("dataset")
    st.active_writers = len(live_writers(layout))
    st.active = run_lock_held(layout) or st.active_writers > 0
    st.complete = layout.files.exists(COMPLETE) and not st.active
    first = t["first_commit"]
    if first is not None and st.last_update and st.started_at:
        span = max(st.last_update - min(st.started_at, first), 1e-6)
        st.throughput = t["committed"] / span
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

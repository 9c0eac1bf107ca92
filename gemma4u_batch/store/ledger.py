"""Reading an output folder back: which records are current, and the run's status.

Part files are immutable; when an id is processed again (its file changed, or
--retry-errors), the newer record wins and names the key it `supersedes`. Which record
is current comes from OUT's index (`index.py`), so readers (export, status, resume)
read each data file once and never hold every record in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .index import OutIndex
from .layout import COMPLETE, INPUTS, RUN_MANIFEST, OutLayout, is_tombstone_part
from .lock import run_lock_held
from .writer import committed_parts, iter_part_records, live_writers


def current_records(
    layout: OutLayout, columns: tuple[str, ...] | None = None, *, tombstones: bool = False
) -> Iterator[dict[str, Any]]:
    """The latest committed record of every (id, task) (superseded ones left out), in commit order.
    Tombstones (records --prune retired: their input is gone) are no results: left out unless
    `tombstones`, as the table leaves them out."""
    cols = None if columns is None else tuple(dict.fromkeys(("id", "task", *columns)))
    with OutIndex(layout) as index:
        for part in committed_parts(layout):
            if is_tombstone_part(part) and not tombstones:
                continue
            keep = index.current_rows(part["part"], tombstones)
            if not keep:
                continue
            for i, rec in enumerate(iter_part_records(layout, part, cols)):
                if i in keep:
                    yield rec


@dataclass
class Status:
    out: str
    records: int = 0  # current records (one per id and task), tombstones aside
    done: int = 0
    errors: int = 0
    reused: int = 0  # current records copied from another id's record with the same key
    tombstones: int = 0  # current records --prune retired (their input is gone)
    missing_inputs: int | None = None  # current records whose input is gone (None: no whole walk yet)
    missing_inputs_at: float | None = None  # when the walk that counted them ended
    superseded: int = 0
    parts: int = 0
    writers: list[str] = field(default_factory=list)
    active: bool = False
    active_writers: int = 0
    complete: bool = False
    started_at: float | None = None  # the latest run's start
    finished_at: float | None = None  # its end, when it finished
    last_update: float | None = None  # the last commit
    throughput: float | None = None  # records/s of the latest run (None: see throughput_note)
    throughput_note: str | None = None  # what `throughput` measures, or why it is unknown
    pending: int | None = None
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    input: str | None = None
    records_by_model: dict[str, int] = field(default_factory=dict)  # model fingerprint → current records

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_status(layout: OutLayout) -> Status:
    """Counts from the index (no record is read), liveness from the locks."""
    st = Status(out=str(layout.root))
    man = layout.read_json(RUN_MANIFEST)
    if man is not None:
        st.started_at = man.get("started_at")
        st.model = man.get("model")
        st.input = (man.get("config") or {}).get("input") or (man.get("config") or {}).get("dataset")
    with OutIndex(layout) as index:
        t = index.totals()
        since = index.committed_since(st.started_at) if st.started_at is not None else 0
    st.records, st.errors, st.errors_by_kind = t["records"], t["errors"], t["errors_by_kind"]
    st.tombstones = t["tombstones"]
    st.done = st.records - st.errors
    st.reused = t["reused"]
    st.superseded = t["committed"] - st.records - st.tombstones
    st.parts, st.writers, st.last_update = t["parts"], t["writers"], t["last_commit"]
    st.records_by_model = records_by_model(t["by_model"], man)
    st.active_writers = len(live_writers(layout))
    st.active = run_lock_held(layout) or st.active_writers > 0
    finished = layout.read_json(COMPLETE)
    st.complete = finished is not None and not st.active
    _throughput(st, finished, since)
    gone = layout.read_json(INPUTS)
    if gone is not None and isinstance(gone.get("missing_inputs"), int):
        st.missing_inputs, st.missing_inputs_at = gone["missing_inputs"], gone.get("walked_at")
    return st


def _throughput(st: Status, finished: dict[str, Any] | None, since: int) -> None:
    """Records per second of the latest run, over its wall-clock time: a finished run's records
    over its start to finish; a running one's records committed since it started over the time
    since. Unknown (None, and `throughput_note` says why) when that run committed nothing or
    stopped before its end (compaction may have merged its parts with older ones)."""
    if st.active and st.started_at is not None:
        span = time.time() - st.started_at
        if since and span > 0:
            st.throughput = since / span
            st.throughput_note = "records committed since the running run started, per second"
        else:
            st.throughput_note = "the running run has committed no record yet"
        return
    if finished is None:
        st.throughput_note = "the latest run did not finish" if st.started_at is not None else "no run yet"
        return
    start = finished.get("started_at", st.started_at)
    end, n = finished.get("finished_at"), finished.get("records_this_run")
    st.finished_at = end if isinstance(end, int | float) else None
    if not isinstance(n, int) or not isinstance(start, int | float) or st.finished_at is None:
        st.throughput_note = "the latest run's records or span were not recorded"
    elif n == 0:
        st.throughput_note = "the latest run committed no record"
    elif st.finished_at <= start:
        st.throughput_note = "the latest run's span is not known"
    else:
        st.throughput = n / (st.finished_at - start)
        st.throughput_note = "records the latest run committed, per second from its start to its finish"


def records_by_model(counts: dict[str | None, int], manifest: dict[str, Any] | None) -> dict[str, int]:
    """Records by model fingerprint, those indexed without one (written before records kept it)
    given to the model OUT was first made with as far as run.json knows (before gradual model
    changes existed a new model wiped OUT, so they all came from one), else to "unknown"."""
    man = manifest or {}
    earlier = [*(man.get("previous_model_fingerprints") or []), man.get("model_fingerprint")]
    first = next((f for f in earlier if isinstance(f, str) and f), None) or "unknown"
    out: dict[str, int] = {}
    for fp, n in counts.items():
        out[fp or first] = out.get(fp or first, 0) + n
    return dict(sorted(out.items()))


def age(ts: float | None) -> str:
    if ts is None:
        return "never"
    s = time.time() - ts
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"

"""Writer stage: buffer records, commit them in durable chunks (part files) under OUT.

Commit protocol (shared by every writer into one OUT: --shard runs, Ray replicas), the same on
a local folder and an object store, with no rename on the store:
1. put each data file whole (locally: a temp file, fsync, rename; on a store: one PUT);
2. create the commit marker `.gemma4u/commits/<part>.json`, exclusively (a conditional create).
A part counts only once its marker exists: readers trust only data files a marker names. Data
files without a marker are the leftovers of a crash between steps 1 and 2; `cleanup_orphans`
removes them before a run starts, for writers that are no longer alive (a local writer holds a
flock, a writer on a store a lease).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import posixpath
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..atomic import lock_held
from ..decode.spill import remove_stale_spill_dirs
from ..errors import OutputError
from ..records import OutputRecord
from .layout import COMMITS, DATA_DIRS, WRITERS, OutLayout, data_file_name, tombstone_file_name
from .lease import Lease, lease_holder


def new_writer_id() -> str:
    host = socket.gethostname().split(".")[0][:24] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def json_bytes(obj: Any) -> bytes:
    """A marker or manifest as OUT stores it."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def _jsonl_bytes(records: list[dict[str, Any]]) -> bytes:
    return "".join(jsonl_line(rec) for rec in records).encode("utf-8")


def parquet_table(records: list[dict[str, Any]], metadata: dict[str, str] | None = None) -> Any:
    """Records as an Arrow table with the documented schema (`fields`, `data` as JSON text,
    `data_typed` from the JSON schema named in the metadata, `created_at` a UTC timestamp)."""
    import pyarrow as pa

    from .schema import arrow_schema, coerce_to_schema, data_schema_of

    data_schema = data_schema_of(metadata)
    rows = []
    for rec in records:
        row = dict(rec)
        row["fields"] = json.dumps(row.get("fields") or {}, ensure_ascii=False, default=str)
        if data_schema is not None:
            row["data_typed"] = coerce_to_schema(row.get("data"), data_schema)
        row["data"] = None if row.get("data") is None else json.dumps(row["data"], ensure_ascii=False)
        if isinstance(row.get("created_at"), str):
            row["created_at"] = datetime.fromisoformat(row["created_at"])
        rows.append(row)
    schema = arrow_schema(data_schema)
    return pa.Table.from_pylist(rows, schema=schema.with_metadata(metadata) if metadata else schema)


def created_now() -> str:
    """A record's `created_at`: UTC, ISO 8601 (a timestamp column in Parquet)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def jsonl_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def _parquet_bytes(records: list[dict[str, Any]], metadata: dict[str, str]) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(parquet_table(records, metadata), buf, compression="zstd")
    return buf.getvalue()


class WriterMark:
    """Tells `cleanup_orphans` that a writer is alive: on a local OUT a flock it holds for its
    life (it dies with the process), on an object store a lease it renews."""

    def __init__(self, layout: OutLayout, writer_id: str) -> None:
        self.layout = layout
        self.writer_id = writer_id
        self._fh: Any = None
        self._lease: Lease | None = None
        if layout.is_local:
            self._fh = open(layout.writers / f"{writer_id}.lock", "w")
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            self._lease = Lease(layout.files, f"{WRITERS}/{writer_id}.json", what="writer")
            self._lease.acquire()

    @property
    def lost(self) -> bool:
        """The writer's lease was taken over (it stalled past it): it must not commit again."""
        return self._lease is not None and self._lease.lost.is_set()

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            (self.layout.writers / f"{self.writer_id}.lock").unlink(missing_ok=True)
            self._fh = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None


@dataclass
class PartWriter:
    """Buffers records and commits them as part files; one per process (or replica)."""

    layout: OutLayout
    formats: tuple[str, ...] = ("jsonl",)
    commit_every: int = 64
    commit_seconds: float = 30.0
    writer_id: str = field(default_factory=new_writer_id)
    parquet_metadata: dict[str, str] = field(default_factory=dict)
    _buffer: list[OutputRecord] = field(default_factory=list)
    _seq: int = 0
    _last_commit: float = field(default_factory=time.monotonic)
    _mark: WriterMark | None = None
    committed_records: int = 0
    on_commit: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None  # (marker, records)

    def __post_init__(self) -> None:
        self.layout.ensure()
        self._mark = WriterMark(self.layout, self.writer_id)  # held for the writer's life

    def add(self, record: OutputRecord) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= self.commit_every or time.monotonic() - self._last_commit >= self.commit_seconds:
            self.commit()

    def due(self) -> bool:
        return bool(self._buffer) and time.monotonic() - self._last_commit >= self.commit_seconds

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def commit(self) -> None:
        """Make the buffered records durable (no-op when empty)."""
        self._last_commit = time.monotonic()
        if not self._buffer:
            return
        if self._mark is not None and self._mark.lost:
            raise OutputError(
                f"lost the lease on {self.layout.where} (this process stalled longer than the lease): "
                f"{len(self._buffer)} finished record(s) not committed; rerun to resume"
            )
        # Tombstones (--prune) are committed as parts of their own, JSONL under __tombstones__/,
        # so the table's data files never hold one.
        for tomb in (False, True):
            batch = [r.to_dict() for r in self._buffer if r.tombstone is tomb]
            if batch:
                self._commit_part(batch, tomb)
                self._buffer = [r for r in self._buffer if r.tombstone is not tomb]

    def _commit_part(self, records: list[dict[str, Any]], tombstones: bool) -> None:
        part = f"part-{self.writer_id}-{self._seq:05d}"
        files: list[str] = []
        for fmt in ("jsonl",) if tombstones else self.formats:
            name = tombstone_file_name(part) if tombstones else data_file_name(part, fmt, self.formats)
            payload = _jsonl_bytes(records) if fmt == "jsonl" else _parquet_bytes(records, self.parquet_metadata)
            self.layout.files.put(name, payload)
            files.append(name)
        marker = {
            "part": part,
            "files": files,
            "records": len(records),
            "errors": sum(1 for r in records if r["error"] is not None),
            "writer": self.writer_id,
            "committed_at": time.time(),
        }
        if not self.layout.files.create(f"{COMMITS}/{part}.json", json_bytes(marker)):
            raise RuntimeError(f"part {part} was committed twice (writer ids are unique)")
        self._seq += 1
        self.committed_records += len(records)
        if self.on_commit is not None:
            self.on_commit(marker, records)

    def close(self) -> None:
        self.commit()
        if self._mark is not None:
            self._mark.release()
            self._mark = None


def _writer_alive(layout: OutLayout, writer_id: str) -> bool:
    if not layout.is_local:
        return lease_holder(layout.files, f"{WRITERS}/{writer_id}.json") is not None
    lock = layout.writers / f"{writer_id}.lock"
    return lock.exists() and lock_held(lock)


def live_writers(layout: OutLayout) -> list[str]:
    """The ids of the writers alive now."""
    if layout.is_local:
        names = [p.stem for p in layout.writers.glob("*.lock")] if layout.writers.exists() else []
    else:
        names = [n.removesuffix(".json") for n in layout.files.list(WRITERS) if n.endswith(".json")]
    return [w for w in names if _writer_alive(layout, w)]


def _part_of(name: str) -> tuple[str, str] | None:
    """('part-<writer>-<seq>', '<writer>') for a data file name, else None."""
    if not name.startswith("part-"):
        return None
    stem = name.split(".", 1)[0]
    writer = stem[len("part-") :].rsplit("-", 1)[0]
    return stem, writer


def finish_replaced(
    layout: OutLayout, marker: dict[str, Any], listed: tuple[set[str], list[str]] | None = None
) -> None:
    """Remove what a compacted part replaces: markers first, then their data files (a
    kill in between leaves files without markers, which `cleanup_orphans` removes). Only what
    is there is removed (`listed`: the marker names and data files, when already listed)."""
    old_parts = list(marker.get("replaces", ()))
    if not old_parts:
        return
    markers, data_files = listed if listed is not None else (set(layout.files.list(COMMITS)), _data_file_names(layout))
    for old in old_parts:
        if f"{old}.json" in markers:
            layout.files.delete(f"{COMMITS}/{old}.json")
    prefixes = tuple(f"{old}." for old in old_parts)
    for name in data_files:
        if posixpath.basename(name).startswith(prefixes):
            layout.files.delete(name)


def _data_file_names(layout: OutLayout) -> list[str]:
    """Every `part-*` file in OUT's data folders, as names relative to OUT."""
    return [
        posixpath.join(folder, name)
        for folder in DATA_DIRS
        for name in layout.files.list(folder)
        if name.startswith("part-")
    ]


STALE_TMP_SECONDS = 3600.0


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def cleanup_orphans(layout: OutLayout) -> list[str]:
    """Finish killed compactions, then remove uncommitted data files and temp files of
    writers that are gone, and the spill folders of decode pools that are gone."""
    removed: list[str] = []
    if layout.is_local and not layout.folder.exists():
        return removed
    markers = _markers(layout)
    if any(m.get("replaces") for m in markers):
        listed = (set(layout.files.list(COMMITS)), _data_file_names(layout))
        for marker in markers:
            finish_replaced(layout, marker, listed)
    committed = {name.removesuffix(".json") for name in layout.files.list(COMMITS)}
    for name in _data_file_names(layout):
        parsed = _part_of(posixpath.basename(name))
        if parsed is None:
            continue
        part, writer = parsed
        if part not in committed and not _writer_alive(layout, writer):
            layout.files.delete(name)
            removed.append(posixpath.basename(name))
    if layout.is_local:
        _cleanup_local(layout)
    else:
        for name in layout.files.list(WRITERS):
            if name.endswith(".json") and not _writer_alive(layout, name.removesuffix(".json")):
                layout.files.delete(f"{WRITERS}/{name}")
    return removed


def _cleanup_local(layout: OutLayout) -> None:
    """What only a local OUT has: temp files, spill folders and writers' lock files."""
    if layout.tmp.exists():
        remove_stale_spill_dirs(layout.tmp)  # long audio of a pool whose process was killed
        for path in layout.tmp.iterdir():
            if path.is_dir():
                continue
            parsed = _part_of(path.name)
            # A part's temp file dies with its writer; run.json's may be another shard's, being written now.
            stale = not _writer_alive(layout, parsed[1]) if parsed else _older_than(path, STALE_TMP_SECONDS)
            if stale:
                path.unlink(missing_ok=True)
    if layout.writers.exists():
        for lock in layout.writers.glob("*.lock"):
            if not _writer_alive(layout, lock.stem):
                lock.unlink(missing_ok=True)


def _markers(layout: OutLayout) -> list[dict[str, Any]]:
    """Every commit marker in OUT, by name (one a compaction removes meanwhile is skipped)."""
    markers = []
    for name in layout.files.list(COMMITS):
        if not name.endswith(".json"):
            continue
        try:
            markers.append(json.loads(layout.files.read(f"{COMMITS}/{name}")))
        except FileNotFoundError:  # removed by a compaction finishing right now
            continue
    return markers


def committed_parts(layout: OutLayout) -> list[dict[str, Any]]:
    """The parts that hold records now, in commit order (a compacted part's `replaces`
    are left out even before compaction has removed them)."""
    return effective_parts(layout)[0]


def effective_parts(layout: OutLayout) -> tuple[list[dict[str, Any]], set[str]]:
    """(parts in commit order, names replaced by a compacted part)."""
    markers = _markers(layout)
    replaced = {name for m in markers for name in m.get("replaces", ())}
    parts = [m for m in markers if m["part"] not in replaced]
    parts.sort(key=lambda p: (p.get("committed_at", 0.0), p["part"]))
    return parts, replaced


def iter_part_records(
    layout: OutLayout, part: dict[str, Any], columns: tuple[str, ...] | None = None
) -> Iterator[dict[str, Any]]:
    """The records of one committed part, read from its data file (jsonl preferred)."""
    files = part["files"]
    jsonl = next((f for f in files if f.endswith(".jsonl")), None)
    if jsonl is not None:
        with layout.files.open(jsonl) as raw, io.TextIOWrapper(raw, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                yield {c: rec.get(c) for c in columns} if columns else rec
        return
    import pyarrow.parquet as pq

    with layout.files.open(files[0]) as raw:
        pf = pq.ParquetFile(raw)
        names = set(pf.schema_arrow.names)
        cols = [c for c in columns if c in names] if columns else None
        for batch in pf.iter_batches(columns=cols):
            for rec in batch.to_pylist():
                if "fields" in rec and isinstance(rec["fields"], str):
                    rec["fields"] = json.loads(rec["fields"])
                if isinstance(rec.get("data"), str):
                    rec["data"] = json.loads(rec["data"])
                rec.pop("data_typed", None)  # derived from `data` (Parquet only)
                if isinstance(rec.get("created_at"), datetime):
                    rec["created_at"] = rec["created_at"].isoformat(timespec="milliseconds")
                if columns:
                    rec = {c: rec.get(c) for c in columns}
                yield rec


def iter_committed_records(layout: OutLayout, columns: tuple[str, ...] | None = None) -> Iterator[dict[str, Any]]:
    """Every committed record (superseded ones included), part by part."""
    for part in committed_parts(layout):
        yield from iter_part_records(layout, part, columns)

"""Writer stage: buffer records, commit them in durable chunks (part files) under OUT.

Commit protocol (shared by every writer into one OUT: --shard runs, Ray replicas):
1. write each data file to `.gemma4u/tmp/<name>.incomplete`, fsync, rename into OUT;
2. write the commit marker `.gemma4u/commits/<part>.json` the same way.
A part counts only once its marker exists. Data files without a marker are the
leftovers of a crash between steps 1 and 2; `cleanup_orphans` removes them before a
run starts, for writers that no longer hold their lock.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..atomic import lock_held, write_atomic, write_json_atomic
from ..decode.spill import remove_stale_spill_dirs
from ..records import OutputRecord
from .layout import OutLayout, data_file_name


def new_writer_id() -> str:
    host = socket.gethostname().split(".")[0][:24] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _write_bytes(payload: bytes, fh: Any) -> None:
    fh.write(payload)


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


def _parquet_write(records: list[dict[str, Any]], fh: Any, metadata: dict[str, str]) -> None:
    import pyarrow.parquet as pq

    pq.write_table(parquet_table(records, metadata), fh, compression="zstd")


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
    _lock_fh: Any = None
    committed_records: int = 0
    on_commit: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None  # (marker, records)

    def __post_init__(self) -> None:
        self.layout.ensure()
        # Held for the writer's life: tells cleanup_orphans this writer is alive.
        self._lock_fh = open(self.layout.writers / f"{self.writer_id}.lock", "w")
        fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)

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
        records = [r.to_dict() for r in self._buffer]
        part = f"part-{self.writer_id}-{self._seq:05d}"
        files: list[str] = []
        for fmt in self.formats:
            name = data_file_name(part, fmt, self.formats)
            (self.layout.root / name).parent.mkdir(exist_ok=True)
            if fmt == "jsonl":
                write_atomic(
                    self.layout.root / name, functools.partial(_write_bytes, _jsonl_bytes(records)), self.layout.tmp
                )
            else:
                write_atomic(
                    self.layout.root / name,
                    lambda fh: _parquet_write(records, fh, self.parquet_metadata),
                    self.layout.tmp,
                )
            files.append(name)
        marker = {
            "part": part,
            "files": files,
            "records": len(records),
            "errors": sum(1 for r in records if r["error"] is not None),
            "writer": self.writer_id,
            "committed_at": time.time(),
        }
        write_json_atomic(self.layout.commits / f"{part}.json", marker, self.layout.tmp)
        self._seq += 1
        self.committed_records += len(records)
        self._buffer.clear()
        if self.on_commit is not None:
            self.on_commit(marker, records)

    def close(self) -> None:
        self.commit()
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            (self.layout.writers / f"{self.writer_id}.lock").unlink(missing_ok=True)
            self._lock_fh = None


def _writer_alive(layout: OutLayout, writer_id: str) -> bool:
    lock = layout.writers / f"{writer_id}.lock"
    return lock.exists() and lock_held(lock)


def _part_of(name: str) -> tuple[str, str] | None:
    """('part-<writer>-<seq>', '<writer>') for a data file name, else None."""
    if not name.startswith("part-"):
        return None
    stem = name.split(".", 1)[0]
    writer = stem[len("part-") :].rsplit("-", 1)[0]
    return stem, writer


def finish_replaced(layout: OutLayout, marker: dict[str, Any]) -> None:
    """Remove what a compacted part replaces: markers first, then their data files (a
    kill in between leaves files without markers, which `cleanup_orphans` removes)."""
    for old in marker.get("replaces", ()):
        (layout.commits / f"{old}.json").unlink(missing_ok=True)
    for old in marker.get("replaces", ()):
        for folder in layout.data_dirs():
            for path in folder.glob(f"{old}.*"):
                path.unlink(missing_ok=True)


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
    if not layout.root.exists():
        return removed
    if layout.commits.exists():
        for path in layout.commits.glob("*.json"):
            try:
                marker = json.loads(path.read_text())
            except FileNotFoundError:
                continue
            finish_replaced(layout, marker)
    committed = {p.stem for p in layout.commits.glob("*.json")} if layout.commits.exists() else set()
    data_files = [p for d in layout.data_dirs() if d.is_dir() for p in sorted(d.iterdir())]
    for path in data_files:
        parsed = _part_of(path.name)
        if parsed is None or not path.is_file():
            continue
        part, writer = parsed
        if part not in committed and not _writer_alive(layout, writer):
            path.unlink()
            removed.append(path.name)
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
    return removed


def committed_parts(layout: OutLayout) -> list[dict[str, Any]]:
    """The parts that hold records now, in commit order (a compacted part's `replaces`
    are left out even before compaction has removed them)."""
    return effective_parts(layout)[0]


def effective_parts(layout: OutLayout) -> tuple[list[dict[str, Any]], set[str]]:
    """(parts in commit order, names replaced by a compacted part)."""
    if not layout.commits.exists():
        return [], set()
    markers = []
    for path in sorted(layout.commits.glob("*.json")):
        try:
            markers.append(json.loads(path.read_text()))
        except FileNotFoundError:  # removed by a compaction finishing right now
            continue
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
        with open(layout.root / jsonl, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                yield {c: rec.get(c) for c in columns} if columns else rec
        return
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(layout.root / files[0])
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

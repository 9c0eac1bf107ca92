"""Compaction: many small committed parts → few large data files holding only current
records. Runs with OUT's lock held exclusively (end of a whole-job run, `gemma4u
compact`), so no writer can commit in between and every remaining record is current.

Crash safety follows the commit protocol: the new data files are written and renamed
into place, then one marker names them and the parts they `replace` (the commit point:
readers ignore replaced parts from then on), then the replaced markers and files go.
A kill at any point leaves either the old parts or the new one in force, never both
and never neither; `cleanup_orphans` finishes what a killed compaction left behind.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from .index import OutIndex
from .layout import COMMITS, OutLayout, data_file_name, is_tombstone_part, tombstone_file_name
from .writer import (
    cleanup_orphans,
    committed_parts,
    finish_replaced,
    iter_part_records,
    json_bytes,
    jsonl_line,
    new_writer_id,
    parquet_table,
)

TARGET_RECORDS = 100_000  # one data file per this many records at most
TARGET_BYTES = 256 * 1024**2


@dataclass
class CompactResult:
    parts_before: int = 0
    parts_after: int = 0
    dropped: int = 0  # superseded records removed


def compact_out(layout: OutLayout) -> CompactResult:
    """`gemma4u compact OUT`: take OUT's lock (a running job keeps it: OutputLocked),
    finish what a killed writer left, then compact."""
    from .lock import RunLock

    lock = RunLock(layout, None)
    lock.acquire()
    try:
        cleanup_orphans(layout)
        with OutIndex(layout) as index:
            return compact(layout, index)
    finally:
        lock.release()


def compact(layout: OutLayout, index: OutIndex, target_records: int = TARGET_RECORDS) -> CompactResult:
    """Rewrite OUT's parts into ≤ target_records files of current records only."""
    index.sync()
    parts = committed_parts(layout)
    result = CompactResult(parts_before=len(parts), parts_after=len(parts))
    # Tombstones (--prune) are compacted among themselves, into __tombstones__/: never into the table.
    results = _plan(layout, [p for p in parts if not is_tombstone_part(p)], index, target_records)
    tombstones = _plan(layout, [p for p in parts if is_tombstone_part(p)], index, target_records)
    groups = [(g, False) for g in results] + [(g, True) for g in tombstones]
    if not groups:
        return result
    writer = new_writer_id()
    for seq, (group, tomb) in enumerate(groups):
        result.dropped += _rewrite(layout, index, group, f"part-{writer}-c{seq:05d}", tomb)
    result.parts_after = len(committed_parts(layout))
    return result


def _plan(
    layout: OutLayout, parts: list[dict[str, Any]], index: OutIndex, target: int
) -> list[list[tuple[dict[str, Any], set[int]]]]:
    """Groups of whole parts (each with its current rows) to rewrite together; a part that
    is already large and holds no superseded record is left as it is."""
    groups: list[list[tuple[dict[str, Any], set[int]]]] = [[]]
    size = rows = 0
    for part in parts:
        if part["records"] >= target // 2 and index.current_count(part["part"]) == part["records"]:
            continue  # counted, not listed: a no-op rerun at 1M records would build a set of every row
        keep = index.current_rows(part["part"])
        nbytes = sum(layout.files.size(f) for f in part["files"])
        if groups[-1] and (rows + len(keep) > target or size + nbytes > TARGET_BYTES):
            groups.append([])
            size = rows = 0
        groups[-1].append((part, keep))
        size, rows = size + nbytes, rows + len(keep)
    worth = [g for g in groups if len(g) > 1 or any(len(k) < p["records"] for p, k in g)]
    return worth


def _rewrite(
    layout: OutLayout,
    index: OutIndex,
    group: list[tuple[dict[str, Any], set[int]]],
    name: str,
    tombstones: bool = False,
) -> int:
    """Write one compacted part replacing `group`; returns how many records were dropped."""
    formats = ["jsonl"] if tombstones else sorted({f.rsplit(".", 1)[1] for p, _ in group for f in p["files"]})
    files = []
    for fmt in formats:
        rel = tombstone_file_name(name) if tombstones else data_file_name(name, fmt, formats)
        write = _write_jsonl if fmt == "jsonl" else _write_parquet
        layout.files.write(rel, functools.partial(write, layout, group))
        files.append(rel)
    kept = sum(len(k) for _, k in group)
    marker = {
        "part": name,
        "files": files,
        "records": kept,
        "writer": name.removeprefix("part-").rsplit("-", 1)[0],
        "committed_at": max(p.get("committed_at", 0.0) for p, _ in group),
        "compacted_at": time.time(),
        "replaces": [p["part"] for p, _ in group],
    }
    if not layout.files.create(f"{COMMITS}/{name}.json", json_bytes(marker)):
        raise RuntimeError(f"compacted part {name} was committed twice (writer ids are unique)")
    index.ingest_compacted(marker, layout)
    finish_replaced(layout, marker)
    return sum(p["records"] for p, _ in group) - kept


def _write_jsonl(layout: OutLayout, group: list[tuple[dict[str, Any], set[int]]], out: BinaryIO) -> None:
    """Current lines, part by part, copied byte for byte where the part has JSONL
    (converted from its Parquet otherwise); streamed, so memory stays flat."""
    for part, keep in group:
        name = next((f for f in part["files"] if f.endswith(".jsonl")), None)
        if name is None:
            for i, rec in enumerate(iter_part_records(layout, part)):
                if i in keep:
                    out.write(jsonl_line(rec).encode("utf-8"))
            continue
        with layout.files.open(name) as fh:
            for i, line in enumerate(fh):
                if i in keep:
                    out.write(line)


def _write_parquet(layout: OutLayout, group: list[tuple[dict[str, Any], set[int]]], out: BinaryIO) -> None:
    """Current rows, part by part, into one file with the parts' schema and metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # The newest part's schema and metadata (parts written before a gemma4u upgrade lack
    # columns added since: they are filled with nulls).
    newest = next((f for p, _ in reversed(group) for f in p["files"] if f.endswith(".parquet")), None)
    raw: dict[bytes, bytes] = {}
    if newest is not None:
        with layout.files.open(newest) as fh:
            raw = pq.read_schema(fh).metadata or {}
    meta = {k.decode(): v.decode() for k, v in raw.items()}
    schema = parquet_table([], meta).schema
    writer = pq.ParquetWriter(out, schema, compression="zstd")
    try:
        for part, keep in group:
            name = next((f for f in part["files"] if f.endswith(".parquet")), None)
            if name is None:
                recs = [r for i, r in enumerate(iter_part_records(layout, part)) if i in keep]
                table = parquet_table(recs, meta)
            else:
                with layout.files.open(name) as fh:
                    table = pq.read_table(fh).take(pa.array(sorted(keep), type=pa.int64()))
            writer.write_table(_conform(table, schema))
    finally:
        writer.close()


def _conform(table: Any, schema: Any) -> Any:
    """`table` with `schema`'s columns in its order: missing ones null, extra ones dropped."""
    import pyarrow as pa

    cols = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)

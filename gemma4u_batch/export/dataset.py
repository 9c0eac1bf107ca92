"""`gemma4u export OUT --to …`: the current records as a dataset people use directly.

* `--to DIR`: the Hugging Face Hub layout — `data/<split>-NNNNN-of-NNNNN.parquet` shards
  (≤ --max-shard-size each) and a dataset card `README.md` (YAML header: configs, features,
  license to fill, task categories; body from `.gemma4u/run.json`). With the media: the
  original file bytes as `Image` / `Audio` features, videos as a `binary` column `video`.
  `datasets.load_dataset(DIR)` loads it; `--push-to-hub` uploads the folder.
* `--to FILE.jsonl|.parquet|.csv`: the flat current table (no media), `--columns` to pick.

For manifest and dataset inputs the source row's columns (carried in `fields`) become
columns again, so the result is the user's table with our outputs joined on. Records with
an error are left out unless `include_errors`, tombstones (--prune) unless `include_tombstones`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..decode import DecodeOptions, read_input
from ..errors import ItemError, UsageError
from ..records import WorkItem
from ..store.layout import RUN_MANIFEST, OutLayout
from ..store.ledger import current_records

log = logging.getLogger(__name__)

RESULT_COLUMNS = (
    "id",
    "key",
    "source",
    "modality",
    "task",
    "prompt",
    "text",
    "finish_reason",
    "num_prompt_tokens",
    "num_output_tokens",
    "error",
    "error_kind",
    "model",
    "content_sha256",
    "decode_seconds",
    "segments",
    "language",
    "data",
    "mean_logprob",
    "logprobs",
    "flags",
    "retried",
    "supersedes",
    "reused_from",
    "model_fingerprint",
    "tombstone",
    "run_id",
    "created_at",
)
FILE_SUFFIXES = (".jsonl", ".parquet", ".csv")
MEDIA_COLUMNS = {"image": "image", "audio": "audio", "video": "video"}  # modality → column
DEFAULT_SHARD_BYTES = 500 * 1000**2
ROWS_PER_GROUP = 64  # rows per Parquet row group with media (media rows are large)
TEXT_ROWS_PER_GROUP = 10_000  # without media


@dataclass
class ExportResult:
    rows: int = 0
    excluded_errors: int = 0
    shards: list[str] = field(default_factory=list)
    media: dict[str, int] = field(default_factory=dict)  # column → rows with the bytes
    media_missing: int = 0  # rows whose file is gone or changed since it was captioned
    num_bytes: int = 0  # of the Parquet files
    path: str = ""
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # task → rows, prompts, an example prompt


@dataclass
class ExportOptions:
    media: bool = True
    split: str = "train"
    max_shard_size: int = DEFAULT_SHARD_BYTES
    include_errors: bool = False
    include_tombstones: bool = False  # records --prune retired (their input is gone)
    columns: list[str] | None = None
    overwrite: bool = False


def parse_size(text: str) -> int:
    """'500MB', '2GB', '1.5 GiB', '1000000' → bytes."""
    t = text.strip().upper().replace(" ", "")
    units = {"KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "B": 1}
    for unit, mult in units.items():
        if t.endswith(unit):
            t, factor = t[: -len(unit)], mult
            break
    else:
        factor = 1
    try:
        n = int(float(t) * factor)
    except ValueError:
        raise UsageError(f"--max-shard-size: not a size: {text!r} (e.g. 500MB, 2GB)") from None
    if n < 1000:
        raise UsageError(f"--max-shard-size: too small: {text!r}")
    return n


def _manifest(layout: OutLayout) -> dict[str, Any]:
    return layout.read_json(RUN_MANIFEST) or {}


def _data_schema(layout: OutLayout) -> dict[str, Any] | None:
    from ..prompting.structured import load_schema
    from ..store.schema import typed_schema_ok

    config = _manifest(layout).get("config") or {}
    try:
        schema = load_schema(config.get("json_schema"))
    except UsageError:
        return None
    return schema if typed_schema_ok(schema) else None


# ----------------------------------------------------------------------------- rows


def _records(layout: OutLayout, opts: ExportOptions, result: ExportResult) -> list[dict[str, Any]]:
    """The current records to export (text only: small), errors left out unless asked."""
    rows = []
    for rec in current_records(layout, tombstones=opts.include_tombstones):
        if rec.get("error") is not None and not opts.include_errors:
            result.excluded_errors += 1
            continue
        rows.append(rec)
    return rows


def _field_columns(records: list[dict[str, Any]]) -> dict[str, str]:
    """Manifest/dataset column name → output column name (prefixed on a clash)."""
    names: dict[str, str] = {}
    for rec in records:
        for k in rec.get("fields") or {}:
            if k not in names:
                names[k] = f"source_{k}" if k in RESULT_COLUMNS or k in MEDIA_COLUMNS.values() else k
    return names


def _field_type(values: list[Any]) -> str:
    """One Arrow-friendly type for a field column: its values' scalar type, else JSON text."""
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {bool} and kinds:
        return "bool"
    if kinds <= {int} and kinds:
        return "int64"
    if kinds <= {int, float} and kinds:
        return "float64"
    return "string"


def _flat_row(rec: dict[str, Any], fields: dict[str, str], ftypes: dict[str, str], data_schema: Any) -> dict[str, Any]:
    from datetime import datetime

    from ..store.schema import coerce_to_schema

    row = {c: rec.get(c) for c in RESULT_COLUMNS}
    row["data"] = json.dumps(rec["data"], ensure_ascii=False) if rec.get("data") is not None else None
    if data_schema is not None:
        row["data_typed"] = coerce_to_schema(rec.get("data"), data_schema)
    row["flags"] = list(rec.get("flags") or [])
    if row["segments"] is not None:  # records written before segments had a language
        row["segments"] = [{"language": None, **seg} for seg in row["segments"]]
    if isinstance(row["created_at"], str):
        row["created_at"] = datetime.fromisoformat(row["created_at"])
    values = rec.get("fields") or {}
    for k, name in fields.items():
        v = values.get(k)
        if ftypes[k] == "string" and v is not None and not isinstance(v, str):
            v = json.dumps(v, ensure_ascii=False, default=str)
        elif ftypes[k] == "float64" and v is not None:
            v = float(v)
        row[name] = v
    return row


def _features(fields: dict[str, str], ftypes: dict[str, str], data_schema: Any, media: set[str]) -> Any:
    """The `datasets` features of the export (their Arrow schema is the Parquet schema)."""
    import datasets as hf

    from ..store.schema import json_schema_arrow_type

    s, i = hf.Value("string"), hf.Value("int64")
    feats: dict[str, Any] = {c: s for c in RESULT_COLUMNS}
    feats.update(num_prompt_tokens=i, num_output_tokens=i, retried=hf.Value("bool"), tombstone=hf.Value("bool"))
    feats["created_at"] = hf.Value("timestamp[us, tz=UTC]")
    seg = {"start": hf.Value("float64"), "end": hf.Value("float64"), "text": s, "language": s}
    feats["segments"] = hf.List(seg)
    feats["flags"] = hf.List(s)
    feats["mean_logprob"] = feats["decode_seconds"] = hf.Value("float64")
    alt = {"token": s, "logprob": hf.Value("float64")}
    feats["logprobs"] = hf.List({**alt, "top": hf.List(alt)})
    if data_schema is not None:
        import pyarrow as pa

        typed = hf.Features.from_arrow_schema(pa.schema([("data_typed", json_schema_arrow_type(data_schema))]))
        feats["data_typed"] = typed["data_typed"]
    for k, name in fields.items():
        feats[name] = hf.Value(ftypes[k])
    if "image" in media:
        feats["image"] = hf.Image()
    if "audio" in media:
        feats["audio"] = hf.Audio()
    if "video" in media:
        feats["video"] = hf.Value("binary")
    return hf.Features(feats)


def _media_source(layout: OutLayout) -> Iterator[WorkItem]:
    """Each input item, from the run's input as recorded in run.json."""
    from ..config.job import JobConfig
    from ..sources.job_input import JobInput

    man = _manifest(layout)
    if not man.get("config"):
        raise UsageError(f"{layout.where} has no run manifest (.gemma4u/run.json); export with --no-media")
    config = JobConfig(**{**man["config"], "output": str(layout.root)})
    yield from JobInput(config).open()


def _with_media(layout: OutLayout, rows: list[dict[str, Any]], result: ExportResult) -> Iterator[dict[str, Any]]:
    """The rows with their item's original bytes, in input order (one item's bytes in memory at a
    time); rows whose item left the input come last, without media."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_id.setdefault(row["id"], []).append(row)
    try:
        for item in _media_source(layout):
            group = by_id.pop(item.id, None)
            if group is None:
                continue
            yield from _attach(group, item, result)
    except UsageError:
        raise
    except Exception as exc:  # the input moved or cannot be opened: captions without media
        log.warning("gemma4u export: cannot read the input for media (%s); rows without media", exc)
    for group in by_id.values():
        result.media_missing += len(group)
        yield from group


def _attach(group: list[dict[str, Any]], item: WorkItem, result: ExportResult) -> Iterator[dict[str, Any]]:
    """The item's rows with its bytes (a file's, a row's, a URL's) attached where unchanged."""
    try:
        data: bytes | None = read_input(item, DecodeOptions())[0]
    except ItemError:
        data = None
    path = item.path
    for row in group:
        if row.get("error") is not None:  # often the media itself is bad: it would not decode
            yield row
            continue
        column = MEDIA_COLUMNS.get(row.get("modality") or "")
        sha = row.get("content_sha256")
        if data is None or column is None or (sha and hashlib.sha256(data).hexdigest() != sha):
            result.media_missing += 1  # gone, or changed since its caption was made
            yield row
            continue
        name = Path(path).name if path is not None else posixpath.basename(item.url or row["id"])
        row[column] = data if column == "video" else {"bytes": data, "path": name}
        result.media[column] = result.media.get(column, 0) + 1
        yield row


# ------------------------------------------------------------------------ writing


def _prepare(out: Path | str, to: Path, opts: ExportOptions) -> OutLayout:
    layout = OutLayout(out)
    if not layout.made():
        raise UsageError(f"{layout.where} holds no gemma4u results")
    if isinstance(out, Path) and to.resolve().is_relative_to(out.resolve()):
        raise UsageError(f"--to {to} is inside {out}: OUT's readers would take it for data; export elsewhere")
    if to.exists() and (to.is_file() or any(to.iterdir())) and not opts.overwrite:
        raise UsageError(f"{to} exists and is not empty; pass --overwrite to replace it")
    return layout


def export(out: Path | str, to: Path, opts: ExportOptions | None = None) -> ExportResult:
    """Export OUT's current records to `to`: a Hub folder, or one .jsonl/.parquet/.csv file."""
    opts = opts or ExportOptions()
    layout = _prepare(out, to, opts)
    if to.suffix.lower() in FILE_SUFFIXES:
        return _export_file(layout, to, opts)
    if opts.columns:
        raise UsageError("--columns is for a file export (--to FILE.jsonl|.parquet|.csv)")
    return _export_folder(layout, to, opts)


def _table_parts(layout: OutLayout, opts: ExportOptions, result: ExportResult) -> tuple[Any, ...]:
    records = _records(layout, opts, result)
    fields = _field_columns(records)
    ftypes = {k: _field_type([(r.get("fields") or {}).get(k) for r in records]) for k in fields}
    data_schema = _data_schema(layout)
    rows = [_flat_row(r, fields, ftypes, data_schema) for r in records]
    return rows, fields, ftypes, data_schema


def _export_file(layout: OutLayout, to: Path, opts: ExportOptions) -> ExportResult:
    import pyarrow as pa

    result = ExportResult(path=str(to))
    rows, fields, ftypes, data_schema = _table_parts(layout, opts, result)
    schema = _features(fields, ftypes, data_schema, set()).arrow_schema
    if opts.columns:
        unknown = [c for c in opts.columns if c not in schema.names]
        if unknown:
            raise UsageError(f"--columns: no column {', '.join(unknown)} (columns: {', '.join(schema.names)})")
        schema = pa.schema([schema.field(c) for c in opts.columns])
    table = pa.Table.from_pylist(rows, schema=schema)
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(to.name + ".incomplete")
    suffix = to.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, tmp, compression="zstd")
    elif suffix == ".csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(_jsonify_nested(table), tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in table.to_pylist():
                fh.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
    tmp.replace(to)
    result.rows = table.num_rows
    return result


def _json_default(v: Any) -> Any:
    return v.isoformat() if hasattr(v, "isoformat") else str(v)


def _jsonify_nested(table: Any) -> Any:
    """CSV holds scalars only: list/struct columns become JSON text."""
    import pyarrow as pa

    cols = []
    for col in table.columns:
        if pa.types.is_nested(col.type):
            texts = [None if v is None else json.dumps(v, ensure_ascii=False) for v in col.to_pylist()]
            col = pa.array(texts, pa.string())
        cols.append(col)
    return pa.Table.from_arrays(cols, names=table.column_names)


class _Shards:
    """Parquet files of at most `max_bytes` each. Rows arrive one at a time and go to the next
    file when they would not fit, so a file is over the limit only when it holds a single row
    that is (one media file larger than the limit). Row groups are written as they fill."""

    FILE_META_BYTES = 64 * 1024  # the Parquet footer's fixed part (schema, features), kept free
    GROUP_META_BYTES = 16 * 1024  # and its part per row group (column chunk metadata, statistics)

    def __init__(self, folder: Path, schema: Any, max_bytes: int, media: set[str]) -> None:
        self.folder, self.schema, self.media, self.max_bytes = folder, schema, media, max_bytes
        self.group_rows = ROWS_PER_GROUP if media else TEXT_ROWS_PER_GROUP
        self.paths: list[Path] = []
        self._writer: Any = None
        self._rows = 0  # in the current file, written or pending
        self._size = self.FILE_META_BYTES  # the current file's size, estimated from above
        self._pending: list[dict[str, Any]] = []
        self._pending_bytes = 0

    def add(self, row: dict[str, Any]) -> None:
        n = _row_bytes(row, self.media)
        if self._rows and self._size + n + self.GROUP_META_BYTES > self.max_bytes:
            self._flush()
            self._writer.close()
            self._writer, self._rows, self._size = None, 0, self.FILE_META_BYTES
        self._pending.append(row)
        self._pending_bytes += n
        self._rows += 1
        self._size += n
        if len(self._pending) >= self.group_rows or self._pending_bytes >= self.max_bytes // 4:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pending:
            return
        if self._writer is None:
            self.paths.append(self.folder / f"shard-{len(self.paths):05d}.parquet")
            self._writer = pq.ParquetWriter(self.paths[-1], self.schema, compression="zstd")
        self._writer.write_table(pa.Table.from_pylist(self._pending, schema=self.schema))
        self._pending, self._pending_bytes = [], 0
        self._size += self.GROUP_META_BYTES

    def close(self) -> list[Path]:
        """The shard files; an empty split still gets one (so it loads)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._flush()
        if self._writer is not None:
            self._writer.close()
        if not self.paths:
            self.paths.append(self.folder / "shard-00000.parquet")
            pq.write_table(pa.Table.from_pylist([], schema=self.schema), self.paths[-1])
        return self.paths


def _task_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task: its rows, how many different prompts they were made with, and the first."""
    tasks: dict[str, dict[str, Any]] = {}
    seen: dict[str, set[str]] = {}
    for row in rows:
        task = str(row.get("task"))
        t = tasks.setdefault(task, {"rows": 0, "prompts": 0, "prompt": None})
        t["rows"] += 1
        prompt = row.get("prompt")
        if prompt is not None and prompt not in seen.setdefault(task, set()):
            seen[task].add(prompt)
            t["prompts"] += 1
            t["prompt"] = t["prompt"] or prompt
    return tasks


def _export_folder(layout: OutLayout, to: Path, opts: ExportOptions) -> ExportResult:
    result = ExportResult(path=str(to))
    rows, fields, ftypes, data_schema = _table_parts(layout, opts, result)
    result.tasks = _task_summary(rows)
    media = {MEDIA_COLUMNS[r["modality"]] for r in rows if r.get("modality") in MEDIA_COLUMNS} if opts.media else set()
    features = _features(fields, ftypes, data_schema, media)
    schema = features.arrow_schema
    tmp = to.with_name(to.name + ".incomplete")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    stream: Iterator[dict[str, Any]] = _with_media(layout, rows, result) if media else iter(rows)

    try:
        shards = _Shards(tmp / "data", schema, opts.max_shard_size, media)
        for row in stream:
            for name in media:
                row.setdefault(name, None)
            shards.add(row)
            result.rows += 1
        paths = shards.close()
        for i, path in enumerate(paths):
            final = path.with_name(f"{opts.split}-{i:05d}-of-{len(paths):05d}.parquet")
            path.rename(final)
            result.shards.append(f"data/{final.name}")
            result.num_bytes += final.stat().st_size
        from .card import dataset_card

        card = dataset_card(_manifest(layout), features, result, opts, _errors_by_kind(layout, opts))
        (tmp / "README.md").write_text(card, encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if to.exists():
        shutil.rmtree(to) if to.is_dir() else to.unlink()
    tmp.rename(to)
    return result


def _row_bytes(row: dict[str, Any], media: set[str]) -> int:
    """A row's size in a shard, estimated from above: its media bytes (stored as they are, with
    their name and length) and its other values as JSON text (more than their compressed size)."""
    n = 0
    for name in media:
        v = row.get(name)
        n += 64 + (len(v) if isinstance(v, bytes) else sum(len(x or b"") for x in (v or {}).values()))
    rest = {k: v for k, v in row.items() if k not in media}
    return n + len(json.dumps(rest, ensure_ascii=False, default=str))


def _errors_by_kind(layout: OutLayout, opts: ExportOptions) -> dict[str, int]:
    from ..store.index import OutIndex

    with OutIndex(layout) as index:
        return dict(index.totals()["errors_by_kind"])

"""Manifest source: a JSONL, CSV/TSV or Parquet list of media paths, streamed row by row.

A bad row never stops the job: it becomes a WorkItem with `error` set, naming its line,
so it gets its own error record. Only a manifest that cannot be read at all (missing,
not the format its extension says, no path column) is a UsageError.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import decimal
import io
import json
import math
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..records import Modality, WorkItem
from . import locations
from .folder import modality_for
from .locations import is_url, redact
from .paths import BadRowPath, outside_roots, real_path
from .rows import DuplicateIds, one_line, unknown_type_message

PATH_COLUMNS: tuple[str, ...] = ("path", "file", "file_name", "filename", "audio", "image", "video")
"""Column names tried, in order, when no path column is given."""

RESERVED_COLUMNS = frozenset({"id", "prompt", "task", "modality"})

_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
_PARQUET_BATCH_ROWS = 1024
_DROP = object()  # marks a value that cannot go into JSON fields
MAX_LINE_BYTES = 16 * 1024**2
"""A longer manifest line is one bad row, so a file with no newlines cannot fill memory."""
MAX_FIELD_DEPTH = 64
"""Deeper nested field values are a bad row (the output writers recurse on them)."""


class _LineTooLong(Exception):
    pass


class _BoundedLines:
    """Lines of a text file, each at most MAX_LINE_BYTES characters; a longer line is
    skipped and raises _LineTooLong once, and iteration can go on after it."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self.count = 0

    def __iter__(self) -> _BoundedLines:
        return self

    def __next__(self) -> str:
        line = self._fh.readline(MAX_LINE_BYTES + 1)
        if not line:
            raise StopIteration
        self.count += 1
        if len(line) > MAX_LINE_BYTES:
            while line and not line.endswith(("\n", "\r")):
                line = self._fh.readline(MAX_LINE_BYTES)
            raise _LineTooLong
        return line


def _valid_utf8(text: str) -> bool:
    """False for text holding bytes that were not UTF-8 (kept as surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _RowError(Exception):
    """A malformed row; carries the best id recovered so far (or None)."""

    def __init__(self, message: str, row_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.row_id = row_id


def json_safe(value: Any, _depth: int = 0) -> Any:
    """`value` as plain JSON data, or _DROP for binary data (kept out of output fields).

    Raises ValueError for values nested deeper than MAX_FIELD_DEPTH."""
    if _depth > MAX_FIELD_DEPTH:
        raise ValueError(f"nested deeper than {MAX_FIELD_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _DROP
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = json_safe(v, _depth + 1)
            if v is not _DROP:
                out[str(k)] = v
        return out
    if isinstance(value, (list, tuple)):
        return [v for v in (json_safe(x, _depth + 1) for x in value) if v is not _DROP]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return json_safe(float(value), _depth + 1)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return json_safe(item(), _depth + 1)
        except (TypeError, ValueError):
            pass
    return str(value)


def _names(names: list[str], limit: int = 20) -> str:
    """Column names for a one-line message: a quoted header cell can hold newlines."""
    shown = [repr(n) if not n.isprintable() else n for n in names[:limit]]
    return ", ".join(shown) + (f", … ({len(names)} columns)" if len(names) > limit else "")


def _row_id(obj: dict[str, Any]) -> str | None:
    """The row's own id, when it has one; an id of the wrong type is the row's error."""
    raw_id = obj.get("id")
    if raw_id is not None and raw_id != "":
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise _RowError(f"id must be a string or an integer, got {type(raw_id).__name__}")
        return str(raw_id)
    return None


def _texts(obj: dict[str, Any], row_id: str) -> dict[str, str | None]:
    """The row's prompt and task; blank ones are None so the job defaults apply."""
    texts: dict[str, str | None] = {}
    for key in ("prompt", "task"):
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            raise _RowError(f"'{key}' must be a string, got {type(value).__name__}", row_id)
        texts[key] = value if isinstance(value, str) and value.strip() else None
    return texts


def _row_modality(obj: dict[str, Any], raw_path: str, row_id: str) -> Modality:
    """The row's `modality` column, else the one its path's extension implies."""
    raw_modality = obj.get("modality")
    if raw_modality is not None and raw_modality != "":
        try:
            return Modality(str(raw_modality).strip().lower())
        except ValueError:
            raise _RowError(f"unknown modality {raw_modality!r} (expected image, audio or video)", row_id) from None
    modality = modality_for(raw_path)
    if modality is None:
        raise _RowError(unknown_type_message(raw_path), row_id)
    return modality


def _fields(obj: dict[str, Any], column: str, row_id: str) -> dict[str, Any]:
    """The row's other columns as JSON-safe output fields (binary values left out)."""
    fields: dict[str, Any] = {}
    for key, value in obj.items():
        if key == column or key in RESERVED_COLUMNS:
            continue
        try:
            value = json_safe(value)
        except (ValueError, RecursionError) as exc:
            raise _RowError(f"field {str(key)[:80]!r}: {one_line(exc)}", row_id) from None
        if value is not _DROP:
            fields[str(key)] = value
    return fields


class ManifestSource:
    """Rows of a manifest file as WorkItems, in file order, never loading the whole file.

    Paths resolve against the manifest's folder and must stay inside `allow_roots`
    (default: that folder) so a manifest cannot make the job read arbitrary files.
    """

    def __init__(
        self,
        path: Path | str,
        modalities: frozenset[Modality] | None = None,
        allow_roots: list[Path | str] | None = None,
        path_column: str | None = None,
    ) -> None:
        self.remote = is_url(path)
        self.location: Path | str = str(path) if self.remote else Path(path)
        self.path = Path(urllib.parse.urlsplit(str(path)).path) if self.remote else Path(path)  # its name
        self.where = redact(str(path)) if self.remote else str(path)  # as messages and sources show it
        self.root: Path | str = locations.parent(str(path)) if self.remote else self.path.parent
        self.modalities = modalities
        self.path_column = path_column
        roots = allow_roots if allow_roots else [self.root]
        self._url_roots = [str(r) for r in roots if is_url(str(r))]
        self._allow_roots = [os.path.realpath(r) for r in roots if not is_url(str(r))]
        self._real_root = None if self.remote else os.path.realpath(self.path.parent)
        self._format = _FORMATS.get(self.path.suffix.lower())
        if self._format is None:
            raise UsageError(
                f"manifest {self.where}: unsupported format '{self.path.suffix}' "
                "(use .jsonl, .ndjson, .csv, .tsv or .parquet)"
            )
        if not self.remote and not self.path.is_file():
            what = "not found" if not self.path.exists() else "not a regular file"
            raise UsageError(f"manifest {self.where}: {what}")
        # Validate the header/schema now so a bad manifest fails before any work starts.
        if self._format in ("csv", "tsv"):
            self._header = self._read_csv_header()
        elif self._format == "parquet":
            self._parquet_columns = self._read_parquet_schema()
        else:
            try:
                with self._open_bytes() as fh:
                    fh.read(1)
            except OSError as exc:
                raise UsageError(f"manifest {self.where}: cannot read: {exc.strerror or exc}") from exc

    def _open_bytes(self) -> Any:
        """The manifest as a binary stream, local or remote (streamed, never read whole); a
        missing remote manifest is one clear line."""
        if not self.remote:
            return open(self.path, "rb")
        fs, path = locations.filesystem(str(self.location))
        try:
            # fsspec's files take no size in readline: buffered like a local file, they do
            return io.BufferedReader(fs.open(path, "rb", block_size=1 << 20), buffer_size=1 << 20)
        except FileNotFoundError:
            raise UsageError(f"manifest {self.where}: not found") from None

    # ----------------------------------------------------------------- formats

    def _pick_column(self, names: list[str]) -> str:
        if self.path_column is not None:
            if self.path_column not in names:
                raise UsageError(
                    f"manifest {self.where}: path column '{self.path_column}' not found "
                    f"(--column; columns: {_names(names)})"
                )
            return self.path_column
        for name in PATH_COLUMNS:
            if name in names:
                return name
        raise UsageError(
            f"manifest {self.where}: no path column (expected one of {', '.join(PATH_COLUMNS)}; "
            f"found {_names(names) or 'none'}); name it with --column (column: in a recipe)"
        )

    def _open_csv(self):
        # Bad UTF-8 after the header is one bad row, not a failed manifest.
        return io.TextIOWrapper(self._open_bytes(), encoding="utf-8-sig", errors="surrogateescape", newline="")

    def _csv_reader(self, fh):
        return csv.reader(fh, delimiter="\t" if self._format == "tsv" else ",")

    def _read_csv_header(self) -> list[str] | None:
        try:
            with self._open_csv() as fh:
                reader = self._csv_reader(_BoundedLines(fh))
                for row in reader:
                    if row:
                        if not all(_valid_utf8(c) for c in row):
                            raise UsageError(f"manifest {self.where}: header is not valid UTF-8")
                        header = [c.strip() for c in row]
                        self._pick_column(header)
                        return header
        except UnicodeDecodeError as exc:
            raise UsageError(f"manifest {self.where}: header is not valid UTF-8") from exc
        except csv.Error as exc:
            raise UsageError(f"manifest {self.where}: cannot parse CSV header: {one_line(exc)}") from exc
        except _LineTooLong as exc:
            raise UsageError(f"manifest {self.where}: header line is longer than {MAX_LINE_BYTES} bytes") from exc
        except OSError as exc:
            raise UsageError(f"manifest {self.where}: cannot read: {exc.strerror or exc}") from exc
        return None  # empty file: zero rows

    def _read_parquet_schema(self) -> list[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with self._open_bytes() as fh:
                names = list(pq.ParquetFile(fh).schema_arrow.names)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise UsageError(f"manifest {self.where}: not a readable Parquet file: {one_line(exc)}") from exc
        self._pick_column(names)
        return names

    def _rows_jsonl(self) -> Iterator[tuple[int, dict[str, Any] | _RowError]]:
        with self._open_bytes() as fh:
            n = 0
            while True:
                raw = fh.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    return
                n += 1
                if len(raw) > MAX_LINE_BYTES:
                    while raw and not raw.endswith(b"\n"):
                        raw = fh.readline(MAX_LINE_BYTES)
                    yield n, _RowError(f"line is longer than {MAX_LINE_BYTES} bytes")
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield n, _RowError("not valid UTF-8")
                    continue
                if n == 1:
                    line = line.lstrip("\ufeff")
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield n, _RowError(f"invalid JSON: {exc.msg} at column {exc.colno}")
                    continue
                except RecursionError:
                    yield n, _RowError("invalid JSON: nested too deeply")
                    continue
                except ValueError as exc:  # e.g. an integer over Python's digit limit
                    yield n, _RowError(f"invalid JSON: {one_line(exc)}")
                    continue
                if not isinstance(obj, dict):
                    yield n, _RowError(f"expected a JSON object, got {type(obj).__name__}")
                    continue
                yield n, obj

    def _rows_csv(self) -> Iterator[tuple[int, dict[str, Any] | _RowError]]:
        if self._header is None:
            return
        header: list[str] | None = None
        with self._open_csv() as fh:
            lines = _BoundedLines(fh)
            reader = self._csv_reader(lines)
            while True:
                start = lines.count + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield start, _RowError(f"cannot parse row: {one_line(exc)}")
                    continue
                except _LineTooLong:
                    yield start, _RowError(f"line is longer than {MAX_LINE_BYTES} bytes")
                    continue
                if not row or all(not c.strip() for c in row):
                    continue
                if header is None:
                    header = [c.strip() for c in row]
                    continue
                if not all(_valid_utf8(c) for c in row):
                    yield start, _RowError("not valid UTF-8")
                    continue
                if len(row) > len(header):
                    yield start, _RowError(f"row has {len(row)} fields but the header has {len(header)}")
                    continue
                yield start, {k: v for k, v in zip(header, row, strict=False) if k}

    def _rows_parquet(self) -> Iterator[tuple[int, dict[str, Any] | _RowError]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = 0
        try:
            with self._open_bytes() as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                    for row in batch.to_pylist():
                        n += 1
                        yield n, row
        except (pa.ArrowException, OSError) as exc:
            raise UsageError(f"manifest {self.where}: cannot read Parquet after row {n}: {one_line(exc)}") from exc

    # -------------------------------------------------------------------- rows

    def _media(self, obj: dict[str, Any], row_id: str | None) -> tuple[str, str, bytes | None]:
        """(path column, path, inline bytes) of a row. A Hugging Face media struct in
        Parquet ({"bytes": ..., "path": ...}) carries its bytes, which are used instead of a file."""
        column = self.path_column
        if column is None:
            column = next((c for c in PATH_COLUMNS if c in obj), None)
        if column is None or column not in obj:
            expected = self.path_column or " / ".join(PATH_COLUMNS)
            raise _RowError(f"missing path (expected a '{expected}' field)", row_id)
        raw_path = obj[column]
        data: bytes | None = None
        if isinstance(raw_path, dict) and isinstance(raw_path.get("bytes"), (bytes, bytearray)):
            data = bytes(raw_path["bytes"])
            raw_path = raw_path.get("path") or ""
            if not isinstance(raw_path, str):
                raise _RowError(f"'{column}' struct has a non-string path", row_id)
        elif raw_path is None or raw_path == "":
            raise _RowError(f"empty path in '{column}'", row_id)
        elif not isinstance(raw_path, str):
            raise _RowError(f"path in '{column}' must be a string, got {type(raw_path).__name__}", row_id)
        if data is None and not raw_path.strip():
            raise _RowError(f"empty path in '{column}'", row_id)
        return column, raw_path, data

    def _row_item(self, obj: dict[str, Any], where: str, source: str) -> tuple[str, WorkItem | None]:
        """(id, WorkItem) for one parsed row, item None when the modality filter drops it; raises _RowError."""
        row_id = _row_id(obj)
        column, raw_path, data = self._media(obj, row_id)
        if row_id is None:
            row_id = raw_path if raw_path else None
        if row_id is None:
            raise _RowError("inline media needs an 'id' field")
        texts = _texts(obj, row_id)
        modality = _row_modality(obj, raw_path, row_id)
        if self.modalities is not None and modality not in self.modalities:
            return row_id, None
        item = WorkItem(
            id=row_id,
            source=source,
            modality=modality,
            data=data,
            prompt=texts["prompt"],
            task=texts["task"],
            fields=_fields(obj, column, row_id),
        )
        if data is not None:
            return row_id, item
        if self.remote or is_url(raw_path):
            return row_id, self._url_item(item, raw_path, where)
        try:
            real = real_path(raw_path, self._real_root)
        except BadRowPath as exc:
            raise _RowError(exc.message, row_id) from exc
        refused = outside_roots(raw_path, real, self._allow_roots)
        if refused:
            return row_id, dataclasses.replace(item, error=f"{where}: {refused}")
        return row_id, dataclasses.replace(item, path=str(real))

    def _url_item(self, item: WorkItem, raw_path: str, where: str) -> WorkItem:
        """A row naming a URL, or a relative path in a remote manifest (resolved against the
        manifest's folder URL): allowed only under an allowed root, like a local path."""
        url = raw_path if is_url(raw_path) else locations.join(str(self.root), raw_path)
        if not is_url(url) or locations.scheme_of(url) not in locations.EXTRAS:
            return dataclasses.replace(item, error=f"{where}: unsupported location {redact(raw_path)!r}")
        if not any(locations.under(url, root) for root in self._url_roots):
            roots = ", ".join(redact(r) for r in self._url_roots) or "none for URLs"
            refused = f"{redact(url)} is outside the allowed roots ({roots}); pass --allow-root to allow it"
            return dataclasses.replace(item, error=f"{where}: {refused}")
        return dataclasses.replace(item, url=url)

    def __iter__(self) -> Iterator[WorkItem]:
        if self._format == "jsonl":
            rows = self._rows_jsonl()
            unit = "line"
        elif self._format == "parquet":
            rows = self._rows_parquet()
            unit = "row"
        else:
            rows = self._rows_csv()
            unit = "line"
        ids = DuplicateIds()
        for n, row in rows:
            where = f"manifest {unit} {n}"
            source = f"{self.where}:{n}"
            fallback_id = f"{self.path.name}:{unit}{n}"
            if isinstance(row, _RowError):
                item = WorkItem(id=fallback_id, source=source, modality=None, error=f"{where}: {row.message}")
            else:
                try:
                    row_id, maybe = self._row_item(row, where, source)
                except _RowError as exc:
                    maybe = WorkItem(
                        id=exc.row_id or fallback_id, source=source, modality=None, error=f"{where}: {exc.message}"
                    )
                if maybe is None:  # filtered out by modality; its id still counts for duplicates
                    ids.note(row_id, n)
                    continue
                item = maybe
            yield ids.admit(item, n, where, unit)

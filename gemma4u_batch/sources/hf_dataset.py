"""Hugging Face dataset source: a save_to_disk folder, a folder of Parquet/Arrow shards,
a folder loader ("imagefolder:DIR") or a hub id, streamed row by row.

Media columns are cast with decode=False so cells arrive as {"bytes", "path"}: the
decode stage (in worker processes) does the decoding, with its own limits, and a
row never gets decoded twice.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..records import Modality, WorkItem
from .folder import modality_for
from .locations import EXTRAS, is_url, redact, scheme_of, under
from .paths import BadRowPath, outside_roots, real_path
from .rows import DuplicateIds, one_line, unknown_type_message

FOLDER_LOADERS = frozenset({"imagefolder", "audiofolder", "videofolder"})
"""Loaders that take a data folder, written as "imagefolder:DIR" (or given a local folder)."""

FILE_LOADERS = frozenset({"parquet", "arrow", "csv", "json", "webdataset"})
"""Packaged loaders that also accept "parquet:DIR" (all shards in DIR)."""

MEDIA_COLUMN_NAMES: tuple[str, ...] = ("image", "audio", "video", "path")
_NAME_MODALITY = {"image": Modality.IMAGE, "audio": Modality.AUDIO, "video": Modality.VIDEO}
_SHARD_EXTENSIONS = {".parquet": "parquet", ".arrow": "arrow"}
_MAX_FIELD_CHARS = 65_536  # longer strings stay out of output fields
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_saved_dataset(path: Path) -> bool:
    """True for a folder written by Dataset.save_to_disk / DatasetDict.save_to_disk."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "dataset_dict.json").is_file():
        return True
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def _shard_scan(path: Path, max_depth: int = 3) -> dict[str, int] | None:
    """Counts of shard files by format under `path`, or None as soon as a media file shows up."""
    counts: dict[str, int] = {}
    stack: list[tuple[Path, int]] = [(path, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if depth < max_depth:
                        stack.append((Path(entry.path), depth + 1))
                    continue
            except OSError:
                continue
            ext = os.path.splitext(entry.name)[1].lower()
            if ext in _SHARD_EXTENSIONS:
                fmt = _SHARD_EXTENSIONS[ext]
                counts[fmt] = counts.get(fmt, 0) + 1
            elif modality_for(entry.name) is not None:
                return None
    return counts


def looks_like_shard_folder(path: Path) -> bool:
    """True for a folder of .parquet/.arrow shards with no media files beside them.

    A folder holding media files is a media folder (a metadata.parquet does not make
    it a dataset), and a save_to_disk folder is handled by looks_like_saved_dataset.
    """
    path = Path(path)
    if not path.is_dir() or looks_like_saved_dataset(path):
        return False
    counts = _shard_scan(path)
    return bool(counts)


def _modality_of_feature(feature: Any) -> Modality | None:
    import datasets

    if isinstance(feature, datasets.Image):
        return Modality.IMAGE
    if isinstance(feature, datasets.Audio):
        return Modality.AUDIO
    video = getattr(datasets, "Video", None)
    if video is not None and isinstance(feature, video):
        return Modality.VIDEO
    return None


def _undecoded(feature: Any) -> Any:
    """The same kind of media feature with decode=False: cells stay {"bytes", "path"}."""
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, datasets.Audio):
        return datasets.Audio(decode=False)
    return datasets.Video(decode=False)


def _is_scalar_feature(feature: Any) -> bool:
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return True
    if isinstance(feature, datasets.Value):
        dtype = str(feature.dtype)
        return dtype in ("bool", "string", "large_string") or dtype.startswith(("int", "uint", "float"))
    return False


def _scalar(value: Any) -> tuple[bool, Any]:
    """(keep, value) for an output field: small JSON scalars only."""
    if value is None or isinstance(value, (bool, int)):
        return True, value
    if isinstance(value, float):
        return True, value if math.isfinite(value) else None
    if isinstance(value, str):
        return len(value) <= _MAX_FIELD_CHARS, value
    return False, None


def _choose_split(splits: Iterable[str], split: str | None, spec: str) -> str:
    names = [str(s) for s in splits]
    if split is not None:
        if split not in names:
            raise UsageError(f"dataset {spec}: no split '{split}' (splits: {', '.join(names) or 'none'})")
        return split
    if len(names) == 1:
        return names[0]
    if not names:
        raise UsageError(f"dataset {spec}: has no splits")
    raise UsageError(f"dataset {spec}: has splits {', '.join(names)}; pass --split to pick one")


def _scalar_fields(row: dict[str, Any], column: str | None) -> dict[str, Any]:
    """The row's small scalar columns as output fields (the media column and id aside)."""
    fields: dict[str, Any] = {}
    for key, value in row.items():
        if key in (column, "id"):
            continue
        keep, value = _scalar(value)
        if keep:
            fields[key] = value
    return fields


class _BadCell(Exception):
    """A media cell that holds no usable media; the message is the row's error."""


def _cell_media(cell: Any) -> tuple[bytes | bytearray | None, str | None]:
    """(bytes, path) of a media cell: a {"bytes", "path"} struct, raw bytes or a path.

    Raises _BadCell: the row gets an error item, not the whole dataset."""
    data: Any = None
    path: Any = None
    if isinstance(cell, dict):
        data = cell.get("bytes")
        path = cell.get("path")
    elif isinstance(cell, (bytes, bytearray)):
        data = bytes(cell)
    elif isinstance(cell, str):
        path = cell
    elif cell is not None:
        raise _BadCell(f"unsupported media cell of type {type(cell).__name__}")
    if data is not None and not isinstance(data, (bytes, bytearray)):
        raise _BadCell(f"unsupported media bytes of type {type(data).__name__}")
    if path is not None and not isinstance(path, str):
        raise _BadCell(f"unsupported media path of type {type(path).__name__}")
    if not data and not (path and path.strip()):
        raise _BadCell("empty media cell")
    return data, path


class DatasetSource:
    """Rows of one split of a Hugging Face dataset as WorkItems, in dataset order.

    `spec` is a save_to_disk folder, a folder of .parquet/.arrow shards, a single
    .parquet/.arrow file, "LOADER:DIR" (imagefolder, audiofolder, videofolder, parquet,
    arrow, csv, json, webdataset) or a hub id (needs a reachable hub). Ids are the "id"
    column when present, else "SPLIT/00000042", so they are stable across runs.

    Rows that name a file instead of carrying bytes may only reach files under the folders
    in `allow_roots` (default: the dataset's folder; for a hub id, the Hugging Face caches),
    so a dataset from elsewhere cannot make the job read arbitrary files. A row naming a
    URL (s3://, gs://, az://, hf://, http(s)://: the schemes gemma4u reads) is a remote item,
    fetched by the decode stage, only when the URL lies under one of the URL roots in
    `allow_roots` (none by default); else it is an error item that says to pass --allow-root.
    """

    def __init__(
        self,
        spec: str | Path,
        split: str | None = None,
        column: str | None = None,
        modalities: frozenset[Modality] | None = None,
        streaming: bool | None = None,
        name: str | None = None,
        allow_roots: Sequence[Path | str] | None = None,
    ) -> None:
        self.spec = str(spec)
        self.modalities = modalities
        self.name = name
        self.root = Path(".")
        self._local = False
        try:
            ds, self.split = self._open(spec, split, streaming, name)
        except UsageError:
            raise
        except Exception as exc:  # datasets raises many kinds; the CLI needs one line
            raise UsageError(f"cannot load dataset {self.spec}: {one_line(exc)}") from exc
        self._ds, self.column, self._modality = self._prepare(ds, column)
        # Relative paths in rows resolve against the dataset's folder (a single file's folder).
        self._base = self.root if not self.root.is_file() else self.root.parent
        local = [Path(r) for r in allow_roots or [] if not is_url(r)]
        self._url_roots = [str(r) for r in allow_roots or [] if is_url(r)]
        self._allow_roots = [os.path.realpath(r) for r in local or self._default_roots()]

    def _default_roots(self) -> list[Path]:
        if self._local:
            return [self._base]
        import datasets
        from huggingface_hub import constants

        return [Path(datasets.config.HF_DATASETS_CACHE), Path(constants.HF_HUB_CACHE)]

    # ------------------------------------------------------------------ opening

    def _open(self, spec: str | Path, split: str | None, streaming: bool | None, name: str | None):
        import datasets

        path = Path(spec)
        text = str(spec)
        if path.exists():
            self.root = path
            self._local = True
            if path.is_dir() and looks_like_saved_dataset(path):
                loaded = datasets.load_from_disk(str(path))
                if isinstance(loaded, datasets.DatasetDict):
                    split = _choose_split(loaded.keys(), split, text)
                    ds = loaded[split]
                else:
                    own = str(loaded.split) if loaded.split is not None else None
                    if split is not None and own is not None and split != own:
                        raise UsageError(f"dataset {text}: no split '{split}' (splits: {own})")
                    split = split or own or "train"
                    ds = loaded
                if streaming:
                    ds = ds.to_iterable_dataset()
                return ds, split
            if path.is_dir():
                counts = _shard_scan(path)
                if not counts:
                    raise UsageError(
                        f"dataset {text}: not a saved dataset or a folder of .parquet/.arrow shards "
                        "(for media files use imagefolder:DIR or audiofolder:DIR)"
                    )
                loader = max(sorted(counts), key=lambda k: counts[k])
                return self._load(loader, split, streaming, data_dir=str(path))
            file_loader = _SHARD_EXTENSIONS.get(path.suffix.lower())
            if file_loader is None:
                raise UsageError(f"dataset {text}: a single file must be .parquet or .arrow")
            return self._load(file_loader, split, streaming, data_files=[str(path)])
        loader, sep, data_dir = text.partition(":")
        if sep and loader in FOLDER_LOADERS | FILE_LOADERS:
            if not data_dir:
                raise UsageError(f"dataset {text}: give the folder as {loader}:DIR")
            if not Path(data_dir).is_dir():
                raise UsageError(f"dataset {text}: folder not found: {data_dir}")
            self.root = Path(data_dir)
            self._local = True
            return self._load(loader, split, streaming, data_dir=data_dir, name=name)
        if text in FOLDER_LOADERS | FILE_LOADERS:
            raise UsageError(f"dataset {text}: give the folder as {text}:DIR")
        if text.startswith((".", "/", "~")) or not _HUB_ID.match(text):
            raise UsageError(f"dataset not found: {text}")
        return self._load(text, split, streaming, name=name)

    def _load(self, loader: str, split: str | None, streaming: bool | None, **kwargs: Any):
        # Only the dataset's own files are read, from HF_ENDPOINT: no download counter (a request
        # to another host) and no dataset-viewer export in place of the repo's files.
        import datasets

        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
        datasets.config.USE_PARQUET_EXPORT = False
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        loaded = datasets.load_dataset(loader, streaming=True if streaming is None else streaming, **kwargs)
        if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            split = _choose_split(loaded.keys(), split, self.spec)
            return loaded[split], split
        return loaded, split or "train"

    def _prepare(self, ds: Any, column: str | None) -> tuple[Any, str | None, Modality | None]:
        """Pick the media column, switch media decoding off, keep only the columns we emit."""
        features = ds.features
        if features is None:  # streaming source without declared features: decide per row
            if column is not None:
                return ds, column, _NAME_MODALITY.get(column)
            return ds, None, None
        names = list(features)
        if column is not None:
            if column not in features:
                raise UsageError(f"dataset {self.spec}: no column '{column}' (columns: {', '.join(names)})")
        else:
            column = next((c for c in names if _modality_of_feature(features[c]) is not None), None)
            if column is None:
                column = next((c for c in MEDIA_COLUMN_NAMES if c in features), None)
            if column is None:
                raise UsageError(
                    f"dataset {self.spec}: no Image/Audio/Video column and no column named "
                    f"{', '.join(MEDIA_COLUMN_NAMES)} (columns: {', '.join(names)}); pass --column"
                )
        modality = _modality_of_feature(features[column]) or _NAME_MODALITY.get(column)
        keep = [column] + [c for c in names if c != column and (c == "id" or _is_scalar_feature(features[c]))]
        if keep != names:
            ds = ds.select_columns(keep)
        if _modality_of_feature(features[column]) is not None:
            ds = ds.cast_column(column, _undecoded(features[column]))
        return ds, column, modality

    # ---------------------------------------------------------------- iterating

    def _rows(self) -> Iterator[dict[str, Any]]:
        iterator = iter(self._ds)
        n = 0
        while True:
            try:
                row = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                raise UsageError(f"dataset {self.spec}: cannot read row {n}: {one_line(exc)}") from exc
            n += 1
            yield row

    def _item(self, index: int, row: dict[str, Any]) -> WorkItem | None:
        """One row as a WorkItem (an error item when its media is unusable), or None when
        the modality filter drops it."""
        raw_id = row.get("id")
        column = self.column
        if column is None:
            column = next((c for c in MEDIA_COLUMN_NAMES if c in row), None)
        modality = self._modality or (_NAME_MODALITY.get(column) if column else None)
        if modality is not None and self.modalities is not None and modality not in self.modalities:
            return None
        item = WorkItem(
            id=str(raw_id) if raw_id is not None and raw_id != "" else f"{self.split}/{index:08d}",
            source=f"{self.spec}[{self.split}]#{index}",
            modality=modality,
            fields=_scalar_fields(row, column),
        )
        return self._with_media(item, row, column, f"row {index}")

    def _with_media(self, item: WorkItem, row: dict[str, Any], column: str | None, where: str) -> WorkItem | None:
        """`item` with its media (bytes, or a file inside the allowed roots), an error item
        carrying the modality known so far, or None when the filter drops the modality
        its path implies."""

        def error(message: str) -> WorkItem:
            return dataclasses.replace(item, error=f"{where}: {message}")

        if column is None:
            return error(f"no media column (expected one of {', '.join(MEDIA_COLUMN_NAMES)})")
        try:
            data, path = _cell_media(row.get(column))
        except _BadCell as exc:
            return error(str(exc))
        remote = not data and is_url(path)
        if item.modality is None:
            # A URL's type is its path's extension (a query string, a presigned URL's, aside).
            modality = modality_for(urllib.parse.urlsplit(path).path if remote else path) if path else None
            if modality is None:
                return error(unknown_type_message(redact(path) if remote and path else path or ""))
            item = dataclasses.replace(item, modality=modality)
        if self.modalities is not None and item.modality not in self.modalities:
            return None
        if data:
            return dataclasses.replace(item, data=bytes(data))
        assert path is not None
        if remote:
            return self._url_item(item, path, error)
        try:
            real = real_path(path, self._base if self._local else None)
        except BadRowPath as exc:
            return error(exc.message)
        refused = outside_roots(path, real, self._allow_roots)
        return error(refused) if refused else dataclasses.replace(item, path=str(real))

    def _url_item(self, item: WorkItem, url: str, error: Callable[[str], WorkItem]) -> WorkItem:
        """A row naming a URL: a remote item when gemma4u reads its scheme and it lies under an
        allowed URL root, else an error item naming it (redacted)."""
        shown = redact(url)
        scheme = scheme_of(url)
        if scheme not in EXTRAS:
            known = ", ".join(sorted({f"{s}://" for s in EXTRAS}))
            return error(f"unsupported URL scheme {scheme}:// in {shown} (gemma4u reads {known} and local paths)")
        if not any(under(url, root) for root in self._url_roots):
            roots = ", ".join(redact(r) for r in self._url_roots) or "none for URLs"
            return error(f"{shown} is outside the allowed roots ({roots}); pass --allow-root to allow it")
        return dataclasses.replace(item, url=url)

    def __iter__(self) -> Iterator[WorkItem]:
        ids = DuplicateIds()
        for index, row in enumerate(self._rows()):
            item = self._item(index, row)
            if item is None:
                continue
            yield ids.admit(item, index, f"row {index}", "row")

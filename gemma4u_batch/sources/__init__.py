"""Sources: stream WorkItems from a folder, a manifest or a Hugging Face dataset.

Every source yields items lazily in a deterministic order and never loads a whole
collection into memory.
"""

from __future__ import annotations

import posixpath
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from ..errors import UsageError
from ..records import Modality, WorkItem
from .folder import FolderSource, modality_for
from .hf_dataset import DatasetSource, looks_like_saved_dataset, looks_like_shard_folder
from .locations import check_url, is_url, parent, redact
from .manifest import ManifestSource
from .rows import unknown_type_message

__all__ = ["DatasetSource", "FolderSource", "ManifestSource", "Source", "open_source"]

MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet")


class Source(Protocol):
    @property
    def root(self) -> Path | str:
        """Where the items are (a folder, or a folder URL): what relative names resolve against."""
        ...

    def __iter__(self) -> Iterator[WorkItem]: ...


def open_source(
    path: Path | str,
    modalities: frozenset[Modality] | None = None,
    *,
    dataset: str | None = None,
    split: str | None = None,
    column: str | None = None,
    allow_roots: list[Path | str] | None = None,
) -> Source:
    """Pick the source kind from INPUT: a manifest file, a saved dataset or shard folder,
    a plain folder, a URL (object-store prefix or object, a manifest or a file on a web server),
    or (with `dataset`) a `datasets` loader/hub id. Usage error otherwise."""
    if dataset is not None:
        return DatasetSource(dataset, split=split, column=column, modalities=modalities, allow_roots=allow_roots)
    if is_url(str(path)):
        return open_url(str(path), modalities, column=column, allow_roots=allow_roots)
    path = Path(path)
    if not path.exists():
        raise UsageError(f"input not found: {path}")
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            # --allow-root adds to the default (the manifest's own folder).
            roots: list[Path | str] | None = [path.resolve().parent, *allow_roots] if allow_roots else None
            return ManifestSource(path, modalities=modalities, allow_roots=roots, path_column=column)
        if path.suffix.lower() == ".arrow":
            return DatasetSource(path, split=split, column=column, modalities=modalities, allow_roots=allow_roots)
        raise UsageError(f"input file is not a manifest (.jsonl, .csv, .tsv, .parquet): {path}")
    if looks_like_saved_dataset(path) or looks_like_shard_folder(path):
        return DatasetSource(path, split=split, column=column, modalities=modalities, allow_roots=allow_roots)
    return FolderSource(path, modalities=modalities)


def open_url(
    url: str, modalities: frozenset[Modality] | None, *, column: str | None, allow_roots: list[Path | str] | None
) -> Source:
    """INPUT as a URL: a manifest (by its extension), one file, or an object-store prefix listed
    like a folder. The scheme and its extra are checked first: one line, before any work."""
    scheme = check_url(url)
    suffix = posixpath.splitext(urllib.parse.urlsplit(url).path)[1].lower()
    if suffix in MANIFEST_SUFFIXES:
        roots: list[Path | str] | None = [parent(url), *allow_roots] if allow_roots else None
        return ManifestSource(url, modalities=modalities, allow_roots=roots, path_column=column)
    from .remote import ObjectFolderSource, object_url_kind

    if scheme in ("http", "https") or object_url_kind(url) == "object":
        return OneURLSource(url, modalities)
    return ObjectFolderSource(url, modalities)


class OneURLSource:
    """INPUT naming one remote file: one item, id = its name."""

    def __init__(self, url: str, modalities: frozenset[Modality] | None = None) -> None:
        self.root: Path | str = parent(url)
        self.url = url
        self.modalities = modalities

    def __iter__(self) -> Iterator[WorkItem]:
        name = posixpath.basename(urllib.parse.urlsplit(self.url).path)
        modality = modality_for(name)
        if modality is None:
            raise UsageError(
                f"input {redact(self.url)} is not a media file or a manifest ({unknown_type_message(name)})"
            )
        if self.modalities is None or modality in self.modalities:
            yield WorkItem(id=name, source=redact(self.url), modality=modality, url=self.url)

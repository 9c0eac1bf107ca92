"""Sources: stream WorkItems from a folder, a manifest or a Hugging Face dataset.

Every source yields items lazily in a deterministic order and never loads a whole
collection into memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from ..errors import UsageError
from ..records import Modality, WorkItem
from .folder import FolderSource
from .hf_dataset import DatasetSource, looks_like_saved_dataset, looks_like_shard_folder
from .manifest import ManifestSource

__all__ = ["DatasetSource", "FolderSource", "ManifestSource", "Source", "open_source"]

MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet")


class Source(Protocol):
    root: Path

    def __iter__(self) -> Iterator[WorkItem]: ...


def open_source(
    path: Path | str,
    modalities: frozenset[Modality] | None = None,
    *,
    dataset: str | None = None,
    split: str | None = None,
    column: str | None = None,
    allow_roots: list[Path] | None = None,
) -> Source:
    """Pick the source kind from INPUT: a manifest file, a saved dataset or shard folder,
    a plain folder, or (with `dataset`) a `datasets` loader/hub id. Usage error otherwise."""
    if dataset is not None:
        return DatasetSource(dataset, split=split, column=column, modalities=modalities, allow_roots=allow_roots)
    path = Path(path)
    if not path.exists():
        raise UsageError(f"input not found: {path}")
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            # --allow-root adds to the default (the manifest's own folder).
            roots = [path.resolve().parent, *allow_roots] if allow_roots else None
            return ManifestSource(path, modalities=modalities, allow_roots=roots, path_column=column)
        if path.suffix.lower() == ".arrow":
            return DatasetSource(path, split=split, column=column, modalities=modalities, allow_roots=allow_roots)
        raise UsageError(f"input file is not a manifest (.jsonl, .csv, .tsv, .parquet): {path}")
    if looks_like_saved_dataset(path) or looks_like_shard_folder(path):
        return DatasetSource(path, split=split, column=column, modalities=modalities, allow_roots=allow_roots)
    return FolderSource(path, modalities=modalities)

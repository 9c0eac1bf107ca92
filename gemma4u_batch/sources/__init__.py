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

__all__ = ["Source", "FolderSource", "open_source"]


class Source(Protocol):
    root: Path

    def __iter__(self) -> Iterator[WorkItem]: ...


def open_source(path: Path, modalities: frozenset[Modality] | None = None) -> Source:
    """Pick the source kind from what INPUT is; a usage error if it cannot be read."""
    if not path.exists():
        raise UsageError(f"input not found: {path}")
    if path.is_dir():
        return FolderSource(path, modalities=modalities)
    raise UsageError(f"input is not a folder: {path}")

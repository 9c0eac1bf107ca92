"""Folder source: recursive, hidden files skipped, links never followed out of the root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ..records import Modality, WorkItem

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jfif", ".pjpeg", ".ppm", ".pgm", ".heic"}
)
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".opus", ".aac", ".wma", ".aiff", ".aif"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".3gp", ".wmv"})

_BY_EXTENSION: dict[str, Modality] = {
    **{e: Modality.IMAGE for e in IMAGE_EXTENSIONS},
    **{e: Modality.AUDIO for e in AUDIO_EXTENSIONS},
    **{e: Modality.VIDEO for e in VIDEO_EXTENSIONS},
}


def modality_for(path: str | Path) -> Modality | None:
    return _BY_EXTENSION.get(os.path.splitext(str(path))[1].lower())


class FolderSource:
    """Every media file under `root`, sorted by relative path (deterministic).

    Hidden files and folders are skipped; files whose extension is not a known media
    type are skipped. Symlinks are followed only when they resolve inside the root.
    """

    def __init__(self, root: Path, modalities: frozenset[Modality] | None = None) -> None:
        self.root = Path(root)
        self._real_root = self.root.resolve()
        self.modalities = modalities

    def _inside_root(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self._real_root)
        except (ValueError, OSError, RuntimeError):
            return False
        return True

    def _walk(self, directory: Path, rel: str) -> Iterator[tuple[str, Path]]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            rel_path = f"{rel}{entry.name}"
            if entry.is_symlink() and not self._inside_root(path):
                continue
            if entry.is_dir(follow_symlinks=True):
                # A link to a folder inside the root would repeat items; skip it.
                if entry.is_symlink():
                    continue
                yield from self._walk(path, rel_path + "/")
            else:
                yield rel_path, path

    def __iter__(self) -> Iterator[WorkItem]:
        for rel_path, path in self._walk(self.root, ""):
            modality = modality_for(rel_path)
            if modality is None:
                continue
            if self.modalities is not None and modality not in self.modalities:
                continue
            yield WorkItem(id=rel_path, source=str(path), modality=modality, path=path)

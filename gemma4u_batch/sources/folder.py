"""Folder source: recursive, hidden files skipped, links never followed out of the root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ..records import Modality, WorkItem

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jfif", ".pjpeg", ".ppm", ".pgm", ".heic"}
)
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".opus", ".aac", ".wma", ".aiff", ".aif"}
)
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
    type are skipped. Symlinks are followed only when they resolve inside the root (a
    link leaving it is skipped, so a folder others fill cannot point the job at
    /dev/zero or /etc); links to folders are never followed. Special files (FIFOs,
    sockets, devices) are yielded and refused at read time, so each gets an error record.
    """

    def __init__(self, root: Path, modalities: frozenset[Modality] | None = None) -> None:
        self.root = Path(root)
        self._real_root = self.root.resolve()
        self.modalities = modalities

    def _resolved_inside(self, path: Path) -> Path | None:
        try:
            real = path.resolve()
            real.relative_to(self._real_root)
        except (ValueError, OSError, RuntimeError):
            return None
        return real

    def _walk(self) -> Iterator[tuple[str, Path]]:
        """Depth-first in name order, iteratively: a hostile tree cannot exhaust the stack."""
        stack: list[Iterator[tuple[str, os.DirEntry[str]]]] = [self._entries(self.root, "")]
        while stack:
            entry_and_rel = next(stack[-1], None)
            if entry_and_rel is None:
                stack.pop()
                continue
            rel, entry = entry_and_rel
            path = Path(entry.path)
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_link:
                real = self._resolved_inside(path)
                # A link to a folder inside the root would repeat items; skip it.
                if real is None or real.is_dir():
                    continue
                yield rel, real
            elif is_dir:
                stack.append(self._entries(path, rel + "/"))
            else:
                yield rel, path

    @staticmethod
    def _entries(directory: Path, rel: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if not entry.name.startswith("."):
                yield f"{rel}{entry.name}", entry

    def __iter__(self) -> Iterator[WorkItem]:
        root = str(self.root)
        prefix = "" if root == "." else root.rstrip("/") + "/"  # str(root / rel), without a Path per item
        for rel_path, path in self._walk():
            modality = modality_for(rel_path)
            if modality is None:
                continue
            if self.modalities is not None and modality not in self.modalities:
                continue
            yield WorkItem(id=rel_path, source=prefix + rel_path, modality=modality, path=path)

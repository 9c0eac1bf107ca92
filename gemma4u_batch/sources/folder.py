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

    def _walk(self) -> Iterator[tuple[str, Modality, Path, str, os.DirEntry[str]]]:
        """(id, modality, folder, its text, entry) of every media file the job takes, depth-first
        in name order, iteratively (a hostile tree cannot exhaust the stack). Only the d_type that
        scandir reads with the names is asked per entry: no `stat`, no `Path`, per file."""
        wanted = self.modalities
        stack = [(self.root, str(self.root), "", _entries(self.root))]
        while stack:
            folder, base, rel, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    child = _child(folder, name, base)
                    stack.append((child, str(child), f"{rel}{name}/", _entries(child)))
                    continue
            except OSError:
                continue
            dot = name.rfind(".")
            modality = _BY_EXTENSION.get(name[dot:].lower()) if dot > 0 else None
            if modality is not None and (wanted is None or modality in wanted):
                yield f"{rel}{name}", modality, folder, base, entry

    def _target(self, folder: Path, base: str, entry: os.DirEntry[str]) -> Path | None:
        """The file an entry stands for: itself, or a link's target inside the root (None: a link
        leaving the root, or to a folder, which would repeat items; or the entry went away)."""
        try:
            if not entry.is_symlink():
                return _child(folder, entry.name, base)
        except OSError:
            return None
        real = self._resolved_inside(_child(folder, entry.name, base))
        return None if real is None or real.is_dir() else real

    def __iter__(self) -> Iterator[WorkItem]:
        root = str(self.root)
        prefix = "" if root == "." else root.rstrip("/") + "/"  # str(root / rel), without a Path per item
        for rel, modality, folder, base, entry in self._walk():
            if (path := self._target(folder, base, entry)) is not None:
                yield WorkItem.file(rel, prefix + rel, modality, path)

    def count(self) -> int:
        """How many items iterating yields (progress's total), without making them."""
        n = 0
        for _, _, folder, base, entry in self._walk():
            try:
                if entry.is_symlink() and self._target(folder, base, entry) is None:
                    continue
            except OSError:
                continue
            n += 1
        return n


def _entries(folder: Path) -> Iterator[os.DirEntry[str]]:
    """A folder's visible entries in name order; none when it cannot be listed."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=_name)
    except OSError:
        return iter(())
    return iter(entries)


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


_make_child = getattr(Path, "_make_child_relpath", None)


def _sets_text() -> bool:
    """Whether pathlib's child constructor fills in the path's text itself (3.12 does, 3.11 not)."""
    try:
        return _make_child is None or isinstance(_make_child(Path("a"), "b")._str, str)
    except AttributeError:
        return False


_FILL_TEXT = not _sets_text()


def _child(folder: Path, name: str, base: str) -> Path:
    """`folder / name` for a name scandir gave (no separator to parse), `base` being
    `str(folder)`. Where this Python has it, pathlib's own child-path constructor (its glob's),
    with the path's text filled in as 3.12's does: parsing the joined text, then joining the
    parts again at the first `stat`, was a fifth of a no-op rerun, a million times per million
    files."""
    if _make_child is None:
        return folder / name
    child: Path = _make_child(folder, name)
    if _FILL_TEXT:
        child._str = name if base == "." else f"{base}{name}" if base.endswith("/") else f"{base}/{name}"  # type: ignore[attr-defined]
    return child

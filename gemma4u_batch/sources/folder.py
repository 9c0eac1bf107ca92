"""Folder source: recursive, hidden files skipped, links never followed out of the root."""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator
from pathlib import Path

from ..records import Modality, WorkItem
from .chunks import CHUNK_ITEMS, Chunk, unchunked

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

    def _resolved_inside(self, path: str) -> Path | None:
        try:
            real = Path(path).resolve()
            real.relative_to(self._real_root)
        except (ValueError, OSError, RuntimeError):
            return None
        return real

    def chunks(self) -> Iterator[Chunk]:
        """The files as chunks of consecutive items (a folder's files up to the next subfolder,
        at most CHUNK_ITEMS), depth-first in name order, iteratively (a hostile tree cannot
        exhaust the stack). Per file only the d_type that scandir reads with the names is asked:
        no `stat`, no `Path`, no `WorkItem` (a million files are walked on every rerun). Ids are
        paths relative to the root, sources the paths as INPUT names them, files absolute."""
        wanted = self.modalities
        root = str(self.root)
        prefix = "" if root == "." else root.rstrip("/") + "/"  # str(root / rel), without a Path per item
        top = os.path.abspath(root).rstrip("/") + "/"
        by_extension = _BY_EXTENSION
        names: list[str] = []  # the current folder's files since the last chunk
        modalities: list[Modality] = []
        linked: dict[int, str] = {}  # position → a link's target
        stack = [("", _entries(prefix))]
        while stack:
            rel, entries = stack[-1]
            for entry in entries:
                name = entry.name
                if name[0] == ".":  # hidden
                    continue
                try:
                    if entry.is_file(follow_symlinks=False):  # most entries: one look at the d_type
                        link = False
                    elif entry.is_dir(follow_symlinks=False):
                        sub = f"{rel}{name}/"
                        stack.append((sub, _entries(prefix + sub)))
                        break
                    else:
                        link = entry.is_symlink()  # else a special file: yielded, refused at read time
                except OSError:
                    continue
                dot = name.rfind(".")
                modality = by_extension.get(name[dot:].lower()) if dot > 0 else None
                if modality is None or (wanted is not None and modality not in wanted):
                    continue
                if link:
                    if (target := self._linked(top + rel + name)) is None:
                        continue
                    linked[len(names)] = target
                names.append(name)
                modalities.append(modality)
                if len(names) >= CHUNK_ITEMS:
                    yield _chunk(prefix, top, rel, names, modalities, linked)
                    names, modalities, linked = [], [], {}
            else:
                stack.pop()
            if names:  # a subfolder's items come next, or its parent's: a chunk is one folder's
                yield _chunk(prefix, top, rel, names, modalities, linked)
                names, modalities, linked = [], [], {}

    def _linked(self, path: str) -> str | None:
        """A link's target inside the root (None: a link leaving the root, or to a folder, which
        would repeat items; or the link went away)."""
        real = self._resolved_inside(path)
        return None if real is None or real.is_dir() else str(real)

    def __iter__(self) -> Iterator[WorkItem]:
        return unchunked(self.chunks())

    def count(self) -> int:
        """How many items iterating yields (progress's total), without making them."""
        return sum(len(chunk) for chunk in self.chunks())


def _chunk(
    prefix: str, top: str, rel: str, names: list[str], modalities: list[Modality], linked: dict[int, str]
) -> Chunk:
    """One folder's files as a chunk: ids relative to the root, sources as INPUT names them,
    files absolute (a link's: its target)."""
    ids = [rel + name for name in names]
    paths = [top + id for id in ids]
    for i, target in linked.items():
        paths[i] = target
    return Chunk.of_files(ids, [prefix + id for id in ids], paths, modalities)


def _entries(folder: str) -> Iterator[os.DirEntry[str]]:
    """A folder's visible entries in name order; none when it cannot be listed."""
    try:
        with os.scandir(folder or ".") as it:
            entries = sorted(it, key=_name)
    except OSError:
        return iter(())
    return iter(entries)


_name = operator.attrgetter("name")  # in C: a sort key per file

"""Chunks: the input as it reaches the quick check, a run of consecutive items at a time.

A nightly rerun over a million files decides a million times that a file is done, so the
input travels in chunks (one pass of each stage per chunk, one index query per chunk) and a
chunk shows the quick check what it asks of every item as columns: ids, local files,
modalities. A folder's chunk makes no `WorkItem` until one is asked for, which a done file
never is (BENCHMARKS.md: the no-op rerun).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence

from ..records import Modality, WorkItem

CHUNK_ITEMS = 1024  # a no-op rerun costs a few index queries per chunk: a 1,024-item chunk holds ~100 kB
CHUNK_INLINE_BYTES = 64 * 1024**2  # dataset rows carry their bytes: bound what a chunk holds


class Chunk:
    """Consecutive input items. `files[i]`: the absolute path of item i when it is a plain
    local file (no bytes, URL or error of its own), else None; `others`: the indexes of the
    rest; `own_tasks`, `prompted`: whether any item names its own task or prompt."""

    __slots__ = ("_items", "_sources", "files", "ids", "modalities", "others", "own_tasks", "prompted")

    def __init__(
        self,
        ids: list[str],
        files: list[str | None],
        modalities: Sequence[Modality | None],
        *,
        items: list[WorkItem] | None = None,
        sources: list[str] | None = None,
    ) -> None:
        self.ids = ids
        self.files = files
        self.modalities = modalities
        self._items = items
        self._sources = sources
        self.others: list[int] = []
        self.own_tasks: set[str] = set()
        self.prompted = False

    @classmethod
    def of_files(cls, ids: list[str], sources: list[str], paths: list[str], modalities: list[Modality]) -> Chunk:
        """A folder's files (the chunk takes the lists): `paths` absolute and normal, an item made
        only when asked for."""
        files: list[str | None] = list(paths)  # typed as the columns of any chunk
        return cls(ids, files, modalities, sources=sources)

    @classmethod
    def of_items(cls, items: list[WorkItem]) -> Chunk:
        """Items of any source."""
        files: list[str | None] = []
        for item in items:
            plain = item.path is not None and item.error is None and item.data is None and item.url is None
            files.append(_absolute(item.path) if plain and item.path is not None else None)
        chunk = cls([item.id for item in items], files, [item.modality for item in items], items=items)
        chunk.others = [i for i, f in enumerate(files) if f is None]
        chunk.own_tasks = {item.task for item in items if item.task}
        chunk.prompted = any(item.prompt for item in items)
        return chunk

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, i: int) -> WorkItem:
        if self._items is not None:
            return self._items[i]
        assert self._sources is not None
        path = self.files[i]
        modality = self.modalities[i]
        assert path is not None and modality is not None
        return WorkItem.file(self.ids[i], self._sources[i], modality, path)

    def items(self) -> list[WorkItem]:
        return self._items if self._items is not None else [self.item(i) for i in range(len(self))]

    def sent_as_audio(self) -> Chunk:
        """The chunk with its videos sent as their soundtracks (a speech job)."""
        if self._items is not None:
            items = [
                dataclasses.replace(it, modality=Modality.AUDIO) if it.modality is Modality.VIDEO else it
                for it in self._items
            ]
            return Chunk.of_items(items)
        modalities = [Modality.AUDIO if m is Modality.VIDEO else m for m in self.modalities]
        return Chunk(self.ids, self.files, modalities, sources=self._sources)


def chunked(items: Iterable[WorkItem]) -> Iterator[Chunk]:
    """`items` in chunks of at most CHUNK_ITEMS items and about CHUNK_INLINE_BYTES of inline bytes."""
    chunk: list[WorkItem] = []
    inline = 0
    for item in items:
        chunk.append(item)
        inline += len(item.data) if item.data is not None else 0
        if len(chunk) >= CHUNK_ITEMS or inline >= CHUNK_INLINE_BYTES:
            yield Chunk.of_items(chunk)
            chunk, inline = [], 0
    if chunk:
        yield Chunk.of_items(chunk)


def unchunked(chunks: Iterable[Chunk]) -> Iterator[WorkItem]:
    for chunk in chunks:
        yield from chunk.items()


def _absolute(path: str) -> str:
    """`os.path.abspath(path)` (OUT's stat cache is keyed by it), skipping its normalisation for
    a path already absolute and normal."""
    if path.startswith("/") and "//" not in path and "/." not in path and not path.endswith("/"):
        return path
    return os.path.abspath(path)

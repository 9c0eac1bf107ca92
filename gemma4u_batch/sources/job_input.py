"""The job's input, enumerated one way for everyone: the run, its progress counter,
`--dry-run`, `--estimate` and `gemma4u status` all see the same items in the same order."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable, Iterator

from ..config.job import JobConfig
from ..config.tasks import is_speech_task
from ..config.urls import is_url
from ..console import Counters
from ..errors import UsageError
from ..records import Modality, WorkItem
from . import Source, open_source
from .chunks import Chunk, chunked
from .folder import FolderSource
from .locations import redact

log = logging.getLogger(__name__)


def is_speech_job(config: JobConfig) -> bool:
    """Every task is a speech task: videos are then their soundtracks."""
    names = config.task_list()
    return bool(names) and all(is_speech_task(n) for n in names)


class JobInput:
    """Where a job's items come from and how each is sent (a video is its soundtrack
    when every task is a speech task)."""

    def __init__(self, config: JobConfig) -> None:
        self.config = config
        self.speech = is_speech_job(config)

    def dataset_spec(self) -> str | None:
        """`--dataset imagefolder INPUT` → "imagefolder:INPUT"; a hub id stays as it is."""
        from .hf_dataset import FILE_LOADERS, FOLDER_LOADERS

        c = self.config
        if c.dataset is None:
            return None
        if c.dataset in FOLDER_LOADERS | FILE_LOADERS and c.input is not None:
            return f"{c.dataset}:{c.input}"
        return c.dataset

    def open(self) -> Source:
        """The raw source (items as found). A usage error if INPUT cannot be used."""
        c = self.config
        return open_source(
            c.input or ".",
            frozenset(c.modalities) if c.modalities else None,
            dataset=self.dataset_spec(),
            split=c.split,
            column=c.column,
            allow_roots=c.allow_roots or None,
        )

    def as_sent(self, item: WorkItem) -> WorkItem:
        """The item as the job sends it: for speech jobs a video is decoded as audio."""
        if self.speech and item.modality is Modality.VIDEO:
            return dataclasses.replace(item, modality=Modality.AUDIO)
        return item

    def items(self, given: Iterable[WorkItem] | None = None) -> Iterator[WorkItem]:
        """The items as sent, from the source or from `given` (a sample, for --estimate)."""
        items = self.open() if given is None else given
        if not self.speech:  # every item is sent as found
            return iter(items)
        return (self.as_sent(i) for i in items)

    def chunks(self, given: Iterable[WorkItem] | None = None) -> Iterator[Chunk]:
        """`items()` in chunks (chunks.py): a folder's made by its walk, without an item per file."""
        items = self.open() if given is None else given
        if isinstance(items, FolderSource):
            chunks = items.chunks()
            return (c.sent_as_audio() for c in chunks) if self.speech else chunks
        return chunked((self.as_sent(i) for i in items) if self.speech else items)

    def nonempty(self, given: Iterable[WorkItem] | None = None) -> Iterator[Chunk]:
        """`chunks()`, but a usage error up front when there are none."""
        it = self.chunks(given)
        first = next(it, None)
        if first is None:
            raise UsageError(f"no media files found in {self.config.dataset or self.config.input}")
        return _chain(first, it)

    def label(self, source: Source | None = None) -> str:
        """'folder examples/images, modalities=image' and the like, for plans and logs."""
        c = self.config
        kind = type(source or self.open()).__name__.removesuffix("Source").lower() or "source"
        where = self.dataset_spec() if c.dataset else redact(str(c.input))
        extra = "".join(f", {k}={v}" for k, v in (("split", c.split), ("column", c.column)) if v)
        mods = f", modalities={','.join(m.value for m in c.modalities)}" if c.modalities else ""
        return f"{kind} {where}{extra}{mods}"

    def with_total(self, chunks: Iterator[Chunk], counters: Counters, *, early: bool = True) -> Iterator[Chunk]:
        """`chunks` unchanged, with progress's total set. Where a second pass is cheap (a folder,
        a local manifest, a dataset) and progress shows the total (`early`), a side thread
        counts the input so it shows from the start; a URL INPUT (a bucket's prefix, a remote
        manifest) would cost the store a second listing as large as the first, and quiet
        progress shows nothing (the side thread would take a busy machine's CPU from the run),
        so there the total is set when this pass has seen every item."""
        if is_url(self.config.input) or not early:
            return self._counted(chunks, counters)
        self._count_in_background(counters)
        return chunks

    def _counted(self, chunks: Iterator[Chunk], counters: Counters) -> Iterator[Chunk]:
        n = 0
        for chunk in chunks:
            n += len(chunk)
            yield chunk
        self._set_total(counters, n)

    def _count_in_background(self, counters: Counters) -> None:
        """Count the items on a side thread so progress can show a total and an ETA
        without delaying the start (a second streamed pass, flat memory)."""

        def count() -> None:
            try:
                source = self.open()
                n = source.count() if isinstance(source, FolderSource) else sum(1 for _ in source)
            except Exception as exc:  # progress only: without a second pass there is no total
                log.debug("input count failed: %s", exc)
                return
            self._set_total(counters, n)

        threading.Thread(target=count, name="gemma4u-count", daemon=True).start()

    def _set_total(self, counters: Counters, items: int) -> None:
        shard = self.config.shard_index()
        counters.total = items * len(self.config.task_list()) // (shard[1] if shard else 1)


def _chain(first: Chunk, rest: Iterator[Chunk]) -> Iterator[Chunk]:
    yield first
    yield from rest

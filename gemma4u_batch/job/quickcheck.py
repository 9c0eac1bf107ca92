"""Decide before reading: which input items are already done.

An item is skipped before any read when every task has a current record whose key is
the key the item would get now. The key needs the content hash: for a file, OUT's
index knows it when `stat` shows the file unchanged since it was read (git's index,
rsync's quick check); inline bytes are hashed here. Items are looked up a chunk at a
time, so a no-op rerun costs a few index queries per chunk, not per item.

This is what "pending" means everywhere (a run, `--dry-run`, `--estimate`, `status
--count-pending`): an item is pending unless OUT's index proves it done without reading it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator

from ..config.job import JobConfig
from ..decode.item import DecodedItem
from ..engine.vllm_engine import prompt_renderer
from ..prompting.builder import RequestBuilder
from ..prompting.keys import model_fingerprint
from ..records import Known, Modality, ObjectStat, WorkItem
from ..sources.locations import redact
from ..store.guard import guard_of, guard_refusal
from ..store.index import FileFacts, FileStat, OutIndex
from ..store.layout import OutLayout

CHUNK_ITEMS = 128
CHUNK_INLINE_BYTES = 64 * 1024**2  # dataset rows carry their bytes: bound what a chunk holds

Hashed = tuple[str | None, bool]  # (content sha256, a video's soundtrack was decoded)
Records = dict[tuple[str, str], tuple[str, bool]]
Revalidate = tuple[
    Hashed, Known
]  # the hash a URL had, and the validators to ask with  # (id, task) → (key, failed) of its current record


class QuickCheck:
    def __init__(self, config: JobConfig, index: OutIndex, requests: RequestBuilder) -> None:
        self.config = config
        self.index = index
        self.requests = requests

    def pending(
        self, items: Iterator[WorkItem], skipped: Callable[[int], None], new_work: Callable[[], None]
    ) -> Iterator[WorkItem]:
        """The items that need reading; `skipped(n)` counts the units found done; `new_work()` is
        called for an item known to need generation without reading it (no current record, or
        one made with another key), not for one that must be read to know (a racy stat, a URL
        to revalidate: it comes with `known`, for a conditional request)."""
        for chunk in _chunks(items):
            records = self.index.get_many([(item.id, t) for item in chunk for t in self.config.tasks_of(item)])
            known, revalidate = self._known(chunk, records)
            for i, item in enumerate(chunk):
                done = self._done(item, known[i], records) if i in known else None
                if done:
                    skipped(len(self.config.tasks_of(item)))
                elif done is None and i in revalidate and self._done(item, revalidate[i][0], records):
                    yield dataclasses.replace(item, known=revalidate[i][1])  # done, unless it changed
                elif done is None:
                    if i in known or not self._recorded(item, records):
                        new_work()
                    yield item

    def _known(self, chunk: list[WorkItem], records: Records) -> tuple[dict[int, Hashed], dict[int, Revalidate]]:
        """Content hashes known without reading, for the chunk's items that have records; and
        for URLs OUT knows that need asking whether they changed, what to ask with."""
        recorded = [i for i, item in enumerate(chunk) if self._recorded(item, records)]
        known: dict[int, Hashed] = {}
        stats: dict[int, tuple[str, FileStat]] = {}
        urls: dict[int, str] = {}
        for i in recorded:
            item = chunk[i]
            if item.error is not None:
                known[i] = (None, False)
            elif item.data is not None:
                if not self._video_audio(item):
                    known[i] = (hashlib.sha256(item.data).hexdigest(), False)
            elif item.url is not None:
                urls[i] = redact(item.url)
            elif item.path is not None and (st := _stat(item.path)) is not None:
                stats[i] = (os.path.abspath(item.path), st)
        facts = self.index.file_facts_many(dict(stats.values()))
        for i, (path, _) in stats.items():
            f = facts.get(path)
            if f is not None and not (self._video_audio(chunk[i]) and f.has_audio is None):
                known[i] = (f.sha256, bool(self._video_audio(chunk[i]) and f.has_audio))
        return known, self._known_urls(chunk, urls, known)

    def _known_urls(
        self, chunk: list[WorkItem], urls: dict[int, str], known: dict[int, Hashed]
    ) -> dict[int, Revalidate]:
        """A listed object is known when the listing says what OUT saw (no request at all); a URL
        no listing vouches for is known by URL only with --trust-urls, else revalidated."""
        remote = self.index.remote_facts_many(sorted(set(urls.values())))
        revalidate: dict[int, Revalidate] = {}
        for i, url in urls.items():
            item, got = chunk[i], remote.get(url)
            if got is None or (self._video_audio(item) and got[1].has_audio is None):
                continue
            stat, facts = got
            hashed = (facts.sha256, bool(self._video_audio(item) and facts.has_audio))
            if item.stat is not None:
                if _same_object(item.stat, stat):
                    known[i] = hashed
            elif self.config.trust_urls:
                known[i] = hashed
            else:
                revalidate[i] = (hashed, Known(facts.sha256, etag=stat.etag, last_modified=stat.last_modified))
        return revalidate

    def _recorded(self, item: WorkItem, records: Records) -> bool:
        return all(self._usable(records.get((item.id, t))) for t in self.config.tasks_of(item))

    def _usable(self, prev: tuple[str, bool] | None) -> bool:
        return prev is not None and not (self.config.retry_errors and prev[1])

    def _video_audio(self, item: WorkItem) -> bool:
        return item.modality is Modality.VIDEO and self.config.with_audio

    def _done(self, item: WorkItem, known: Hashed, records: Records) -> bool | None:
        """True: done; False: another shard's (neither read nor counted); None: must be read."""
        sha, has_audio = known
        if not self.requests.in_shard_of(item, sha):
            return False  # another shard's item: neither read nor counted
        for task in self.config.tasks_of(item):
            prev = records.get((item.id, task))
            _, rendered, _ = self.requests.prompt(item, task, has_audio)
            if prev is None or self.requests.key_of(item, sha, task, rendered) != prev[0]:
                return None
        return True

    def done_when_read(self, item: WorkItem) -> bool:
        """Whether an item the stat cannot vouch for (racy, or no cache of it) is done, from its
        bytes' hash alone (nothing decoded); True too for another shard's item."""
        if self._video_audio(item):  # whether its soundtrack decodes takes the decoder
            return False
        try:
            if item.data is not None:
                sha = hashlib.sha256(item.data).hexdigest()
            elif item.path is not None:
                with open(item.path, "rb") as fh:
                    sha = hashlib.file_digest(fh, "sha256").hexdigest()
            else:
                return False
        except OSError:
            return False
        records = self.index.get_many([(item.id, t) for t in self.config.tasks_of(item)])
        return self._done(item, (sha, False), records) is not None

    def remember(self, d: DecodedItem) -> None:
        """What reading a file (or fetching a URL) told us, for the next run's quick check."""
        if d.content_sha256 is None:
            return
        video = d.item.modality is Modality.VIDEO
        has_audio = (d.audio is not None) if (video and self.config.with_audio) else (None if video else False)
        if d.unchanged and d.item.known is not None:  # a 304 says nothing of the soundtrack: keep what we knew
            has_audio = None if video and self.config.with_audio else has_audio
        facts = FileFacts(d.content_sha256, has_audio)
        if d.item.url is not None:
            stat = d.item.stat or _validators(d)
            if stat is not None:
                self.index.remember_remote(redact(d.item.url), stat, facts)
        elif d.file_stat is not None and d.item.path is not None:
            self.index.remember_file(os.path.abspath(d.item.path), FileStat(*d.file_stat), facts, d.read_at_ns)


def _same_object(listed: ObjectStat, seen: ObjectStat) -> bool:
    """The listing shows the object OUT read: same version (where the store keeps them), ETag,
    size and modification time."""
    return (listed.version, listed.etag, listed.size, listed.mtime_ns) == (
        seen.version,
        seen.etag,
        seen.size,
        seen.mtime_ns,
    )


def _validators(d: DecodedItem) -> ObjectStat | None:
    """What the next conditional request sends: this fetch's validators, or after a 304 that
    did not repeat them, the ones it was asked with."""
    got, asked = d.fetched, d.item.known
    if got is None:
        return None
    if asked is not None:
        got = dataclasses.replace(
            got, etag=got.etag or asked.etag, last_modified=got.last_modified or asked.last_modified
        )
    return got if (got.etag or got.last_modified) else None


def _stat(path: os.PathLike[str] | str) -> FileStat | None:
    try:
        return FileStat.of(os.stat(path))
    except (OSError, ValueError):
        return None


def _chunks(items: Iterator[WorkItem]) -> Iterator[list[WorkItem]]:
    chunk: list[WorkItem] = []
    inline = 0
    for item in items:
        chunk.append(item)
        inline += len(item.data) if item.data is not None else 0
        if len(chunk) >= CHUNK_ITEMS or inline >= CHUNK_INLINE_BYTES:
            yield chunk
            chunk, inline = [], 0
    if chunk:
        yield chunk


def count_pending(config: JobConfig, items: Iterable[WorkItem], fingerprint: str | None = None) -> int | None:
    """How many of `items` (as the job sends them) a run into OUT would generate: new, changed,
    not yet done with these settings, or errors under --retry-errors. An item the stat cache
    cannot vouch for is hashed (never decoded). None when OUT holds no results (or --overwrite:
    every item is) or was made with other settings (a run would be refused). The tokenizer
    loads only for a prompt that OUT's index has not rendered before. `fingerprint`: the model's,
    when the caller knows it (OUT's run.json), else it is worked out as a run does."""
    layout = OutLayout(config.output)
    if fingerprint is None:
        fingerprint = model_fingerprint(
            config.model, verify_weights=config.verify_weights, revision=config.engine.revision
        )
    if config.overwrite or not layout.made() or guard_refusal(layout, guard_of(config, fingerprint)):
        for _ in items:  # the caller's pass over the input still happens
            pass
        return None
    with OutIndex(layout) as index:
        builder = RequestBuilder(config, prompt_renderer(config), fingerprint, prompt_cache=index)
        quick = QuickCheck(config, index, builder)
        needs_work = False

        def known_work() -> None:
            nonlocal needs_work
            needs_work = True

        pending = 0
        for item in quick.pending(iter(items), _ignored, known_work):
            pending += needs_work or not quick.done_when_read(item)
            needs_work = False
        return pending


def _ignored(n: int) -> None:
    """Items found done are not counted here."""

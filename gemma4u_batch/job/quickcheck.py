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
import time
from collections.abc import Callable, Iterable, Iterator

from ..config.job import JobConfig
from ..decode.item import DecodedItem
from ..engine.vllm_engine import prompt_renderer
from ..prompting.builder import RequestBuilder
from ..records import Known, Modality, ObjectStat, WorkItem
from ..sources.locations import redact
from ..store.guard import guard_of, guard_refusal
from ..store.index import FileFacts, FileStat, OutIndex, RecordAt
from ..store.layout import OutLayout
from .model import resolve_model
from .reuse import Copy

CHUNK_ITEMS = 1024  # a no-op rerun costs two index queries per chunk: a 1,024-item chunk holds ~100 kB
HASH_HERE_BYTES = 64 * 1024**2  # a larger new file is hashed by its decode worker only
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
        # Read once: a no-op rerun asks these for every item.
        self._job_tasks = config.task_list()
        self._sharded = config.shard_index() is not None
        self._with_audio = config.with_audio
        self._retry_errors = config.retry_errors

    def pending(
        self,
        items: Iterator[WorkItem],
        skipped: Callable[[int], None],
        new_work: Callable[[bool], None],
        reuse: Callable[[list[tuple[Copy, RecordAt]]], None] | None = None,
    ) -> Iterator[WorkItem]:
        """The items that need reading; `skipped(n)` counts the units found done; `new_work(surely)`
        is called for an item that needs generation unless its content turns out to be one OUT
        holds (surely: its content is known, and no record has its key; else it is new and
        unread). An item whose content is known and whose every task is done or has its key
        under another id is not read: `reuse(copies)` gets what to copy. An item that must be
        read to know (a racy stat, a URL to revalidate) comes with `known`, for a conditional
        request."""
        for chunk in _chunks(items):
            records = self.index.get_many([(item.id, t) for item in chunk for t in self._tasks_of(item)])
            known, revalidate = self._known(chunk, records, hash_here=reuse is not None)
            keys = {i: self._keys(chunk[i], known[i]) for i in known}
            sources = self.index.sources_of(self._unmatched(chunk, keys, records)) if reuse is not None else {}
            for i, item in enumerate(chunk):
                done = self._done(item, known[i], records, keys[i]) if i in known else None
                copies = self._copies(item, keys[i], records, sources) if done is None and i in keys else None
                if done:
                    skipped(len(self._tasks_of(item)))
                elif copies is not None and reuse is not None:
                    skipped(len(self._tasks_of(item)) - len(copies))
                    reuse(copies)
                elif done is None and i in revalidate and self._done(item, revalidate[i][0], records):
                    yield dataclasses.replace(item, known=revalidate[i][1])  # done, unless it changed
                elif done is None:
                    if i in known or not self._recorded(item, records):
                        new_work(i in known)
                    yield item

    def _known(
        self, chunk: list[WorkItem], records: Records, hash_here: bool = False
    ) -> tuple[dict[int, Hashed], dict[int, Revalidate]]:
        """Content hashes known without reading; and for URLs OUT knows that need asking whether
        they changed, what to ask with. An item with no record of its own is looked up too (a
        moved file, a manifest row under a new id), by its path and then by its inode."""
        recorded = {i for i, item in enumerate(chunk) if self._recorded(item, records)}
        known: dict[int, Hashed] = {}
        stats: dict[int, tuple[str, FileStat]] = {}
        urls: dict[int, str] = {}
        for i, item in enumerate(chunk):
            if item.error is not None:
                if i in recorded:
                    known[i] = (None, False)
            elif item.data is not None:
                if not self._video_audio(item):
                    known[i] = (hashlib.sha256(item.data).hexdigest(), False)
            elif item.url is not None:
                if i in recorded:
                    urls[i] = redact(item.url)
            elif item.path is not None and (st := _stat(path := os.fspath(item.path))) is not None:
                stats[i] = (_absolute(path), st)
        racy: set[str] = set()
        facts = self.index.file_facts_many(dict(stats.values()), racy)
        unseen = {path: st for i, (path, st) in stats.items() if path not in facts and i not in recorded}
        if unseen:
            facts.update(self.index.moved_facts_many(unseen))
        if hash_here:
            maybe = {path: st for path, st in unseen.items() if path not in facts}
            sizes = self.index.known_sizes([st.size for st in maybe.values()]) if maybe else set()
            here = racy | {path for path, st in maybe.items() if st.size in sizes}
            if here:
                facts.update(self._hashed_here(chunk, stats, here))
        for i, (path, _) in stats.items():
            f = facts.get(path)
            if f is None:
                continue
            if not self._video_audio(chunk[i]):
                known[i] = (f.sha256, False)
            elif f.has_audio is not None:
                known[i] = (f.sha256, f.has_audio)
        return known, self._known_urls(chunk, urls, known)

    def _hashed_here(
        self, chunk: list[WorkItem], stats: dict[int, tuple[str, FileStat]], paths: set[str]
    ) -> dict[str, FileFacts]:
        """Files hashed in this process rather than decoded to know them: new files of a size an
        input OUT read had (maybe copies: copied without a decode worker), and files whose stat
        is too recent to vouch (git's racy case: most are unchanged, and skipped without a
        decode). Not a video whose soundtrack is decoded (that takes the decoder), nor a file over
        HASH_HERE_BYTES; what this cannot read, its decode worker reports."""
        out: dict[str, FileFacts] = {}
        for i, (path, st) in stats.items():
            item = chunk[i]
            if path not in paths or st.size > HASH_HERE_BYTES or self._video_audio(item):
                continue
            hashed_at = time.time_ns()
            try:
                with open(path, "rb") as fh:
                    sha = hashlib.file_digest(fh, "sha256").hexdigest()
                    if FileStat.of(os.fstat(fh.fileno())) != st:  # changed since the walk
                        continue
            except OSError:
                continue
            facts = FileFacts(sha, None if item.modality is Modality.VIDEO else False)
            out[path] = facts
            self.index.remember_file(path, st, facts, hashed_at)
        return out

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
        return all(self._usable(records.get((item.id, t))) for t in self._tasks_of(item))

    def _tasks_of(self, item: WorkItem) -> list[str]:
        """`config.tasks_of`, without a new list per item (never mutate it)."""
        return [item.task] if item.task else self._job_tasks

    def _usable(self, prev: tuple[str, bool] | None) -> bool:
        return prev is not None and not (self._retry_errors and prev[1])

    def _video_audio(self, item: WorkItem) -> bool:
        return self._with_audio and item.modality is Modality.VIDEO

    def _keys(self, item: WorkItem, known: Hashed) -> dict[str, str]:
        """Each task's key for an item whose content hash is known."""
        sha, has_audio = known
        keys = {}
        for task in self._tasks_of(item):
            _, rendered, _ = self.requests.prompt(item, task, has_audio)
            keys[task] = self.requests.key_of(item, sha, task, rendered)
        return keys

    def _unmatched(self, chunk: list[WorkItem], keys: dict[int, dict[str, str]], records: Records) -> list[str]:
        """The keys no record of their own id has: the ones another id's record may hold."""
        return [
            key
            for i, by_task in keys.items()
            for task, key in by_task.items()
            if not (prev := records.get((chunk[i].id, task))) or prev[0] != key
        ]

    def _done(self, item: WorkItem, known: Hashed, records: Records, keys: dict[str, str] | None = None) -> bool | None:
        """True: done; False: another shard's (neither read nor counted); None: must be read."""
        if self._sharded and not self.requests.in_shard_of(item, known[0]):
            return False  # another shard's item: neither read nor counted
        keys = keys if keys is not None else self._keys(item, known)
        for task, key in keys.items():
            prev = records.get((item.id, task))
            if prev is None or key != prev[0] or (self._retry_errors and prev[1]):
                return None
        return True

    def _copies(
        self, item: WorkItem, keys: dict[str, str], records: Records, sources: dict[str, RecordAt]
    ) -> list[tuple[Copy, RecordAt]] | None:
        """What to copy when each task is done or has its key under another id (and one at
        least is to copy); None when a task needs generating."""
        copies = []
        for task, key in keys.items():
            prev = records.get((item.id, task))
            if prev is not None and prev[0] == key and not (self.config.retry_errors and prev[1]):
                continue
            if key not in sources:
                return None
            copies.append((Copy(item, task, key, prev[0] if prev else None), sources[key]))
        return copies or None

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
        keys = self._keys(item, (sha, False))
        if self._done(item, (sha, False), records, keys) is not None:
            return True
        sources = self.index.sources_of(self._unmatched([item], {0: keys}, records))
        return self._copies(item, keys, records, sources) is not None  # copied, not generated

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


def _absolute(path: str) -> str:
    """`os.path.abspath(path)` (the files table's key), skipping its normalisation for a path
    already absolute and normal, as a folder walk from an absolute root gives them."""
    if path.startswith("/") and "//" not in path and "/." not in path and not path.endswith("/"):
        return path
    return os.path.abspath(path)


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


@dataclasses.dataclass
class InputCount:
    """What one pass over the input tells about OUT: `pending` items (see `count_pending`) and
    `missing_inputs`, the current records (tombstones aside) whose input is gone."""

    pending: int | None = None
    missing_inputs: int | None = None


def count_pending(config: JobConfig, items: Iterable[WorkItem], fingerprint: str | None = None) -> int | None:
    """How many of `items` (as the job sends them) a run into OUT would generate: new, changed,
    not yet done with these settings, or errors under --retry-errors. An item the stat cache
    cannot vouch for is hashed (never decoded). None when OUT holds no results (or --overwrite:
    every item is) or was made with other settings (a run would be refused). The tokenizer
    loads only for a prompt that OUT's index has not rendered before. `fingerprint`: the model's,
    when the caller knows it (OUT's run.json), else it is worked out as a run does."""
    return count_input(config, items, fingerprint).pending


def count_input(config: JobConfig, items: Iterable[WorkItem], fingerprint: str | None = None) -> InputCount:
    """`count_pending`, and, when `items` is the whole input, the records whose input is gone."""
    from .prune import InputWalk

    layout = OutLayout(config.output)
    if fingerprint is None:  # as a run works it out: a hub id's commit pinned in OUT, its revision kept
        model = resolve_model(config, layout)
        config, fingerprint = model.keyed(config), model.fingerprint
    supersede = config.on_model_change == "supersede"
    if (
        config.overwrite
        or not layout.made()
        or guard_refusal(layout, guard_of(config, fingerprint), supersede=supersede)
    ):
        for _ in items:  # the caller's pass over the input still happens
            pass
        return InputCount()
    with OutIndex(layout) as index:
        builder = RequestBuilder(config, prompt_renderer(config), fingerprint, prompt_cache=index)
        quick = QuickCheck(config, index, builder)
        walk = InputWalk(index)
        needs_work = False

        def known_work(surely: bool) -> None:
            nonlocal needs_work
            needs_work = surely  # a new item is hashed: it may be a copy of one OUT holds

        pending = 0
        for item in quick.pending(walk.track(iter(items)), _ignored, known_work, _copied):
            pending += needs_work or not quick.done_when_read(item)
            needs_work = False
        missing = walk.missing()
        walk.end()
        return InputCount(pending, missing)


def _ignored(n: int) -> None:
    """Items found done are not counted here."""


def _copied(copies: list[tuple[Copy, RecordAt]]) -> None:
    """Items a run would copy from another id's record are not pending either."""

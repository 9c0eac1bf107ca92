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
from typing import cast

from ..config.job import JobConfig
from ..decode.item import DecodedItem
from ..engine.vllm_engine import prompt_renderer
from ..prompting.builder import RequestBuilder
from ..prompting.keys import KeyMaker
from ..records import Known, Modality, ObjectStat, WorkItem
from ..sources.chunks import Chunk, chunked
from ..sources.locations import redact
from ..store.guard import guard_of, guard_refusal
from ..store.index import FileFacts, FileStat, OutIndex, RecordAt
from ..store.layout import OutLayout
from .model import resolve_model
from .reuse import Copy

HASH_HERE_BYTES = 64 * 1024**2  # a larger new file is hashed by its decode worker only

Hashed = tuple[str | None, bool]  # (content sha256, a video's soundtrack was decoded)
Records = dict[tuple[str, str], tuple[str, bool, bool]]  # (id, task) → (key, failed, tombstone) of its current record
Usable = dict[str, dict[str, str]]  # task → id → key of its current record, unless failed under --retry-errors
Revalidate = tuple[Hashed, Known]  # the hash a URL had, and the validators to ask with


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
        chunks: Iterable[Chunk],
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
        request. A chunk whose items are all done costs a few index queries and no `WorkItem`."""
        hash_here = reuse is not None
        for chunk in chunks:
            usable = self._usable_keys(chunk)
            known, revalidate = self._known(chunk, usable, hash_here)
            keys = self._keys(chunk, known)
            found, decided = self._done(chunk, known, keys, usable)
            if found:
                skipped(found)
            if len(decided) == len(chunk):  # a no-op rerun's chunk: every item done (or another shard's)
                continue
            # Every record of the rest, failed ones and tombstones too: what a copy supersedes.
            records = self.index.get_many([id for i, id in enumerate(chunk.ids) if i not in decided])
            if hash_here:
                rest = {i: by_task for i, by_task in keys.items() if i not in decided}
                sources = self.index.sources_of(self._unmatched(chunk, rest, records))
            else:
                sources = {}
            for i in range(len(chunk)):
                if i in decided:
                    continue
                item = chunk.item(i)
                copies = self._copies(item, keys[i], records, sources) if i in keys else None
                if copies is not None and reuse is not None:
                    skipped(len(self._tasks_of(item)) - len(copies))
                    reuse(copies)
                elif i in revalidate and self._found_done(item, revalidate[i][0], usable):
                    yield dataclasses.replace(item, known=revalidate[i][1])  # done, unless it changed
                else:
                    if i in known or not self._recorded(chunk, i, usable):
                        new_work(i in known)
                    yield item

    def _usable_keys(self, chunk: Chunk) -> Usable:
        """The keys of the current records a chunk's items may be done by (see `Usable`)."""
        tasks = sorted({*self._job_tasks, *chunk.own_tasks}) if chunk.own_tasks else self._job_tasks
        return self.index.usable_keys(chunk.ids, tasks, retry_errors=self._retry_errors)

    def _known(
        self, chunk: Chunk, usable: Usable, hash_here: bool = False
    ) -> tuple[dict[int, Hashed], dict[int, Revalidate]]:
        """Content hashes known without reading; and for URLs OUT knows that need asking whether
        they changed, what to ask with. An item with no record of its own is looked up too (a
        moved file, a manifest row under a new id), by its path and then by its inode."""
        known: dict[int, Hashed] = {}
        urls: dict[int, str] = {}
        for i in chunk.others:
            item = chunk.item(i)
            if item.error is not None:
                if self._recorded(chunk, i, usable):
                    known[i] = (None, False)
            elif item.data is not None:
                if not self._video_audio(item):
                    known[i] = (hashlib.sha256(item.data).hexdigest(), False)
            elif item.url is not None and self._recorded(chunk, i, usable):
                urls[i] = redact(item.url)
        racy: set[str] = set()
        files = chunk.files if not chunk.others else [f for f in chunk.files if f is not None]
        facts, stats = self.index.unchanged_files(cast(list[str], files), racy)
        if stats:
            self._unknown_files(chunk, stats, usable, facts, racy, hash_here)
        with_audio, video = self._with_audio, Modality.VIDEO
        for i, (path, modality) in enumerate(zip(chunk.files, chunk.modalities, strict=True)):
            f = facts.get(path) if path is not None else None
            if f is None:
                continue
            if not with_audio or modality is not video:
                known[i] = (f.sha256, False)
            elif f.has_audio is not None:
                known[i] = (f.sha256, f.has_audio)
        return known, self._known_urls(chunk, urls, known)

    def _unknown_files(
        self,
        chunk: Chunk,
        stats: dict[str, FileStat],
        usable: Usable,
        facts: dict[str, FileFacts],
        racy: set[str],
        hash_here: bool,
    ) -> None:
        """Facts of the files the stat cache has not under their path (`stats`: the stat of each):
        a move found by inode (for an item with no record of its own), and with `hash_here` the
        racy files and the new files of a size OUT has read, hashed here."""
        unseen = {
            path: stats[path]
            for i, path in enumerate(chunk.files)
            if path in stats and path not in facts and not self._recorded(chunk, i, usable)
        }
        if unseen:
            facts.update(self.index.moved_facts_many(unseen))
        if hash_here:
            maybe = {path: st for path, st in unseen.items() if path not in facts}
            sizes = self.index.known_sizes([st.size for st in maybe.values()]) if maybe else set()
            here = racy | {path for path, st in maybe.items() if st.size in sizes}
            if here:
                facts.update(self._hashed_here(chunk, stats, here))

    def _hashed_here(self, chunk: Chunk, stats: dict[str, FileStat], paths: set[str]) -> dict[str, FileFacts]:
        """Files hashed in this process rather than decoded to know them: new files of a size an
        input OUT read had (maybe copies: copied without a decode worker), and files whose stat
        is too recent to vouch (git's racy case: most are unchanged, and skipped without a
        decode). Not a video whose soundtrack is decoded (that takes the decoder), nor a file over
        HASH_HERE_BYTES; what this cannot read, its decode worker reports."""
        out: dict[str, FileFacts] = {}
        for path, modality in zip(chunk.files, chunk.modalities, strict=True):
            if path is None or path not in paths or path in out:
                continue
            st = stats[path]
            if st.size > HASH_HERE_BYTES or (self._with_audio and modality is Modality.VIDEO):
                continue
            hashed_at = time.time_ns()
            try:
                with open(path, "rb") as fh:
                    sha = hashlib.file_digest(fh, "sha256").hexdigest()
                    if FileStat.of(os.fstat(fh.fileno())) != st:  # changed since the walk
                        continue
            except OSError:
                continue
            facts = FileFacts(sha, None if modality is Modality.VIDEO else False)
            out[path] = facts
            self.index.remember_file(path, st, facts, hashed_at)
        return out

    def _known_urls(self, chunk: Chunk, urls: dict[int, str], known: dict[int, Hashed]) -> dict[int, Revalidate]:
        """A listed object is known when the listing says what OUT saw (no request at all); a URL
        no listing vouches for is known by URL only with --trust-urls, else revalidated."""
        if not urls:
            return {}
        remote = self.index.remote_facts_many(sorted(set(urls.values())))
        revalidate: dict[int, Revalidate] = {}
        for i, url in urls.items():
            item, got = chunk.item(i), remote.get(url)
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

    def _recorded(self, chunk: Chunk, i: int, usable: Usable) -> bool:
        """Every task of item i has a usable record (with whatever key)."""
        id = chunk.ids[i]
        return all(id in usable[t] for t in self._tasks_at(chunk, i))

    def _tasks_at(self, chunk: Chunk, i: int) -> list[str]:
        return self._tasks_of(chunk.item(i)) if chunk.own_tasks else self._job_tasks

    def _tasks_of(self, item: WorkItem) -> list[str]:
        """`config.tasks_of`, without a new list per item (never mutate it)."""
        return [item.task] if item.task else self._job_tasks

    def _video_audio(self, item: WorkItem) -> bool:
        return self._with_audio and item.modality is Modality.VIDEO

    def _keys(self, chunk: Chunk, known: dict[int, Hashed]) -> dict[int, dict[str, str]]:
        """Each task's key of each item whose content hash is known."""
        builtin = not (self.config.prompt or chunk.prompted)  # every item's key needs only its modality
        keyed, modalities = KeyMaker.keyed_digest, chunk.modalities
        tails: dict[tuple[Modality | None, bool, tuple[str, ...]], list[tuple[str, str]]] = {}
        keys: dict[int, dict[str, str]] = {}
        job_tasks, own_tasks = self._job_tasks, chunk.own_tasks
        for i, (sha, has_audio) in known.items():
            tasks = self._tasks_of(chunk.item(i)) if own_tasks else job_tasks
            if sha is None:  # an error item's: its key names its source
                item = chunk.item(i)
                keys[i] = {t: self._key_unread(item, t) for t in tasks}
            elif builtin:  # a million files on a rerun: each task's tail found once per chunk
                memo = (modalities[i], has_audio, tuple(tasks) if chunk.own_tasks else ())
                by_task = tails.get(memo)
                if by_task is None:
                    tail_of = self.requests.builtin_tail
                    by_task = tails[memo] = [(t, tail_of(modalities[i], t, has_audio)) for t in tasks]
                if len(by_task) == 1:
                    keys[i] = {by_task[0][0]: keyed(sha, by_task[0][1])}
                else:
                    keys[i] = {t: keyed(sha, tail) for t, tail in by_task}
            else:
                item = chunk.item(i)
                keys[i] = {t: self.requests.key_for(item, sha, t, has_audio) for t in tasks}
        return keys

    def _key_unread(self, item: WorkItem, task: str) -> str:
        _, rendered, _ = self.requests.prompt(item, task, False)
        return self.requests.key_of(item, None, task, rendered)

    def _unmatched(self, chunk: Chunk, keys: dict[int, dict[str, str]], records: Records) -> list[str]:
        """The keys no record of their own id has: the ones another id's record may hold."""
        return [
            key
            for i, by_task in keys.items()
            for task, key in by_task.items()
            if not (prev := records.get((chunk.ids[i], task))) or prev[0] != key or prev[2]
        ]

    def _done(
        self, chunk: Chunk, known: dict[int, Hashed], keys: dict[int, dict[str, str]], usable: Usable
    ) -> tuple[int, set[int]]:
        """(units found done, the items decided: every task done with its key now, or another
        shard's, neither read nor counted). What is left must be read, or copied."""
        found = 0
        decided: set[int] = set()
        in_shard = self.requests.in_shard_of if self._sharded else None
        ids = chunk.ids
        for i, by_task in keys.items():
            if in_shard is not None and not in_shard(ids[i], known[i][0]):
                decided.add(i)
                continue
            id = ids[i]
            for task, key in by_task.items():
                if usable[task].get(id) != key:
                    break
            else:
                decided.add(i)
                found += len(by_task)
        return found, decided

    def _found_done(self, item: WorkItem, known: Hashed, usable: Usable) -> bool:
        """Whether one item is done with this content hash (not when it is another shard's)."""
        one = Chunk.of_items([item])
        found, _ = self._done(one, {0: known}, self._keys(one, {0: known}), usable)
        return found > 0

    def _copies(
        self, item: WorkItem, keys: dict[str, str], records: Records, sources: dict[str, RecordAt]
    ) -> list[tuple[Copy, RecordAt]] | None:
        """What to copy when each task is done or has its key under another id (and one at
        least is to copy); None when a task needs generating."""
        copies = []
        for task, key in keys.items():
            prev = records.get((item.id, task))
            if prev is not None and prev[0] == key and not prev[2] and not (self.config.retry_errors and prev[1]):
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
        one = Chunk.of_items([item])
        hashed: dict[int, Hashed] = {0: (sha, False)}
        keys = self._keys(one, hashed)
        if self._done(one, hashed, keys, self._usable_keys(one))[1]:
            return True
        records = self.index.get_many([item.id])
        sources = self.index.sources_of(self._unmatched(one, keys, records))
        return self._copies(item, keys[0], records, sources) is not None  # copied, not generated

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
    return count_input(config, chunked(items), fingerprint).pending


def count_input(config: JobConfig, chunks: Iterable[Chunk], fingerprint: str | None = None) -> InputCount:
    """`count_pending` of chunks, and, when they are the whole input, the records whose input is gone."""
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
        for _ in chunks:  # the caller's pass over the input still happens
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
        for item in quick.pending(walk.track(iter(chunks)), _ignored, known_work, _copied):
            pending += needs_work or not quick.done_when_read(item)
            needs_work = False
        missing = walk.missing()
        walk.end()
        return InputCount(pending, missing)


def _ignored(n: int) -> None:
    """Items found done are not counted here."""


def _copied(copies: list[tuple[Copy, RecordAt]]) -> None:
    """Items a run would copy from another id's record are not pending either."""

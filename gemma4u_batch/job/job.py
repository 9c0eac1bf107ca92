"""A job: one run (or one --shard) of a JobConfig into its output folder.

    items → decode workers → units of engine requests (continuous feeding) → part writer

`Job` owns the output folder while it is open: its lock, the settings guard and the index
of current records; each `run` builds a `JobRun` (run.py) for the run's own state. It is
handed an engine and never shuts it down; `run_job` is the short form that opens both for
one run.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.job import JobConfig
from ..console import Counters, Reporter
from ..engine.protocol import Engine
from ..engine.vllm_engine import open_engine
from ..errors import UsageError
from ..records import WorkItem
from ..sources.chunks import Chunk
from ..sources.job_input import JobInput
from ..store.compaction import compact
from ..store.guard import guard_of, guard_refusal
from ..store.index import OutIndex
from ..store.layout import COMPLETE, OutLayout, unreachable
from ..store.lock import RunLock
from ..store.runs import mark_done, model_history, new_run_id, run_manifest, wipe, write_run_manifest
from ..store.writer import cleanup_orphans
from .model import RunModel, read_manifest, resolve_model
from .run import JobRun, output_error

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    done: int = 0
    errors: int = 0
    skipped: int = 0
    reused: int = 0  # of `done`: copied from a record with the same content key, without the engine
    interrupted: bool = False
    already_complete: bool = False
    elapsed_s: float = 0.0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    output: str = ""
    replacements: int = 0  # Ray replicas replaced after they died
    pruned: int = 0  # tombstones committed (--prune)
    missing_inputs: int | None = None  # current records whose input is gone (after a walk of the whole input)


class Job:
    """One job into one OUT: `with Job(config) as job: job.run(engine)`."""

    def __init__(
        self,
        config: JobConfig,
        *,
        items: Iterable[WorkItem] | None = None,
        reporter: Reporter | None = None,
        manifest_extra: dict[str, Any] | None = None,
        stop_file: Path | str | None = None,
        lock_wait: float = 0.0,
        model: RunModel | None = None,
    ) -> None:
        self.layout = OutLayout(config.output)
        # the model (a hub id's commit pinned in OUT), unless a Ray driver decided it for every shard
        self.model = model or resolve_model(config, self.layout)
        config = self.model.keyed(config)
        self.config = config
        self.stop_file = stop_file  # a Ray driver asks its replicas to stop by creating it
        self.input = JobInput(config)
        self.shard = config.shard_index()
        self.reporter = reporter or Reporter("quiet" if config.quiet else "rich")
        self.manifest_extra = dict(manifest_extra or {})
        self.fingerprint = self.model.fingerprint
        self.guard = guard_of(config, self.fingerprint)
        self._given = items
        self._items: Iterator[Chunk] | None = None  # while open
        self._index: OutIndex | None = None  # while open
        self._lock = RunLock(self.layout, self.shard, wait=lock_wait)

    # ------------------------------------------------------------ what a run would do

    def refusal(self) -> str | None:
        """Why a run would be refused (OUT unusable, or made with other settings), or None."""
        if (why := self._unusable()) is not None:
            return why
        if self.config.overwrite:
            return None
        return guard_refusal(self.layout, self.guard, supersede=self.config.on_model_change == "supersede")

    def _unusable(self) -> str | None:
        """Why OUT cannot be opened at all with these settings (checked before its lock), or None."""
        c = self.config
        if isinstance(c.output, Path) and c.output.exists() and not c.output.is_dir():
            return f"output exists and is not a folder: {c.output}"
        if not self.layout.is_local and (why := unreachable(self.layout)) is not None:
            return why
        if c.overwrite and self.shard:
            return "--overwrite cannot be combined with --shard (other shards share OUT)"
        return None

    # ------------------------------------------------------------------ open and close

    def open(self) -> Job:
        """Check the input and OUT, take OUT's lock, clear a dead writer's leftovers and
        open OUT's index (which record of each item is current). Usage errors here cost
        no engine start."""
        self._items = self.input.nonempty(self._given)
        if (why := self._unusable()) is not None:
            raise UsageError(why)
        self._lock.acquire()
        try:
            if self.config.overwrite:
                wipe(self.layout)
            cleanup_orphans(self.layout)
            if (why := self.refusal()) is not None:
                raise UsageError(why)
            self._index = OutIndex(self.layout).open()
        except BaseException:
            self._lock.release()
            raise
        return self

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None
        self._items = None
        self._lock.release()

    def __enter__(self) -> Job:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------- run

    def run(self, engine: Engine) -> JobSummary:
        """Decode, generate and commit every pending item; returns what happened."""
        if self._items is None or self._index is None:
            raise RuntimeError("Job.run needs an open job (use `with Job(config) as job`)")
        started = time.monotonic()
        manifest = {
            **run_manifest(self.config, self.guard, engine.notes()),
            **model_history(read_manifest(self.layout), self.fingerprint, self.model.commit),
            **self.manifest_extra,
        }
        run_id = manifest.setdefault("run_id", new_run_id())  # a Ray driver passes its own
        try:
            write_run_manifest(self.layout, self.shard, manifest)
        except OSError as exc:
            raise output_error(self.config, exc) from exc
        run = JobRun(
            self.config,
            engine,
            self._index,
            self.layout,
            fingerprint=self.fingerprint,
            run_id=run_id,
            reporter=self.reporter,
            stop_file=self.stop_file,
        )
        items = self._with_total(self._items, run.counters)
        self.reporter.start(None)
        try:
            run.process(items, whole_input=self._given is None)
            self.reporter.update(run.counters, force=True)
        finally:
            self.reporter.stop()
        summary = self._finish(run, engine, started, manifest.get("started_at"))
        self._compact(self._index)
        return summary

    def _with_total(self, items: Iterator[Chunk], counters: Counters) -> Iterator[Chunk]:
        """The items, with a total for progress: a given sample's size, else the input's count."""
        if isinstance(self._given, list | tuple):
            counters.total = len(self._given) * len(self.config.task_list())
        elif self._given is None:
            return self.input.with_total(items, counters, early=self.reporter.shows_total)
        return items

    def _finish(self, run: JobRun, engine: Engine, started: float, started_at: float | None) -> JobSummary:
        c = run.counters
        if not run.stopped:
            done = {
                "started_at": started_at,
                "finished_at": time.time(),
                "records_this_run": c.done,
                **c.snapshot(),
                "engine_notes": engine.notes(),
            }
            try:
                mark_done(self.layout, self.shard, done)
            except OSError as exc:
                raise output_error(self.config, exc) from exc
        return JobSummary(
            done=c.done,
            errors=c.errors,
            skipped=c.skipped,
            reused=c.reused,
            interrupted=run.stopped,
            already_complete=c.done == 0 and c.skipped > 0 and not run.stopped and not run.pruned,
            pruned=run.pruned,
            missing_inputs=run.missing_inputs,
            elapsed_s=time.monotonic() - started,
            errors_by_kind=dict(c.errors_by_kind),
            output=str(self.config.output),
        )

    def _compact(self, index: OutIndex) -> None:
        """Few large data files of current records only: after a whole-job run (OUT's lock
        is exclusive), or after the last shard when no other writer holds OUT."""
        if self.shard and not (self.layout.files.exists(COMPLETE) and self._lock.try_exclusive()):
            return
        try:
            compact(self.layout, index)
        except (OSError, sqlite3.Error) as exc:
            log.warning("gemma4u: compaction skipped (%s); every record is committed, run `gemma4u compact`", exc)


def run_job(
    config: JobConfig,
    engine: Engine | None = None,
    *,
    items: Iterable[WorkItem] | None = None,
    reporter: Reporter | None = None,
    manifest_extra: dict[str, Any] | None = None,
    stop_file: Path | str | None = None,
    lock_wait: float = 0.0,
    model: RunModel | None = None,
) -> JobSummary:
    """Run (or resume) one job to completion. OUT is opened first (usage errors cost no
    engine start); a given engine stays its owner's, else one is opened for this run.
    `lock_wait`: how long to wait for a lease on OUT to run out (a Ray shard whose replica
    died: its lease outlives it), instead of OutputLocked at once."""
    job = Job(
        config,
        items=items,
        reporter=reporter,
        manifest_extra=manifest_extra,
        stop_file=stop_file,
        lock_wait=lock_wait,
        model=model,
    )
    with job:
        if engine is not None:
            return job.run(engine)
        with open_engine(job.model.loading(job.config)) as owned:
            return job.run(owned)

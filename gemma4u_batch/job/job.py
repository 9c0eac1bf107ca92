"""A job: one run (or one --shard) of a JobConfig into its output folder.

    items → decode workers → units of engine requests (continuous feeding) → part writer

`Job` owns the output folder while it is open: its lock, the settings guard, the ledger
of current records and the part writer. It is handed an engine and never shuts it down;
`run_job` is the short form that opens both for one run.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..config.job import JobConfig
from ..console import Counters, Reporter
from ..decode.item import DecodedItem
from ..decode.options import decode_options
from ..decode.spill import SpilledAudio
from ..decode.workers import DecodePool, worker_count
from ..engine.protocol import Engine
from ..engine.vllm_engine import open_engine
from ..errors import EngineDied, EngineFailure, OutputError, UsageError
from ..prompting.builder import RequestBuilder, for_engine
from ..prompting.keys import model_fingerprint
from ..prompting.prompts import sent_instruction
from ..prompting.units import EngineRequest, Unit, to_record
from ..records import WorkItem
from ..sources.job_input import JobInput, is_speech_job
from ..store.compaction import compact
from ..store.guard import guard_of, guard_refusal
from ..store.index import OutIndex
from ..store.layout import OutLayout
from ..store.lock import RunLock
from ..store.runs import mark_done, new_run_id, run_manifest, wipe, write_run_manifest
from ..store.schema import COLUMN_DOCS, data_schema_metadata
from ..store.subtitles import CueLimits, write_transcripts
from ..store.writer import PartWriter, cleanup_orphans, created_now
from .quickcheck import QuickCheck
from .signals import StopSignal

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    done: int = 0
    errors: int = 0
    skipped: int = 0
    interrupted: bool = False
    already_complete: bool = False
    elapsed_s: float = 0.0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    output: str = ""
    replacements: int = 0  # Ray replicas replaced after they died


class Job:
    """One job into one OUT: `with Job(config) as job: job.run(engine)`."""

    # Set by run(): the run's engine, request builder, writer, counters and stop flag.
    engine: Engine
    requests: RequestBuilder
    writer: PartWriter
    counters: Counters
    stop: StopSignal

    def __init__(
        self,
        config: JobConfig,
        *,
        items: Iterable[WorkItem] | None = None,
        reporter: Reporter | None = None,
        manifest_extra: dict[str, Any] | None = None,
        stop_file: Path | None = None,
    ) -> None:
        self.config = config
        self.stop_file = stop_file  # a Ray driver asks its replicas to stop by creating it
        self.input = JobInput(config)
        self.layout = OutLayout(config.output)
        self.shard = config.shard_index()
        self.reporter = reporter or Reporter("quiet" if config.quiet else "rich")
        self.manifest_extra = dict(manifest_extra or {})
        self.fingerprint = model_fingerprint(
            config.model, verify_weights=config.verify_weights, revision=config.engine.revision
        )
        self.guard = guard_of(config, self.fingerprint)
        self._given = items
        self._items: Iterator[WorkItem] | None = None
        self._lock = RunLock(self.layout, self.shard)

    # ------------------------------------------------------------ what a run would do

    def refusal(self) -> str | None:
        """Why a run would be refused (OUT unusable, or made with other settings), or None."""
        if (why := self._unusable()) is not None:
            return why
        return None if self.config.overwrite else guard_refusal(self.layout, self.guard)

    def _unusable(self) -> str | None:
        """Why OUT cannot be opened at all with these settings (checked before its lock), or None."""
        c = self.config
        if c.output.exists() and not c.output.is_dir():
            return f"output exists and is not a folder: {c.output}"
        if c.overwrite and self.shard:
            return "--overwrite cannot be combined with --shard (other shards share OUT)"
        return None

    def instruction(self, item: WorkItem, task: str) -> str:
        """The instruction this job sends for an item and task (a row's failing template: as written)."""
        return sent_instruction(self.config, item, task)[0]

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
            self.index = OutIndex(self.layout).open()
        except BaseException:
            self._lock.release()
            raise
        return self

    def close(self) -> None:
        if self._items is not None:
            self.index.close()
        self._lock.release()

    def __enter__(self) -> Job:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------- run

    def run(self, engine: Engine) -> JobSummary:
        """Decode, generate and commit every pending item; returns what happened."""
        if self._items is None:
            raise RuntimeError("Job.run needs an open job (use `with Job(config) as job`)")
        started = time.monotonic()
        manifest = {**run_manifest(self.config, self.guard, engine.notes()), **self.manifest_extra}
        self.run_id = manifest.setdefault("run_id", new_run_id())  # a Ray driver passes its own
        try:
            write_run_manifest(self.layout, self.shard, manifest)
        except OSError as exc:
            raise self._output_error(exc) from exc
        self.engine = engine
        self.requests = RequestBuilder(self.config, engine, self.fingerprint, prompt_cache=self.index)
        self.quick = QuickCheck(self.config, self.index, self.requests)
        self.writer = self._new_writer()
        self.counters = Counters()
        self._pending: deque[DecodedItem] = deque()
        self._queued: deque[EngineRequest] = deque()
        self._deaths = 0
        self._count_total()
        self.reporter.start(None)
        try:
            # The engine starts in the background once an item surely needs it, while the rest is
            # scanned and decoded (a rerun with nothing to do never starts it). Under speech tasks
            # only, an item needs it once its voice activity detection found speech (_admit).
            new_work = (lambda: None) if is_speech_job(self.config) else self.engine.prestart
            self._decode_and_feed(self.quick.pending(self._items, self._skipped, new_work))
            self.reporter.update(self.counters, force=True)
        finally:
            self.reporter.stop()
        summary = self._finish(started)
        self._compact()
        return summary

    def _new_writer(self) -> PartWriter:
        c = self.config
        return PartWriter(
            self.layout,
            formats=("jsonl", "parquet") if c.format == "both" else (c.format,),
            commit_every=c.commit_every,
            commit_seconds=c.commit_seconds,
            on_commit=self._committed,
            parquet_metadata={
                "gemma4u.model": c.model,
                "gemma4u.version": __version__,
                "gemma4u.schema": json.dumps(COLUMN_DOCS),
                **data_schema_metadata(c.json_schema),
            },
        )

    def _skipped(self, n: int) -> None:
        self.counters.skipped += n

    def _committed(self, marker: dict[str, Any], records: list[dict[str, Any]]) -> None:
        """A part is durable: index it. The index is a cache of the markers: if this fails,
        the next open catches up, so the run goes on."""
        try:
            self.index.ingest(marker, records)
            self.index.flush_files()
        except sqlite3.Error as exc:
            log.warning("gemma4u: index update failed (%s); it is caught up from the data next time", exc)

    def _compact(self) -> None:
        """Few large data files of current records only: after a whole-job run (OUT's lock
        is exclusive), or after the last shard when no other writer holds OUT."""
        if self.shard and not (self.layout.complete_marker.exists() and self._lock.try_exclusive()):
            return
        try:
            compact(self.layout, self.index)
        except (OSError, sqlite3.Error) as exc:
            log.warning("gemma4u: compaction skipped (%s); every record is committed, run `gemma4u compact`", exc)

    def _count_total(self) -> None:
        """A total for progress: a given sample's size, else a background count of the input."""
        if isinstance(self._given, list | tuple):
            self.counters.total = len(self._given) * len(self.config.task_list())
        elif self._given is None:
            self.input.count_in_background(self.counters)

    def _decode_and_feed(self, items: Iterator[WorkItem]) -> None:
        c = self.config
        # Images leave the workers as the model's patches when the engine takes them.
        opts = replace(decode_options(c), patches=self.engine.accepts_patches)
        try:
            with (
                StopSignal() as stop,
                DecodePool(
                    items,
                    opts,
                    workers=worker_count(c),
                    prefetch=c.prefetch,
                    timeout=c.decode_timeout,
                    spill_root=self.layout.tmp,
                ) as pool,
            ):
                self.stop = stop
                self._feed(pool)
            self.writer.close()
        except OSError as exc:
            raise self._output_error(exc) from exc

    def _output_error(self, exc: OSError) -> OutputError:
        """OUT became unwritable (full, read-only): one line and exit 74, never a traceback."""
        return OutputError(
            f"cannot write to {self.config.output}: {exc.strerror or exc}; work committed before this point is "
            "safe, free space or fix permissions and rerun the same command to resume"
        )

    def _finish(self, started: float) -> JobSummary:
        c = self.counters
        stopped = self.stop.requested
        if not stopped:
            done = {
                "finished_at": time.time(),
                "records_this_run": c.done,
                **c.snapshot(),
                "engine_notes": self.engine.notes(),
            }
            try:
                mark_done(self.layout, self.shard, done)
            except OSError as exc:
                raise self._output_error(exc) from exc
        return JobSummary(
            done=c.done,
            errors=c.errors,
            skipped=c.skipped,
            interrupted=stopped,
            already_complete=c.done == 0 and c.skipped > 0 and not stopped,
            elapsed_s=time.monotonic() - started,
            errors_by_kind=dict(c.errors_by_kind),
            output=str(self.config.output),
        )

    # ------------------------------------------------------------ the feeding loop

    def _feed(self, pool: DecodePool) -> None:
        """Keep the engine topped up from decoded items (no barrier between batches),
        harvest finished requests, commit on schedule."""
        checked = time.monotonic()
        while not self.stop.requested:
            if self.stop_file is not None and time.monotonic() - checked >= 1.0:
                checked = time.monotonic()
                self.stop.requested = self.stop_file.exists()
            if len(self._pending) < self.config.prefetch:
                idle = not self.engine.has_unfinished() and not self._pending and not self._queued
                self._pending.extend(pool.poll(timeout=0.05 if idle else 0.0))
            self._top_up()
            if self.engine.has_unfinished():
                self._harvest()
            elif pool.done and not self._pending and not self._queued:
                return
            if self.writer.due():
                self.writer.commit()
            self.reporter.update(self.counters)
        pool.stop_feeding()

    def _top_up(self) -> None:
        """Fill the engine's free capacity: queued requests first (retries, requeued
        windows), then the units of newly decoded items."""
        while self.engine.capacity() > 0 and (self._queued or self._pending):
            if not self._queued:
                self._admit(self._pending.popleft())
                continue
            req = self._queued.popleft()
            try:
                rejected = self.engine.add(for_engine(req))
            except EngineDied as exc:
                self._queued.appendleft(req)
                self._engine_died(exc)
                continue
            if rejected is not None:
                unit, idx = req.payload
                if unit.finish_part(idx, None, rejected.error, rejected.error_kind):
                    self._emit(unit)

    def _admit(self, d: DecodedItem) -> None:
        """Each unit of a decoded item is skipped (done with the same key), recorded at
        once (it cannot be sent) or queued for the engine."""
        self.quick.remember(d)
        if not self.requests.in_shard(d):
            if isinstance(d.audio, SpilledAudio):
                d.audio.file.unlink()
            return
        units = self.requests.units(d)
        if isinstance(d.audio, SpilledAudio):  # long audio: its file stays until every unit is finished
            d.audio.file.hold(len(units))
            for unit in units:
                unit.spill = d.audio.file
        d.audio = None  # every part holds its own clip: the whole waveform is not kept while they are answered
        for unit in units:
            prev = self.index.get(d.item.id, unit.task)
            if prev is not None and prev[0] == unit.key and not (self.config.retry_errors and prev[1]):
                self.counters.skipped += 1
                self._release(unit)
                continue
            unit.supersedes = prev[0] if prev is not None else None
            if (why := self.requests.unsendable(unit)) is not None:
                unit.error, unit.error_kind = why
            if d.error is not None or unit.error is not None or unit.no_speech:
                self._emit(unit)
                continue
            self.engine.prestart()  # (speech jobs) the first item with speech starts the engine
            self._queued.extend(self.requests.requests(unit))

    def _harvest(self) -> None:
        try:
            results = self.engine.step()
        except EngineDied as exc:
            self._engine_died(exc)
            return
        for res in results:
            unit, idx = res.request.payload
            if unit.finish_part(idx, res.generation, res.error, res.error_kind):
                again = self.requests.retry(unit)
                if again:
                    self._queued.extendleft(reversed(again))
                else:
                    self._emit(unit)

    def _engine_died(self, exc: EngineDied) -> None:
        """Commit what finished, requeue what was in flight, allow a bounded number of restarts.
        After a stop request (Ctrl-C reaches vLLM's engine process too) a death is part of
        stopping, not a failure."""
        self.writer.commit()
        lost = self.engine.take_inflight()
        if self.stop.requested:
            return
        self._deaths += 1
        if self._deaths > self.config.engine_restarts:
            last = str(exc).splitlines()[0] if str(exc) else "no message"
            raise EngineFailure(
                f"the engine died {self._deaths} times (last: {last}); "
                "finished work is committed, rerun the same command to resume"
            ) from exc
        log.warning("engine died (%s); restarting and requeueing %d requests", exc, len(lost))
        self._queued.extendleft(reversed(lost))

    @staticmethod
    def _release(unit: Unit) -> None:
        """A unit is finished with its media: the last unit of long audio removes its spill file."""
        if unit.spill is not None:
            unit.spill.release()
            unit.spill = None

    def _emit(self, unit: Unit) -> None:
        self._release(unit)
        rec = to_record(unit, self.config.model)
        rec.supersedes = unit.supersedes
        rec.run_id, rec.created_at = self.run_id, created_now()
        self.writer.add(rec)
        self.counters.add(rec.error_kind, rec.num_output_tokens)
        if rec.segments is not None and self.config.subtitles:
            c = self.config
            limits = CueLimits(c.max_cue_seconds, c.max_line_width, c.max_lines)
            write_transcripts(self.layout.transcripts, rec.id, rec.segments, tuple(c.subtitles), limits, rec.language)


def run_job(
    config: JobConfig,
    engine: Engine | None = None,
    *,
    items: Iterable[WorkItem] | None = None,
    reporter: Reporter | None = None,
    manifest_extra: dict[str, Any] | None = None,
    stop_file: Path | None = None,
) -> JobSummary:
    """Run (or resume) one job to completion. OUT is opened first (usage errors cost no
    engine start); a given engine stays its owner's, else one is opened for this run."""
    with Job(config, items=items, reporter=reporter, manifest_extra=manifest_extra, stop_file=stop_file) as job:
        if engine is not None:
            return job.run(engine)
        with open_engine(config) as owned:
            return job.run(owned)

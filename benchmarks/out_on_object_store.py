"""OUT in a bucket: what committing into an object store costs against a local folder, and what
`gemma4u status` costs on a large OUT there.

usage: python -m benchmarks.out_on_object_store WORKDIR [--images 48] [--records 200000]
                                               [--reps 2] [--model DIR]

Everything runs against moto's S3 server (a subprocess on 127.0.0.1, behind this package's
request-counting proxy); nothing leaves the machine.

1. A whole job, the real CLI with the tiny model (float32, 16 tokens): N small images into a
   local folder and into `s3://bench/out-N/`, repetitions interleaved, each into a fresh OUT.
   Wall time ratio s3/local, and the store requests of the s3 run by kind.
2. `gemma4u status` on M records in a bucket: the records are committed by gemma4u's own writer
   (parts of 10,000, then compacted, as a finished job leaves them), then `status --json` runs
   as a CLI process twice: with the index cache of the writer (a rerun on the same machine) and
   with an empty XDG_CACHE_HOME (a new pod: the index is rebuilt from OUT's data files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .remote_inputs import ENV, GEMMA4U, CountingProxy, make_images, s3_client, start_moto


def _run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return time.monotonic() - t0


def part_job(work: Path, proxy: CountingProxy, n: int, reps: int, model: Path) -> dict:
    folder = work / "imgs"
    folder.mkdir(parents=True, exist_ok=True)
    make_images(folder, n)
    settings = ["--model", str(model), "--dtype", "float32", "--max-tokens", "16", "--progress", "quiet"]
    env = {**os.environ, **ENV, "AWS_ENDPOINT_URL": proxy.endpoint, "XDG_CACHE_HOME": str(work / "cache")}
    walls: dict[str, list[float]] = {"local": [], "s3": []}
    requests: dict[str, int] = {}
    for rep in range(reps):
        local = work / f"out-local-{rep}"
        shutil.rmtree(local, ignore_errors=True)
        walls["local"].append(_run([GEMMA4U, "caption", str(folder), "-o", str(local), *settings], env))
        proxy.counts.clear()
        url = f"s3://bench/out-{rep}"
        walls["s3"].append(_run([GEMMA4U, "caption", str(folder), "-o", url, *settings], env))
        requests = dict(proxy.counts)
    med = {k: sorted(v)[len(v) // 2] for k, v in walls.items()}
    return {
        "images": n,
        "local_wall_s": round(med["local"], 2),
        "s3_wall_s": round(med["s3"], 2),
        "ratio_s3_over_local": round(med["s3"] / med["local"], 3),
        "runs": {k: [round(x, 2) for x in v] for k, v in walls.items()},
        "s3_requests_last_run": requests,
    }


def _fill(url: str, m: int) -> None:
    """M records committed into `url` by gemma4u's writer, then compacted (a finished job's OUT)."""
    from gemma4u_batch.records import OutputRecord
    from gemma4u_batch.store.compaction import compact
    from gemma4u_batch.store.index import OutIndex
    from gemma4u_batch.store.layout import OutLayout
    from gemma4u_batch.store.runs import mark_done, write_run_manifest
    from gemma4u_batch.store.writer import PartWriter

    layout = OutLayout(url)
    write_run_manifest(layout, None, {"started_at": time.time(), "model": "bench", "config": {"input": "bench"}})
    writer = PartWriter(layout, commit_every=10_000, commit_seconds=3600)
    for i in range(m):
        writer.add(
            OutputRecord(
                id=f"d{i // 1000:04d}/f{i:07d}.png",
                key=f"{i:064x}",
                source=f"/data/d{i // 1000:04d}/f{i:07d}.png",
                modality="image",
                task="caption",
                prompt=None,
                text="a photo of something",
                finish_reason="length",
                num_prompt_tokens=300,
                num_output_tokens=16,
                error=None,
                error_kind=None,
                model="bench",
                content_sha256=f"{i:064x}",
                decode_seconds=0.01,
            )
        )
    writer.close()
    with OutIndex(layout) as index:
        compact(layout, index)
    mark_done(layout, None, {"finished_at": time.time()})


def part_status(work: Path, proxy: CountingProxy, m: int) -> dict:
    url = f"s3://bench/status-{m}"
    cache = work / "status-cache"
    os.environ["XDG_CACHE_HOME"] = str(cache)
    t0 = time.monotonic()
    _fill(url, m)
    fill_s = time.monotonic() - t0
    out: dict = {"records": m, "fill_s": round(fill_s, 1)}
    for step, xdg in (("cached_index", cache), ("new_pod", work / "empty-cache")):
        shutil.rmtree(work / "empty-cache", ignore_errors=True)
        env = {**os.environ, **ENV, "AWS_ENDPOINT_URL": proxy.endpoint, "XDG_CACHE_HOME": str(xdg)}
        proxy.counts.clear()
        t0 = time.monotonic()
        proc = subprocess.run([GEMMA4U, "status", url, "--json"], env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"status failed: {proc.stderr[-2000:]}")
        st = json.loads(proc.stdout)
        out[step] = {"wall_s": round(wall, 2), "records": st["records"], "requests": dict(proxy.counts)}
    data = [k for k in _keys(proxy, f"status-{m}/") if k.rsplit("/", 1)[-1].startswith("part-")]
    out["data_objects"] = len(data)
    return out


def _keys(proxy: CountingProxy, prefix: str) -> list[str]:
    client = s3_client(proxy.endpoint)
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None, help="a checkpoint folder (default: a tiny one built here)")
    a = ap.parse_args()
    work = a.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    moto, port = start_moto()
    proxy = CountingProxy(port)
    os.environ.update({**ENV, "AWS_ENDPOINT_URL": proxy.endpoint})
    result: dict = {}
    try:
        s3_client(proxy.endpoint).create_bucket(Bucket="bench")
        model = a.model
        if model is None:
            model = work / "tiny-model"
            if not (model / "config.json").exists():
                subprocess.run([GEMMA4U, "model", "tiny", str(model)], check=True, capture_output=True)
        result["job"] = part_job(work, proxy, a.images, a.reps, model)
        print(json.dumps(result["job"]), flush=True)
        result["status"] = part_status(work, proxy, a.records)
        print(json.dumps(result["status"]), flush=True)
    finally:
        moto.kill()
        proxy.server.shutdown()
    (work / "out_on_object_store.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

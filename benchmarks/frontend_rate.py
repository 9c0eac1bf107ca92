"""The front end's ceiling on this machine: items/s of decode + preprocess, by worker count.

usage: python -m benchmarks.frontend_rate INPUT [--workers 1,2,4] [--limit N] [--image-tokens 280]

Two figures per worker count, both without a model:
- decode: the decode pool alone (read, hash, decode, resize, patchify in the workers, hand the
  result to this process), drained as fast as this process can take it;
- job: a whole gemma4u job into a fresh OUT with a no-op engine (gemma4u's FakeEngine, told to
  take patches like the real one), so scanning, the quick check, request building, records and
  commits are included: the rate one front end can feed an engine that is never the bottleneck.

Worker counts above the machine's cores show contention, not capacity: read them as what a host
with that many free cores would do only when the per-item CPU (also printed) stays flat.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from gemma4u_batch.config.job import JobConfig
from gemma4u_batch.console import Reporter
from gemma4u_batch.decode.options import decode_options
from gemma4u_batch.decode.workers import DecodePool
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.job.job import run_job
from gemma4u_batch.sources.job_input import JobInput


def _config(inp: Path, out: Path, workers: int, image_tokens: int) -> JobConfig:
    return JobConfig(input=inp, output=out, model="fake-model", workers=workers, image_tokens=image_tokens)


def decode_rate(inp: Path, workers: int, limit: int | None, image_tokens: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(inp, Path(tmp) / "out", workers, image_tokens)
        items = list(JobInput(config).items())[:limit]
        opts = replace(decode_options(config), patches=True)
        with DecodePool(iter(items), opts, workers=workers, prefetch=config.prefetch) as pool:
            first: list = []
            while not first and not pool.done:  # the clock starts at the first result: not worker start-up
                first = pool.poll(timeout=0.05)
            t0, cpu0, n = time.monotonic(), time.process_time(), 0
            while not pool.done:
                n += len(pool.poll(timeout=0.05))
            wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    return {"items": n, "items_per_s": round(n / wall, 2), "main_cpu_ms_per_item": round(1000 * cpu / max(n, 1), 2)}


def job_rate(inp: Path, workers: int, image_tokens: int) -> dict[str, float]:
    out = Path(tempfile.mkdtemp()) / "out"
    try:
        engine = FakeEngine(max_in_flight=64, steps_to_finish=1)
        engine.accepts_patches = True
        t0, cpu0 = time.monotonic(), time.process_time()
        summary = run_job(_config(inp, out, workers, image_tokens), engine, reporter=Reporter("quiet"))
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    n = summary.done + summary.errors
    return {"items": n, "items_per_s": round(n / wall, 2), "main_cpu_ms_per_item": round(1000 * cpu / max(n, 1), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", type=Path)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--limit", type=int, default=None, help="decode at most N items (decode figure only)")
    # The decode figure counts the items after the first one (whose wait includes worker start-up).
    ap.add_argument("--image-tokens", type=int, default=280)
    a = ap.parse_args()
    for w in (int(x) for x in a.workers.split(",")):
        row = {"workers": w, "decode": decode_rate(a.input, w, a.limit, a.image_tokens)}
        row["job_no_op_engine"] = job_rate(a.input, w, a.image_tokens)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

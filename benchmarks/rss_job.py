"""gemma4u's pipeline on the FakeEngine, for peak memory at 1k vs 10k items.

The real source, decode workers, feed loop, writer and commit protocol run; only the
engine is the in-process FakeEngine (it answers each request after two steps), so the
measured memory is the pipeline's own, not the engine's. The in-flight window is the
real engine's default (2 × max_num_seqs = 64 requests).

usage: python -m benchmarks.rss_job IN OUT RESULT.json [--workers 2] [--in-flight 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def vm_hwm_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: on Linux that carries over the
    parent's RSS at fork time across exec, so a big parent would show as our peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("input", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("result", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--in-flight", type=int, default=64)
    a = ap.parse_args()

    from gemma4u_batch.config.job import JobConfig
    from gemma4u_batch.console import Reporter
    from gemma4u_batch.engine.fake import FakeEngine
    from gemma4u_batch.job.job import run_job

    config = JobConfig(input=a.input, output=a.output, model="fake-model", workers=a.workers, overwrite=True)
    t0 = time.monotonic()
    summary = run_job(
        config,
        FakeEngine(max_in_flight=a.in_flight, steps_to_finish=2),
        reporter=Reporter("quiet"),
    )
    elapsed = time.monotonic() - t0
    a.result.write_text(
        json.dumps(
            {
                "done": summary.done,
                "errors": summary.errors,
                "elapsed_s": elapsed,
                "main_peak_rss_mb": vm_hwm_mb(),
            }
        )
    )
    return 0 if summary.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

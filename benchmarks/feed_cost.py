"""What one item costs the feeding process, code tree against code tree, measured in one run.

usage: python -m benchmarks.feed_cost INPUT --code DIR [--code DIR ...] [--reps 5] [--workers 1]

Each repetition runs a whole gemma4u job over INPUT into a fresh OUT with a no-op engine
(FakeEngine answering every request at its first step), once per code tree, in a fresh process
whose `gemma4u_batch` is imported from that tree; the trees take turns so a busy machine weighs on
all of them alike. The figure is the feeding process's CPU per record (scanning, the quick check,
admitting decoded items, request building, the feeding loop, records and commits; decoding runs
in the worker processes and is not in it), the median over the repetitions, and each tree's
ratio to the first. Give a git worktree of an older commit as the first `--code` to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, tempfile, time
from pathlib import Path
try:
    from gemma4u_batch.engine.fake import FakeEngine
except ImportError:  # trees from before the stage folders
    from gemma4u_batch.engine import FakeEngine
try:
    from gemma4u_batch.job.job import run_job
    from gemma4u_batch.config.job import JobConfig
    from gemma4u_batch.console import Reporter
except ImportError:
    from gemma4u_batch.job import run_job
    from gemma4u_batch.config import JobConfig
    from gemma4u_batch.progress import Reporter
inp, workers = Path(sys.argv[1]), int(sys.argv[2])
out = Path(tempfile.mkdtemp()) / "out"
config = JobConfig(input=inp, output=out, model="fake-model", workers=workers)
engine = FakeEngine(max_in_flight=64, steps_to_finish=1)
cpu0 = time.process_time()
summary = run_job(config, engine, reporter=Reporter("quiet"))
cpu = time.process_time() - cpu0
print(json.dumps({"records": summary.done + summary.errors, "cpu_s": cpu}))
"""


def run_once(code: Path, inp: Path, workers: int) -> float:
    """The feeding process's CPU milliseconds per record for one job under `code`."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    with tempfile.TemporaryDirectory() as cwd:  # nothing of this checkout on the path but `code`
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(inp), str(workers)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return 1000 * row["cpu_s"] / max(row["records"], 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", type=Path)
    ap.add_argument("--code", type=Path, action="append", required=True, help="a checkout to import gemma4u_batch from")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    trees = [c.resolve() for c in a.code]
    runs: dict[Path, list[float]] = {c: [] for c in trees}
    for _ in range(a.reps):
        for code in trees:
            runs[code].append(run_once(code, a.input.resolve(), a.workers))
    base = statistics.median(runs[trees[0]])
    for code in trees:
        med = statistics.median(runs[code])
        row = {"code": str(code), "cpu_ms_per_record": round(med, 3), "ratio": round(med / base, 3)}
        row["runs"] = [round(x, 3) for x in runs[code]]
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

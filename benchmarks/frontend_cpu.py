"""Main-process CPU per item, and time from the last commit to exit, of the real CLI (issue #18).

usage: python -m benchmarks.frontend_cpu [--set phone|small|audio] [--sizes 12,60] [--reps 1]
                                         [--workdir DIR] [--model DIR] [--code DIR]

Runs `gemma4u caption` (audio clips too: one request each) through `benchmarks.timed_cli` on N
items for each N in --sizes, each into a fresh OUT, and reads back this process's own CPU
time (all its threads, not its children: the decode workers and vLLM's engine core are
children) minus the CPU spent starting the engine. The marginal cost per item is the
difference between two sizes divided by the difference in items, so what every run pays
once (imports, tokenizer, engine start, shutdown) cancels out. This figure carries over to
a GPU host (the work is the same Python and torch code); absolute wall times do not.

"steady_ms_per_item" is the same process's CPU between its first request and its last result,
per item, in the larger run: a second estimate that does not rest on a difference. Its parts:
"add_ms_per_item" (the feeding thread's CPU inside engine.add: rendering the request, vLLM's
input processing, sending it to the core: what each item costs), "steps_per_item" and
"step_ms_per_step" (vLLM's output handling runs once per engine step, and how many steps an
item shares depends on how full the batch ran: on the tiny model the engine is fast and
batches are small, so this part varies from run to run), and the rest of the feed loop.

"threads_ms_per_item" splits the marginal figure by thread name (Linux): the feeding thread
(the CLI's main thread), vLLM's output-queue thread, the decode pool's and the input counter's.

"shutdown" is the wall time from the moment the job's complete marker was written (every
record committed) to the CLI process's exit, as the parent sees it.

--code DIR runs the CLI from another checkout (e.g. the code before a change) with the
same inputs and model; the default model is the tiny random checkpoint (meaningless text).
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

from benchmarks.inputs import make_phone_photos, make_small_images
from benchmarks.timeline import Timeline


def make_audio(folder: Path, n: int, seconds: float = 8.0) -> list[Path]:
    """Short 16 kHz WAVs: an amplitude-modulated chirp with noise (distinct per file)."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    t = np.arange(int(16000 * seconds)) / 16000
    for i in range(n):
        p = folder / f"clip_{i:05d}.wav"
        if not p.exists():
            rng = np.random.default_rng(i)
            x = 0.3 * np.sin(2 * np.pi * (180 + 40 * i % 200) * t * (1 + 0.2 * t)) * (0.6 + 0.4 * np.sin(3 * t))
            sf.write(p, (x + 0.01 * rng.standard_normal(t.size)).astype("float32"), 16000)
        paths.append(p)
    return paths


def make_set(kind: str, folder: Path, n: int) -> None:
    {"phone": make_phone_photos, "small": make_small_images, "audio": make_audio}[kind](folder, n)


def run_once(kind: str, items: Path, model: Path, work: Path, code: Path | None) -> dict[str, float]:
    out, tl_path = work / "out", work / "timeline.json"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    command = "caption"  # audio too: one request per clip (no voice activity detection deciding what is sent)
    args = [sys.executable, "-m", "benchmarks.timed_cli", str(tl_path), command, str(items), "-o", str(out)]
    args += ["--model", str(model), "--dtype", "float32", "--max-tokens", "32", "--max-model-len", "4096"]
    args += ["--progress", "quiet", "--workers", "2"]
    root = Path(__file__).resolve().parent.parent
    # The package from `code` (or this checkout), the benchmark scripts from this checkout; run
    # from a folder that holds neither, so neither comes from the current directory.
    shim = work / "pythonpath"
    shutil.rmtree(shim, ignore_errors=True)
    shim.mkdir(parents=True)
    (shim / "gemma4u_batch").symlink_to((code or root).resolve() / "gemma4u_batch")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(root)])}
    proc = subprocess.Popen(args, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    exited = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"gemma4u failed ({proc.returncode}):\n{err[-3000:]}")
    tl = Timeline.load(tl_path)
    assert tl.cpu_total is not None and tl.done_wall is not None
    steady = (tl.cpu_last_result or 0.0) - (tl.cpu_first_add or 0.0)
    items = max(tl.results, 1)
    return {
        "cpu": tl.cpu_total - tl.engine_start_cpu,
        "shutdown": exited - tl.done_wall,
        "steady_ms_per_item": 1000 * steady / max(tl.results - 1, 1),
        # The steady figure's parts: requests in (per item), vLLM's output handling (per engine
        # step; steps per item depend on how full the batch ran), and the rest of the loop.
        "add_ms_per_item": 1000 * tl.add_cpu / items,
        "steps_per_item": tl.steps / items,
        "step_ms_per_step": 1000 * tl.step_cpu / max(tl.steps, 1),
        "package": tl.package,
        "threads": tl.thread_cpu,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="kind", choices=("phone", "small", "audio"), default="phone")
    ap.add_argument("--sizes", default="12,60")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gemma4u-frontend"))
    ap.add_argument("--model", type=Path, default=None, help="default: the tiny checkpoint, built once")
    ap.add_argument("--code", type=Path, default=None, help="run the CLI from this checkout instead")
    a = ap.parse_args()
    sizes = sorted(int(s) for s in a.sizes.split(","))
    model = a.model
    if model is None:
        from gemma4u_batch.verify.tiny_model import build_tiny_checkpoint

        model = a.workdir / "tiny"
        if not (model / "config.json").exists():
            build_tiny_checkpoint(model, seed=0)
    rows = []
    for rep in range(a.reps):
        runs = {}
        for n in sizes:
            items = a.workdir / f"{a.kind}_{n}"
            make_set(a.kind, items, n)
            runs[n] = run_once(a.kind, items, model, a.workdir, a.code)
        lo, hi = sizes[0], sizes[-1]
        per_item_ms = 1000 * (runs[hi]["cpu"] - runs[lo]["cpu"]) / (hi - lo)
        row = {"rep": rep, "set": a.kind, "per_item_cpu_ms": round(per_item_ms, 2)}
        for key in ("steady_ms_per_item", "add_ms_per_item", "steps_per_item", "step_ms_per_step"):
            row[key] = round(runs[hi][key], 2)
        row["package"] = runs[hi]["package"]
        # The marginal figure by thread name (from each run's first request to its exit).
        names = set(runs[hi]["threads"]) | set(runs[lo]["threads"])
        marginal = {
            k: 1000 * (runs[hi]["threads"].get(k, 0.0) - runs[lo]["threads"].get(k, 0.0)) / (hi - lo) for k in names
        }
        row["threads_ms_per_item"] = {
            k: round(v, 2) for k, v in sorted(marginal.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.05
        }
        row |= {f"shutdown_s_{n}": round(r["shutdown"], 2) for n, r in runs.items()}
        row |= {f"cpu_s_{n}": round(r["cpu"], 2) for n, r in runs.items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

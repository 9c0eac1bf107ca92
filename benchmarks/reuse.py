"""Reuse by content (#29): what a rerun costs after part of the input was moved and part copied.

usage: python -m benchmarks.reuse DIR [--images 100] [--moved 40] [--copied 30] [--model FOLDER]

Captions DIR/in (small JPEGs, modified an hour ago) into DIR/out with the real CLI and the tiny
random checkpoint (made in DIR/model unless --model), then moves `--moved` files into a subfolder
and copies `--copied` under new names, and runs the same command again; then once more (a no-op).
Each run is a whole `gemma4u` process: wall time and CPU of it and its children (the engine's
processes and the decode workers, as they are waited for). Prints JSON: the runs, whether each
started the engine (complete.json's engine notes), the records copied, and the ratios. The
per-copy CPU (rerun minus no-op, over the copies) is what carries to a GPU host.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import quiet_env
from benchmarks.inputs import make_small_images

GEMMA4U = str(Path(sys.executable).with_name("gemma4u"))


def timed(cmd: list[str]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=quiet_env())
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def engine_started(out: Path) -> bool:
    notes = json.loads((out / ".gemma4u" / "complete.json").read_text())["engine_notes"]
    return "had not started" not in json.dumps(notes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--moved", type=int, default=40)
    ap.add_argument("--copied", type=int, default=30)
    ap.add_argument("--model", type=Path)
    a = ap.parse_args()
    root: Path = a.dir
    shutil.rmtree(root / "in", ignore_errors=True)
    shutil.rmtree(root / "out", ignore_errors=True)
    model = a.model or root / "model"
    if not (model / "config.json").exists():
        subprocess.run([GEMMA4U, "model", "tiny", str(model)], check=True, capture_output=True)
    inp, out = root / "in", root / "out"
    files = make_small_images(inp, a.images)
    hour_ago = time.time() - 3600
    for f in files:
        os.utime(f, (hour_ago, hour_ago))
    cmd = [GEMMA4U, "caption", str(inp), "-o", str(out), "--model", str(model), "--dtype", "float32"]
    cmd += ["--max-tokens", "16", "--progress", "quiet", "--gpu-memory-utilization", "0.15"]

    first = timed(cmd)
    first["engine_started"] = engine_started(out)
    (inp / "moved").mkdir()
    for f in files[: a.moved]:
        os.rename(f, inp / "moved" / f.name)
    for f in files[a.moved : a.moved + a.copied]:
        shutil.copy(f, f.with_name(f"copy_{f.name}"))
    rerun = timed(cmd)
    rerun["engine_started"] = engine_started(out)
    noop = timed(cmd)
    status = json.loads(subprocess.run([GEMMA4U, "status", str(out), "--json"], capture_output=True, text=True).stdout)
    copies = a.moved + a.copied
    res = {
        "images": a.images,
        "moved": a.moved,
        "copied": a.copied,
        "first_run": first,
        "rerun_after_moves_and_copies": rerun,
        "noop_rerun": noop,
        "records": status["records"],
        "reused_records": status["reused"],
        "rerun_vs_first_wall": round(rerun["wall_s"] / first["wall_s"], 3),
        "rerun_vs_first_cpu": round(rerun["cpu_s"] / first["cpu_s"], 3),
        "cpu_ms_per_copy": round((rerun["cpu_s"] - noop["cpu_s"]) / copies * 1000, 2),
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

"""Nightly reruns at corpus scale: first run, no-op rerun, status, data files (issue #13).

Makes N zero-byte files (as in the issue: every item is an error record, so the engine
never starts and the figures are the pipeline's own), with mtimes in the past so the
quick check may trust them, then runs the real CLI:

1. `gemma4u caption IN -o OUT` (first run: every file read, hashed, recorded);
2. the same command again (no-op: nothing changed);
3. `gemma4u status OUT --json`;
4. the same rerun after touching 1% of the files (they are read again, the rest not).

Reports wall time and the CLI's own CPU (user+sys of the process tree) per step, files
opened under IN (from strace when available: not required), data files under OUT, and
the index's size per record.

usage: python -m benchmarks.rerun N WORKDIR [--model DIR] [--result out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

GEMMA4U = str(Path(sys.executable).with_name("gemma4u"))


def make_files(root: Path, n: int) -> None:
    """n zero-byte .png files, 1,000 per folder, mtime one hour ago."""
    past = time.time() - 3600
    for i in range(n):
        folder = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"f{i:07d}.png"
        path.touch()
        os.utime(path, (past, past))


def timed(args: list[str]) -> dict[str, float]:
    """Wall seconds and CPU seconds (user+sys of the command and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "stdout": proc.stdout}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--result", type=Path, default=None)
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    model = a.model or a.workdir / "tiny"
    if not (model / "config.json").exists():
        subprocess.run([GEMMA4U, "model", "tiny", str(model)], check=True, capture_output=True)
    inp, out = a.workdir / f"in-{a.n}", a.workdir / f"out-{a.n}"
    if not inp.exists():
        make_files(inp, a.n)
    cmd = [
        GEMMA4U,
        "caption",
        str(inp),
        "-o",
        str(out),
        "--model",
        str(model),
        "--progress",
        "quiet",
        "--workers",
        "2",
        "--commit-every",
        "1024",
    ]
    res: dict[str, object] = {"n": a.n}
    res["first_run"] = {k: v for k, v in timed([*cmd, "--overwrite"]).items() if k != "stdout"}
    res["noop_rerun"] = {k: v for k, v in timed(cmd).items() if k != "stdout"}
    st = timed([GEMMA4U, "status", str(out), "--json", "--no-count-pending"])
    res["status"] = {"wall_s": st["wall_s"], "cpu_s": st["cpu_s"], "records": json.loads(st["stdout"])["records"]}
    files = sorted(inp.rglob("*.png"))
    for p in files[::100]:
        p.write_bytes(b"")  # same size, new mtime: read again, same content, no new record
    res["rerun_1pct_touched"] = {k: v for k, v in timed(cmd).items() if k != "stdout"}
    data = [
        p for p in out.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".parquet") and ".gemma4u" not in p.parts
    ]
    res["data_files"] = len(data)
    index = out / ".gemma4u" / "index.sqlite"
    res["index_bytes_per_record"] = round(index.stat().st_size / a.n, 1) if index.exists() else None
    print(json.dumps(res, indent=2))
    if a.result:
        a.result.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

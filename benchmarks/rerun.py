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

With `--busy-core` a spinning process (`python -c "while True: pass"`, not pinned) keeps one
core busy during the no-op reruns and `status` (issue 29's setting); `--noop-only` skips the
first run and the 1% rerun when OUT exists (a 1M OUT takes minutes to make: make it once) and
times the no-op rerun `--repeat` times (medians reported, with peak RSS);
`--breakdown` adds, in this process, the CPU µs per file of each stage of the no-op pass
(the walk, the walk and one `stat` per file, the whole quick check), the index's open and
the start of the CLI (`gemma4u --version` and `--help` of caption: imports). With
`--noop-only --code OLD --code .` the no-op reruns alternate between the checkouts (a git
worktree of an older commit as OLD), reported as medians and ratios to the first: on a shared
machine whose speed drifts from minute to minute, the ratio is what one run can show.

usage: python -m benchmarks.rerun N WORKDIR [--model DIR] [--result out.json]
           [--busy-core] [--noop-only] [--repeat K] [--breakdown] [--code DIR ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def timed(args: list[str], code: Path | None = None) -> dict[str, Any]:
    """Wall seconds, CPU seconds (user+sys of the command and its children) and peak RSS (MB).
    With `code`, the gemma4u command runs from that checkout (PYTHONPATH, from an empty folder)."""
    env, cwd = None, None
    if code is not None:
        env = {**os.environ, "PYTHONPATH": str(code)}
        args = [sys.executable, "-c", "from gemma4u_batch.cli import main; main()", *args[1:]]
        cwd = tempfile.gettempdir()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)  # the process tree's own usage, reaped here
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {stderr[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "stdout": stdout,
    }


@contextlib.contextmanager
def busy_core(on: bool) -> Iterator[None]:
    """Another process keeping one core busy (not pinned: the scheduler places it) while the block runs."""
    if not on:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        spinner.kill()
        spinner.wait()


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in runs[0] if k != "stdout"]
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"runs": [r["wall_s"] for r in runs]}


def compare(cmd: list[str], trees: list[Path], repeat: int, busy: bool) -> list[dict[str, Any]]:
    """The no-op rerun under each code tree, alternating (A B A B …, so a slower spell of a shared
    machine falls on both), after one warm-up run each: medians, and their ratios to the first."""
    runs: dict[Path, list[dict[str, Any]]] = {t: [] for t in trees}
    with busy_core(busy):
        for tree in trees:
            timed(cmd, tree)  # warm-up: the page cache holds the walk and the index for every tree alike
        for _ in range(max(1, repeat)):
            for tree in trees:
                runs[tree].append(timed(cmd, tree))
    rows = [{"code": str(t), **median_of(runs[t])} for t in trees]
    for row in rows:
        row["wall_ratio"] = round(row["wall_s"] / rows[0]["wall_s"], 3)
        row["cpu_ratio"] = round(row["cpu_s"] / rows[0]["cpu_s"], 3)
    return rows


def breakdown(inp: Path, out: Path, model: Path) -> dict[str, Any]:
    """CPU µs per file of each stage of a no-op pass, in this process (cumulative stages)."""
    from gemma4u_batch.config.job import JobConfig
    from gemma4u_batch.engine.vllm_engine import prompt_renderer
    from gemma4u_batch.job.quickcheck import QuickCheck
    from gemma4u_batch.prompting.builder import RequestBuilder
    from gemma4u_batch.prompting.keys import model_fingerprint
    from gemma4u_batch.sources.job_input import JobInput
    from gemma4u_batch.store.index import OutIndex
    from gemma4u_batch.store.layout import OutLayout

    config = JobConfig(input=inp, output=out, model=str(model), workers=2, commit_every=1024)
    res: dict[str, Any] = {}

    def cpu() -> float:
        return time.process_time()

    t = cpu()
    n = sum(len(chunk) for chunk in JobInput(config).chunks())
    res["walk_us"] = round((cpu() - t) / n * 1e6, 2)
    t = cpu()
    for chunk in JobInput(config).chunks():
        for path in chunk.files:
            os.stat(path)  # type: ignore[arg-type]
    res["walk_stat_us"] = round((cpu() - t) / n * 1e6, 2)
    t = cpu()
    index = OutIndex(OutLayout(out)).open()
    res["index_open_s"] = round(cpu() - t, 3)
    fingerprint = model_fingerprint(str(model))
    builder = RequestBuilder(config, prompt_renderer(config), fingerprint, prompt_cache=index)
    quick = QuickCheck(config, index, builder)
    skipped = 0

    def skip(k: int) -> None:
        nonlocal skipped
        skipped += k

    t = cpu()
    pending = sum(1 for _ in quick.pending(JobInput(config).chunks(), skip, lambda surely: None))
    res["quick_check_us"] = round((cpu() - t) / n * 1e6, 2)
    index.close()
    res["files"], res["skipped"], res["pending"] = n, skipped, pending
    for name, args in (("start_version_s", ["--version"]), ("start_help_s", ["caption", "--help"])):
        res[name] = timed([GEMMA4U, *args]).get("cpu_s")
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--result", type=Path, default=None)
    ap.add_argument("--busy-core", action="store_true", help="another process keeps one core busy meanwhile")
    ap.add_argument("--noop-only", action="store_true", help="OUT exists: time the no-op rerun (and status) only")
    ap.add_argument("--repeat", type=int, default=1, help="no-op reruns to time (medians reported)")
    ap.add_argument("--breakdown", action="store_true", help="CPU µs per file of each stage, in this process")
    ap.add_argument(
        "--code",
        type=Path,
        action="append",
        default=[],
        help="with --noop-only: a checkout to run (repeatable); the no-op reruns alternate between them, "
        "and each one's median is given with its ratio to the first's",
    )
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
    res: dict[str, object] = {"n": a.n, "busy_core": a.busy_core}
    noop_only = a.noop_only and (out / ".gemma4u").is_dir()
    if not noop_only:
        res["first_run"] = {k: v for k, v in timed([*cmd, "--overwrite"]).items() if k != "stdout"}
    if noop_only and a.code:
        res["noop_rerun_by_code"] = compare(cmd, [c.resolve() for c in a.code], a.repeat, a.busy_core)
        print(json.dumps(res, indent=2))
        if a.result:
            a.result.write_text(json.dumps(res, indent=2))
        return 0
    with busy_core(a.busy_core):
        res["noop_rerun"] = median_of([timed(cmd) for _ in range(max(1, a.repeat))])
        st = timed([GEMMA4U, "status", str(out), "--json", "--no-count-pending"])
    res["status"] = {"wall_s": st["wall_s"], "cpu_s": st["cpu_s"], "records": json.loads(st["stdout"])["records"]}
    if a.breakdown:
        with busy_core(a.busy_core):
            res["breakdown"] = breakdown(inp, out, model)
    if noop_only:
        print(json.dumps(res, indent=2))
        if a.result:
            a.result.write_text(json.dumps(res, indent=2))
        return 0
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

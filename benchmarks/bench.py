"""gemma4u end-to-end benchmark against the three baselines of issue 5 (see BENCHMARKS.md).

    .venv/bin/python -m benchmarks.bench            # full: ~30-45 min on 2 shared cores
    .venv/bin/python -m benchmarks.bench --quick    # smoke: 4 items, tiny model, no (c), no 10k

It builds everything it needs in --workdir (default /tmp/gemma4u-bench; reused when
present): 4032×3024 phone-photo JPEGs with EXIF and ~320×240 small JPEGs made from
scikit-image's public-domain photos, the tiny checkpoint and a ~75M-parameter one of the
same architecture, and thousands of tiny PNGs for the memory test. Then, for each model
and image set, it runs on the same files with the same settings (greedy, same max_tokens,
280-token image budget, fp32, same max_num_seqs, max_model_len, memory share and eager mode):

    gemma4u  the real CLI (`gemma4u caption ... --progress quiet`), engine timeline recorded
    (a)      the hand-written script: Pillow decode of every file + one LLM.generate call
    (b)      python -m vllm.entrypoints.openai.run_batch on an OpenAI batch JSONL
    (c)      transformers' batched generate (batch 8)

Each system is a fresh process; wall time is measured from outside (end to end, engine
start included) and from the moment its engine/model is ready ("after start"). Repetitions
(--reps) interleave the systems in rotating order, and ratios are taken within a
repetition, so a shared machine's load hits every system alike. Peak RSS of each process
tree is sampled with psutil. Memory at 1k vs 10k items runs gemma4u's pipeline on the
FakeEngine (see benchmarks/rss_job.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.batch_jsonl import read_batch_output, write_batch_jsonl
from benchmarks.inputs import make_phone_photos, make_small_images, make_tiny_pngs
from benchmarks.timeline import Timeline, summarize

PY = sys.executable
SYSTEMS = ("gemma4u", "a", "b", "c")
# gemma4u with experimental engine.py changes switched on through timed_cli's environment. The
# earlier experiments (gemma4u-t1: one front-end torch thread; gemma4u-opt: plus multi_modal_uuids
# and a 0.5 s shutdown grace, rows in BENCHMARKS.md) are gemma4u's own behaviour since issue 18.
VARIANTS: dict[str, dict[str, str]] = {}
SYSTEM_NAMES = {
    "gemma4u": "gemma4u CLI",
    "gemma4u-t1": "gemma4u CLI, front-end torch threads = 1 (proposed change, set by the benchmark)",
    "gemma4u-opt": "gemma4u CLI + proposed changes (threads = 1, mm uuids, 0.5 s shutdown grace)",
    "a": "(a) Pillow + one LLM.generate",
    "b": "(b) vllm run_batch",
    "c": "(c) transformers generate",
}
TARGETS = {  # gemma4u / baseline, on end-to-end wall time (a, c) or items/s (b)
    ("a", "phone"): ("time ratio ≤ 0.8", lambda r: r["time_ratio"] <= 0.8),
    ("a", "small"): ("time ratio ≤ 1.0", lambda r: r["time_ratio"] <= 1.0),
    ("b", None): ("items/s ratio ≥ 2", lambda r: r["speedup"] >= 2.0),
    ("c", None): ("items/s ratio ≥ 1.2", lambda r: r["speedup"] >= 1.2),
}


@dataclass
class Run:
    system: str
    model: str
    set: str
    rep: int
    items: int = 0
    ok: bool = True
    e2e_s: float = 0.0
    after_start_s: float | None = None
    work_s: float | None = None  # engine/model ready → last result: processing only, no start-up, no teardown
    engine_start_s: float | None = None
    output_tokens: int = 0
    prompt_tokens_mean: float | None = None
    peak_tree_rss_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class TreeRss:
    """Peak summed RSS of a process and all its descendants, sampled every `every` s."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self._every = every
        self.peak_bytes = 0
        self.peak_main_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                if p.pid == self._root.pid:
                    self.peak_main_bytes = max(self.peak_main_bytes, rss)
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self._every)


def run_proc(
    cmd: list[str], log: Path, timeout: float = 3600, env: dict[str, str] | None = None
) -> tuple[int, float, float, float, float]:
    """(returncode, start, end, peak tree RSS MB, peak main RSS MB); time.monotonic() stamps."""
    with log.open("w") as fh:
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**common.quiet_env(), **(env or {})}, cwd=REPO
        )
        with TreeRss(proc.pid) as rss:
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        end = time.monotonic()
    return rc, start, end, rss.peak_bytes / 2**20, rss.peak_main_bytes / 2**20


REPO = Path(__file__).resolve().parent.parent


def _tail(log: Path, n: int = 2000) -> str:
    return log.read_text(errors="replace")[-n:]


def run_variant(images: Path, model: Path, out: Path, a: argparse.Namespace, run: Run) -> None:
    run_gemma4u(images, model, out, a, run, env=VARIANTS[run.system])


def run_gemma4u(
    images: Path, model: Path, out: Path, a: argparse.Namespace, run: Run, env: dict[str, str] | None = None
) -> None:
    tl_path = out / "timeline.json"
    dest = out / "out"
    cmd = [
        PY,
        "-m",
        "benchmarks.timed_cli",
        str(tl_path),
        "caption",
        str(images),
        "-o",
        str(dest),
        "--model",
        str(model),
        "--dtype",
        common.DTYPE,
        "--workers",
        str(a.workers),
        "--progress",
        "quiet",
        "--max-tokens",
        str(a.max_tokens),
        "--max-num-seqs",
        str(a.max_num_seqs),
        "--max-model-len",
        str(common.MAX_MODEL_LEN),
        "--image-tokens",
        str(common.IMAGE_TOKENS),
        "--gpu-memory-utilization",
        str(common.GPU_MEMORY_UTILIZATION),
        "--overwrite",
    ]
    rc, start, end, rss, _ = run_proc(cmd, out / "log.txt", env=env)
    run.e2e_s, run.peak_tree_rss_mb = end - start, rss
    if rc != 0 or not tl_path.exists():
        run.ok, run.error = False, f"exit {rc}: {_tail(out / 'log.txt')}"
        return
    tl = Timeline.load(tl_path)
    s = summarize(tl)
    run.engine_start_s = s["engine_start_s"]
    if tl.engine_start_end is not None:
        run.after_start_s = end - tl.engine_start_end
    recs = [json.loads(line) for p in sorted(dest.glob("part-*.jsonl")) for line in p.read_text().splitlines()]
    run.items = sum(1 for r in recs if r.get("error") is None)
    run.output_tokens = sum(r.get("num_output_tokens") or 0 for r in recs)
    pts = [r["num_prompt_tokens"] for r in recs if r.get("num_prompt_tokens")]
    run.prompt_tokens_mean = statistics.mean(pts) if pts else None
    run.extra = gemma4u_extra(s)
    errs = [r for r in recs if r.get("error") is not None]
    if errs:
        run.ok, run.error = False, f"{len(errs)} error records, first: {errs[0].get('error')}"


EXTRA_KEYS = (
    "idle_share",
    "underfilled_share",
    "work_window_s",
    "feeding_window_s",
    "idle_while_feeding_share",
    "underfilled_while_feeding_share",
    "add_seconds",
    "step_seconds",
)


def gemma4u_extra(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in EXTRA_KEYS}


def run_a(images: Path, model: Path, out: Path, a: argparse.Namespace, run: Run) -> None:
    timing = out / "timing.json"
    cmd = [
        PY,
        "-m",
        "benchmarks.baseline_llm",
        str(images),
        str(out / "out.jsonl"),
        str(timing),
        "--model",
        str(model),
        "--max-tokens",
        str(a.max_tokens),
        "--max-num-seqs",
        str(a.max_num_seqs),
    ]
    _run_script(cmd, out, timing, run)


def run_c(images: Path, model: Path, out: Path, a: argparse.Namespace, run: Run) -> None:
    timing = out / "timing.json"
    cmd = [
        PY,
        "-m",
        "benchmarks.baseline_hf",
        str(images),
        str(out / "out.jsonl"),
        str(timing),
        "--model",
        str(model),
        "--max-tokens",
        str(a.max_tokens),
        "--batch-size",
        str(a.hf_batch),
    ]
    _run_script(cmd, out, timing, run)


def _run_script(cmd: list[str], out: Path, timing: Path, run: Run) -> None:
    rc, start, end, rss, _ = run_proc(cmd, out / "log.txt")
    run.e2e_s, run.peak_tree_rss_mb = end - start, rss
    if rc != 0 or not timing.exists():
        run.ok, run.error = False, f"exit {rc}: {_tail(out / 'log.txt')}"
        return
    t = json.loads(timing.read_text())
    run.items, run.output_tokens = t["items"], t["output_tokens"]
    run.prompt_tokens_mean = t["prompt_tokens"] / max(1, t["items"])
    run.engine_start_s = t["engine_start_s"]
    run.after_start_s = end - t["ready_at"]
    run.extra = {k: v for k, v in t.items() if k.endswith("_s")}


def run_b(images: Path, model: Path, out: Path, a: argparse.Namespace, run: Run) -> None:
    batch = write_batch_jsonl(
        common.list_images(images), out / "batch.jsonl", str(model), a.max_tokens, common.instruction()
    )
    stamp = out / "stamp.json"
    result = out / "out.jsonl"
    cmd = [
        PY,
        "-m",
        "benchmarks.timed_run_batch",
        str(stamp),
        "-i",
        str(batch),
        "-o",
        str(result),
        "--model",
        str(model),
        "--dtype",
        common.DTYPE,
        "--max-model-len",
        str(common.MAX_MODEL_LEN),
        "--max-num-seqs",
        str(a.max_num_seqs),
        "--gpu-memory-utilization",
        str(common.GPU_MEMORY_UTILIZATION),
        "--enforce-eager",
        "--limit-mm-per-prompt",
        json.dumps({"image": 1}),
        "--mm-processor-kwargs",
        json.dumps({"max_soft_tokens": common.IMAGE_TOKENS}),
        "--allowed-local-media-path",
        str(images.resolve()),
        "--seed",
        "0",
    ]
    rc, start, end, rss, _ = run_proc(cmd, out / "log.txt")
    run.e2e_s, run.peak_tree_rss_mb = end - start, rss
    if rc != 0 or not result.exists() or not stamp.exists():
        run.ok, run.error = False, f"exit {rc}: {_tail(out / 'log.txt')}"
        return
    st = json.loads(stamp.read_text())
    run.after_start_s = end - st["engine_ready"]
    rows = read_batch_output(result)
    good = [r for r in rows if not r["error"] and r["text"] is not None]
    run.items = len(good)
    run.output_tokens = sum(r["num_output_tokens"] or 0 for r in good)
    run.prompt_tokens_mean = statistics.mean(r["num_prompt_tokens"] for r in good) if good else None
    if len(good) != len(rows):
        bad = next(r for r in rows if r not in good)
        run.ok, run.error = False, f"{len(rows) - len(good)} failed requests, first: {bad['error']}"


def gemma4u_texts(out: Path) -> dict[str, str]:
    return {
        r["id"]: r["text"]
        for p in sorted((out / "out").glob("part-*.jsonl"))
        for r in map(json.loads, p.read_text().splitlines())
    }


def same_text_share(work: Path, runs: list[Run]) -> dict[str, float]:
    """For each experiment run: share of items whose text equals gemma4u's in the same
    repetition (the proposed changes must not change any output)."""
    out = {}
    for r in runs:
        if r.system not in VARIANTS:
            continue
        base = gemma4u_texts(work / "runs" / f"{r.model}_{r.set}_gemma4u_{r.rep}")
        mine = gemma4u_texts(work / "runs" / f"{r.model}_{r.set}_{r.system}_{r.rep}")
        if base and mine:
            same = sum(1 for k, v in mine.items() if base.get(k) == v)
            out[f"{r.model}/{r.set}/{r.system}/rep{r.rep}"] = same / len(mine)
    return out


def work_seconds(system: str, out: Path) -> float | None:
    """Engine/model ready → last result, from the files a run leaves in `out`."""
    try:
        if system.startswith("gemma4u"):
            tl = Timeline.load(out / "timeline.json")
            return tl.events[-1][0] - tl.engine_start_end if tl.events and tl.engine_start_end else None
        if system == "a":
            t = json.loads((out / "timing.json").read_text())
            return t["decode_s"] + t["generate_s"]
        if system == "c":
            return json.loads((out / "timing.json").read_text())["after_start_s"]
        if system == "b":
            st = json.loads((out / "stamp.json").read_text())
            return st["done"] - st["engine_ready"]
    except (OSError, KeyError, ValueError):
        return None
    return None


RUNNERS = {"gemma4u": run_gemma4u, "a": run_a, "b": run_b, "c": run_c, **dict.fromkeys(VARIANTS, run_variant)}


def build_model(workdir: Path, preset: str) -> tuple[Path, int]:
    from gemma4u_batch.verify.tiny_model import build_tiny_checkpoint, spec_preset

    out = workdir / "models" / preset
    if not (out / "README.md").exists():
        build_tiny_checkpoint(out, seed=0, spec=spec_preset(preset))
    return out, count_parameters(out)


def count_parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():  # noqa: SIM118 (safetensors handle, not a dict)
                size = 1
                for d in fh.get_slice(k).get_shape():
                    size *= d
                n += size
    return n


def run_rss(workdir: Path, counts: list[int], workers: int) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for n in counts:
        folder = workdir / "inputs" / f"pngs_{n}"
        make_tiny_pngs(folder, n)
        d = workdir / "runs" / f"rss_{n}"
        d.mkdir(parents=True, exist_ok=True)
        res = d / "result.json"
        cmd = [PY, "-m", "benchmarks.rss_job", str(folder), str(d / "out"), str(res), "--workers", str(workers)]
        rc, start, end, tree, main = run_proc(cmd, d / "log.txt")
        r: dict[str, Any] = {
            "ok": rc == 0 and res.exists(),
            "wall_s": end - start,
            "peak_tree_rss_mb": tree,
            "peak_main_rss_sampled_mb": main,
        }
        if res.exists():
            r.update(json.loads(res.read_text()))
        else:
            r["error"] = _tail(d / "log.txt")
        out[n] = r
        print(
            f"  rss {n:>6} items: main peak {r.get('main_peak_rss_mb', 0):.0f} MB, tree peak {tree:.0f} MB, "
            f"{r['wall_s']:.0f} s",
            flush=True,
        )
    return out


def pair_ratios(
    runs: list[Run], system: str = "gemma4u", bases: tuple[str, ...] = ("a", "b", "c")
) -> list[dict[str, Any]]:
    """`system` vs each baseline, per (model, set), from runs of the same repetition."""
    rows = []
    keys = sorted({(r.model, r.set) for r in runs})
    for model, set_ in keys:
        mine = {r.rep: r for r in runs if r.system == system and r.model == model and r.set == set_ and r.ok}
        for base in bases:
            theirs = {r.rep: r for r in runs if r.system == base and r.model == model and r.set == set_ and r.ok}
            reps = sorted(set(mine) & set(theirs))
            if not reps:
                continue
            tr = [mine[k].e2e_s / theirs[k].e2e_s for k in reps]
            sp = [(mine[k].items / mine[k].e2e_s) / (theirs[k].items / theirs[k].e2e_s) for k in reps]
            tra = [m / t for k in reps if (m := mine[k].after_start_s) and (t := theirs[k].after_start_s)]
            twr = [m / t for k in reps if (m := mine[k].work_s) and (t := theirs[k].work_s)]
            row = {
                "system": system,
                "model": model,
                "set": set_,
                "baseline": base,
                "reps": len(reps),
                "gemma4u_e2e_s": statistics.median(mine[k].e2e_s for k in reps),
                "baseline_e2e_s": statistics.median(theirs[k].e2e_s for k in reps),
                "gemma4u_after_start_s": statistics.median(mine[k].after_start_s or 0 for k in reps),
                "baseline_after_start_s": statistics.median(theirs[k].after_start_s or 0 for k in reps),
                "time_ratio": statistics.median(tr),
                "speedup": statistics.median(sp),
                "after_start_ratio": statistics.median(tra) if tra else None,
                "gemma4u_work_s": statistics.median(mine[k].work_s or 0 for k in reps),
                "baseline_work_s": statistics.median(theirs[k].work_s or 0 for k in reps),
                "work_ratio": statistics.median(twr) if twr else None,
            }
            for (b, s), (label, check) in TARGETS.items():
                if system == "gemma4u" and b == base and s in (None, set_):
                    row["target"], row["met"] = label, bool(check(row))
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], runs: list[Run], rss: dict[int, dict[str, Any]], meta: dict) -> str:
    lines = [
        "| system | model | set | vs baseline | system e2e s | baseline e2e s | time ratio | items/s ratio | "
        "after-start s (sys / base) | after-start ratio | work s (sys / base) | work time ratio | "
        "target | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ast = r["after_start_ratio"]
        wr = r.get("work_ratio")
        lines.append(
            f"| {r['system']} | {r['model']} | {r['set']} | {SYSTEM_NAMES[r['baseline']]} | {r['gemma4u_e2e_s']:.1f} | "
            f"{r['baseline_e2e_s']:.1f} | {r['time_ratio']:.2f} | {r['speedup']:.2f} | "
            f"{r['gemma4u_after_start_s']:.1f} / {r['baseline_after_start_s']:.1f} | "
            f"{'-' if ast is None else f'{ast:.2f}'} | "
            f"{r.get('gemma4u_work_s', 0):.1f} / {r.get('baseline_work_s', 0):.1f} | "
            f"{'-' if wr is None else f'{wr:.2f}'} | {r.get('target', '')} | "
            f"{'' if 'met' not in r else ('yes' if r['met'] else 'no')} |"
        )
    lines += [
        "",
        "| model | set | system | rep | items | e2e s | engine start s | after start s | work s "
        "| items/s e2e | out tok | prompt tok/item | peak tree RSS MB | idle share | under-filled share "
        "| idle while feeding | under-filled while feeding | add s | step s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        x = run.extra
        fmt = lambda v, f="{:.1f}": "-" if v is None else f.format(v)  # noqa: E731
        lines.append(
            f"| {run.model} | {run.set} | {run.system} | {run.rep} | {run.items} | {run.e2e_s:.1f} | "
            f"{fmt(run.engine_start_s)} | {fmt(run.after_start_s)} | {fmt(run.work_s)} | "
            f"{run.items / run.e2e_s if run.e2e_s else 0:.3f} | {run.output_tokens} | "
            f"{fmt(run.prompt_tokens_mean)} | {run.peak_tree_rss_mb:.0f} | {fmt(x.get('idle_share'), '{:.3f}')} | "
            f"{fmt(x.get('underfilled_share'), '{:.3f}')} | {fmt(x.get('idle_while_feeding_share'), '{:.3f}')} | "
            f"{fmt(x.get('underfilled_while_feeding_share'), '{:.3f}')} | {fmt(x.get('add_seconds'))} | "
            f"{fmt(x.get('step_seconds'))} |" + ("" if run.ok else f" FAILED: {(run.error or '')[:200]!r}")
        )
    if rss:
        lines += [
            "",
            "| items (FakeEngine) | main process peak RSS MB (VmHWM) | process tree peak MB (sampled) | wall s |",
            "|---|---|---|---|",
        ]
        for n, r in sorted(rss.items()):
            lines.append(
                f"| {n} | {r.get('main_peak_rss_mb', 0):.1f} | {r['peak_tree_rss_mb']:.1f} | {r['wall_s']:.1f} |"
            )
        ns = sorted(rss)
        if len(ns) >= 2 and all(rss[n].get("main_peak_rss_mb") for n in ns):
            lo, hi = rss[ns[0]], rss[ns[-1]]
            g_main = hi["main_peak_rss_mb"] / lo["main_peak_rss_mb"] - 1
            g_tree = hi["peak_tree_rss_mb"] / lo["peak_tree_rss_mb"] - 1
            lines.append(
                f"\nRSS growth {ns[0]} → {ns[-1]} items: main process {g_main:+.1%}, "
                f"process tree {g_tree:+.1%} "
                f"(target < +10%: {'met' if max(g_main, g_tree) < 0.10 else 'missed'})"
            )
    if meta.get("same_text_as_gemma4u"):
        lines += [
            "",
            "Experiments vs gemma4u, share of items with identical text: "
            + ", ".join(f"{k} {v:.0%}" for k, v in meta["same_text_as_gemma4u"].items()),
        ]
    lines += ["", "```", json.dumps(meta, indent=1), "```"]
    return "\n".join(lines)


def load_runs(results: Path) -> tuple[list[Run], dict[int, dict[str, Any]], dict[str, Any]]:
    """Runs of an earlier results.json, with work_s re-derived from their run folders."""
    old = json.loads(results.read_text())
    runs = [Run(**r) for r in old["runs"]]
    for r in runs:
        out = results.parent / "runs" / f"{r.model}_{r.set}_{r.system}_{r.rep}"
        if r.work_s is None:
            r.work_s = work_seconds(r.system, out)
        if r.system.startswith("gemma4u") and (out / "timeline.json").exists():
            r.extra = gemma4u_extra(summarize(Timeline.load(out / "timeline.json")))
    return runs, {int(k): v for k, v in old.get("rss", {}).items()}, old.get("meta", {})


def report_only(files: list[Path], work: Path) -> int:
    runs: list[Run] = []
    rss: dict[int, dict[str, Any]] = {}
    metas = []
    for f in files:
        r, m, meta = load_runs(f)
        runs += r
        rss = rss or m
        metas.append(meta)
    rows = pair_ratios(runs) + [row for v in VARIANTS for row in pair_ratios(runs, v, ("gemma4u", "a", "b", "c"))]
    meta = {
        "merged_from": [str(f) for f in files],
        "runs": metas,
        "same_text_as_gemma4u": same_text_share(files[0].parent, runs),
    }
    md = markdown(rows, runs, rss, meta)
    (work / "report.md").write_text(md + "\n")
    (work / "report.json").write_text(
        json.dumps({"ratios": rows, "runs": [r.__dict__ for r in runs], "rss": rss}, indent=1)
    )
    print(md)
    return 0


def machine_meta(args: argparse.Namespace, params: dict[str, int]) -> dict[str, Any]:
    from gemma4u_batch.store.runs import package_versions

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "command": " ".join([Path(PY).name, "-m", "benchmarks.bench", *sys.argv[1:]]),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "loadavg_at_end": load,
        "versions": package_versions(),
        "model_parameters": params,
        "settings": {
            "max_tokens": args.max_tokens,
            "max_num_seqs": args.max_num_seqs,
            "image_tokens": common.IMAGE_TOKENS,
            "dtype": common.DTYPE,
            "max_model_len": common.MAX_MODEL_LEN,
            "workers": args.workers,
            "hf_batch": args.hf_batch,
            "gpu_memory_utilization": common.GPU_MEMORY_UTILIZATION,
            "enforce_eager": common.ENFORCE_EAGER,
            "phone": args.phone,
            "small": args.small,
            "reps": args.reps,
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 items per set, tiny model, no (c), no 10k")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gemma4u-bench"))
    ap.add_argument("--phone", type=int, default=48, help="phone photos (4032×3024 JPEG)")
    ap.add_argument("--small", type=int, default=48, help="small images (320×240 JPEG)")
    ap.add_argument("--models", default="tiny,75m")
    ap.add_argument("--sets", default="phone,small")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--reps", type=int, default=1, help="interleaved repetitions (rotating system order)")
    ap.add_argument("--rep-start", type=int, default=0, help="number of the first repetition (sets its system order)")
    ap.add_argument(
        "--merge",
        type=Path,
        action="append",
        default=[],
        help="results.json of an earlier run on the same inputs: its runs join the tables",
    )
    ap.add_argument(
        "--report",
        type=Path,
        action="append",
        default=[],
        help="only rebuild the tables from these results.json files (no runs)",
    )
    ap.add_argument("--variant-models", default="tiny", help="models on which the gemma4u-* experiments run")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="gemma4u decode workers")
    ap.add_argument("--hf-batch", type=int, default=8)
    ap.add_argument("--rss", default="1000,10000", help="item counts for the memory test ('' to skip)")
    a = ap.parse_args()
    if a.quick:
        a.phone, a.small, a.models, a.reps = 4, 4, "tiny", 1
        a.systems = ",".join(s for s in a.systems.split(",") if s != "c" and s not in VARIANTS)
        a.rss = "200,1000"
    work = a.workdir.resolve()
    (work / "runs").mkdir(parents=True, exist_ok=True)
    if a.report:
        return report_only(a.report, work)

    print(f"building inputs in {work}/inputs ...", flush=True)
    sets = {}
    for s in a.sets.split(","):
        if s == "phone":
            make_phone_photos(work / "inputs" / f"phone_{a.phone}", a.phone)
            sets[s] = work / "inputs" / f"phone_{a.phone}"
        elif s == "small":
            make_small_images(work / "inputs" / f"small_{a.small}", a.small)
            sets[s] = work / "inputs" / f"small_{a.small}"
    models, params = {}, {}
    for m in a.models.split(","):
        models[m], params[m] = build_model(work, m)
        print(f"model {m}: {params[m] / 1e6:.2f}M parameters at {models[m]}", flush=True)

    systems = [s for s in SYSTEMS if s in a.systems.split(",")]
    runs: list[Run] = []
    for rep in range(a.rep_start, a.rep_start + a.reps):
        shift = rep % len(systems) if systems else 0
        order = systems[shift:] + systems[:shift]
        for m, model_dir in models.items():
            for s, images in sets.items():
                for system in order:
                    if system in VARIANTS and m not in a.variant_models.split(","):
                        continue
                    run = Run(system=system, model=m, set=s, rep=rep)
                    out = work / "runs" / f"{m}_{s}_{system}_{rep}"
                    out.mkdir(parents=True, exist_ok=True)
                    RUNNERS[system](images, model_dir, out, a, run)
                    run.work_s = work_seconds(system, out)
                    runs.append(run)
                    status = "ok" if run.ok else f"FAILED ({(run.error or '')[-300:]})"
                    print(
                        f"  rep {rep} {m:>4} {s:>5} {system:>7}: e2e {run.e2e_s:6.1f} s, after start "
                        f"{run.after_start_s or 0:6.1f} s, {run.items} items, {status}",
                        flush=True,
                    )
                    (work / "runs.json").write_text(json.dumps([r.__dict__ for r in runs], indent=1))

    rss = run_rss(work, [int(n) for n in a.rss.split(",") if n], a.workers) if a.rss else {}
    for earlier in a.merge:
        old_runs, old_rss, _ = load_runs(earlier)
        runs = old_runs + runs
        rss = rss or old_rss
    rows = pair_ratios(runs) + [row for v in VARIANTS for row in pair_ratios(runs, v, ("gemma4u", "a", "b", "c"))]
    meta = machine_meta(a, params)
    meta["same_text_as_gemma4u"] = same_text_share(work, runs)
    md = markdown(rows, runs, rss, meta)
    (work / "results.json").write_text(
        json.dumps({"ratios": rows, "runs": [r.__dict__ for r in runs], "rss": rss, "meta": meta}, indent=1)
    )
    (work / "results.md").write_text(md + "\n")
    print(md)
    print(f"\nresults: {work}/results.md and results.json", flush=True)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

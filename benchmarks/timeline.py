"""Engine timeline: when requests went in and came out, and what share of the time the
engine sat idle while work remained. Pure Python (tested in tests/test_bench_smoke.py)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Timeline:
    """Samples of (time, requests in flight) taken right after every change."""

    engine_start_begin: float | None = None
    engine_start_end: float | None = None
    events: list[tuple[float, int]] = field(default_factory=list)
    add_seconds: float = 0.0  # main-process time inside engine.add (vLLM's front end: HF processor, hashing)
    step_seconds: float = 0.0  # main-process time inside engine.step (waiting for the engine core)
    adds: int = 0
    results: int = 0
    max_num_seqs: int | None = None
    engine_start_cpu: float = 0.0  # this process's CPU seconds inside the engine start
    cpu_total: float | None = None  # this process's CPU seconds (all its threads, no children) at exit
    done_wall: float | None = None  # time.time() when the job's complete marker was written
    package: str | None = None  # where the gemma4u_batch that ran was imported from
    cpu_first_add: float | None = None  # this process's CPU seconds when the first request went in
    cpu_last_result: float | None = None  # ... and when the last result came out (steady state between)
    add_cpu: float = 0.0  # the feeding thread's CPU seconds inside engine.add (per item: what scales)
    step_cpu: float = 0.0  # ... inside engine.step (vLLM's output processing, per engine step)
    steps: int = 0  # engine.step calls: one per engine iteration that had output
    # CPU seconds per thread name from the first request to exit (Linux: /proc/self/task), to see
    # which of this process's threads the steady figure goes to
    thread_cpu: dict[str, float] = field(default_factory=dict)

    def record(self, inflight: int, now: float | None = None) -> None:
        self.events.append((time.monotonic() if now is None else now, inflight))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Timeline:
        raw = json.loads(path.read_text())
        raw["events"] = [tuple(e) for e in raw["events"]]
        return cls(**raw)


def thread_cpu_seconds() -> dict[str, float]:
    """This process's live threads' CPU seconds by name (Python's thread name where it has one,
    else the OS's; threads of one name summed); {} off Linux."""
    import os
    import threading

    python_names = {t.native_id: t.name for t in threading.enumerate()}

    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[str, float] = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue  # the thread ended
        name = python_names.get(int(tid)) or stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return out


def idle_share(events: list[tuple[float, int]], start: float, end: float, below: int = 1) -> float:
    """Share of [start, end] during which fewer than `below` requests were in flight
    (below=1: the engine had nothing to do). `events` are (time, in-flight count after a
    change), sorted by time; the count holds until the next event. Before the first event
    the engine is taken as empty."""
    if end <= start:
        return 0.0
    idle = 0.0
    count = 0
    t_prev = start
    for t, n in events:
        if t <= start:
            count = n
            continue
        if t >= end:
            break
        if count < below:
            idle += t - t_prev
        t_prev, count = t, n
    if count < below:
        idle += end - t_prev
    return idle / (end - start)


def work_window(events: list[tuple[float, int]]) -> tuple[float, float] | None:
    """(first add, last result): from the engine's first request to its last answer."""
    if not events:
        return None
    first = next((t for t, n in events if n > 0), None)
    if first is None:
        return None
    return first, events[-1][0]


def last_add(events: list[tuple[float, int]]) -> float | None:
    """Time of the last submission: the last event whose count rose (an add raises the
    count by one; a harvest only lowers it). After it, the input is exhausted and the
    engine only drains."""
    prev = 0
    found = None
    for t, n in events:
        if n > prev:
            found = t
        prev = n
    return found


def summarize(tl: Timeline) -> dict[str, Any]:
    win = work_window(tl.events)
    out: dict[str, Any] = {
        "engine_start_s": (tl.engine_start_end - tl.engine_start_begin)
        if tl.engine_start_begin is not None and tl.engine_start_end is not None
        else None,
        "adds": tl.adds,
        "results": tl.results,
        "add_seconds": round(tl.add_seconds, 3),
        "step_seconds": round(tl.step_seconds, 3),
    }
    if win is not None:
        start, end = win
        out["work_window_s"] = end - start
        out["idle_share"] = idle_share(tl.events, start, end)
        if tl.max_num_seqs:
            out["underfilled_share"] = idle_share(tl.events, start, end, below=tl.max_num_seqs)
        fed = last_add(tl.events)
        if fed is not None and fed > start:
            # While input remained (first add → last add): the drain at the end is not starvation.
            out["feeding_window_s"] = fed - start
            out["idle_while_feeding_share"] = idle_share(tl.events, start, fed)
            if tl.max_num_seqs:
                out["underfilled_while_feeding_share"] = idle_share(tl.events, start, fed, below=tl.max_num_seqs)
    return out

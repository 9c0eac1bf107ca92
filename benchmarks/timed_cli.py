"""The real `gemma4u` CLI, with the engine's timeline recorded on the side.

usage: python -m benchmarks.timed_cli TIMELINE.json caption IN -o OUT --model ... (gemma4u's own args)

With GEMMA4U_BENCH_PROFILE=FILE it also runs cProfile in this (the front-end) process from
the moment the engine is up to the end, and writes the stats to FILE. Its clock is the feeding
thread's own CPU time (time.thread_time), not the wall: on a machine where the decode workers
and the engine share the cores, wall-clock samples mostly measure waiting for a core.

It wraps VllmEngine's start, add and step (in this process only; the package is not
changed) to record when the engine started and how many requests were in flight over
time, then runs gemma4u's console entry point exactly as the `gemma4u` script does.
"""

from __future__ import annotations

import atexit
import cProfile
import functools
import os
import sys
import time
from pathlib import Path

from benchmarks.timeline import Timeline, thread_cpu_seconds


def instrument(tl: Timeline, profiler: cProfile.Profile | None = None) -> None:
    from gemma4u_batch.engine.vllm_engine import VllmEngine

    # gemma4u before issue 18 (benchmarked with frontend_cpu --code) starts the engine in _start_engine.
    new_code = hasattr(VllmEngine, "_launch")
    launch = VllmEngine._launch if new_code else VllmEngine._start_engine
    add = VllmEngine.add
    step = VllmEngine.step
    import gemma4u_batch.job.job as job_module

    mark_done = job_module.mark_done

    @functools.wraps(mark_done)
    def _mark_done(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = mark_done(*args, **kwargs)
        tl.done_wall = time.time()  # every record and the complete marker are committed
        return result

    job_module.mark_done = _mark_done  # type: ignore[assignment]

    @functools.wraps(launch)
    def _launch(self, *args):  # type: ignore[no-untyped-def]
        """vLLM's engine start, in whichever thread runs it (gemma4u starts it in the background)."""
        tl.engine_start_begin = time.monotonic()
        cpu0 = time.thread_time()
        try:
            return launch(self, *args)
        finally:
            tl.engine_start_end = time.monotonic()
            tl.max_num_seqs = self.engine.max_num_seqs
            tl.engine_start_cpu += time.thread_time() - cpu0
            if profiler is not None and not new_code:
                profiler.enable()

    if new_code:
        started = VllmEngine._started

        @functools.wraps(started)
        def _started(self):  # type: ignore[no-untyped-def]
            started(self)
            if profiler is not None:  # profiles the thread that feeds the engine
                profiler.enable()

        VllmEngine._started = _started  # type: ignore[method-assign]

    @functools.wraps(add)
    def _add(self, request):  # type: ignore[no-untyped-def]
        if new_code:
            self._ensure_started()  # waiting for the engine start is not front-end time
        elif self._llm is None:
            self._start_engine()
        if tl.cpu_first_add is None:
            tl.cpu_first_add = time.process_time()
            tl.thread_cpu = {k: -v for k, v in thread_cpu_seconds().items()}
        t0, c0 = time.monotonic(), time.thread_time()
        rejected = add(self, request)
        t1 = time.monotonic()
        tl.add_cpu += time.thread_time() - c0
        tl.add_seconds += t1 - t0
        tl.adds += 1
        tl.record(len(self._inflight), t1)
        return rejected

    @functools.wraps(step)
    def _step(self):  # type: ignore[no-untyped-def]
        t0, c0 = time.monotonic(), time.thread_time()
        results = step(self)
        t1 = time.monotonic()
        tl.step_cpu += time.thread_time() - c0
        tl.steps += 1
        tl.step_seconds += t1 - t0
        if results:
            tl.cpu_last_result = time.process_time()
            tl.results += len(results)
            tl.record(len(self._inflight), t1)
        return results

    if new_code:
        VllmEngine._launch = _launch  # type: ignore[method-assign]
    else:
        VllmEngine._start_engine = _launch  # type: ignore[method-assign]
    VllmEngine.add = _add  # type: ignore[method-assign]
    VllmEngine.step = _step  # type: ignore[method-assign]


def main() -> None:
    out = Path(sys.argv[1])
    import gemma4u_batch

    tl = Timeline(package=str(Path(gemma4u_batch.__file__).resolve().parent))
    profile_to = os.environ.get("GEMMA4U_BENCH_PROFILE")
    profiler = cProfile.Profile(time.thread_time) if profile_to else None
    instrument(tl, profiler)
    atexit.register(tl.save, out)
    atexit.register(lambda: setattr(tl, "cpu_total", time.process_time()))  # runs before the save (LIFO)

    def _threads() -> None:
        for name, cpu in thread_cpu_seconds().items():
            tl.thread_cpu[name] = round(tl.thread_cpu.get(name, 0.0) + cpu, 3)

    atexit.register(_threads)
    if profiler is not None:

        def _dump() -> None:
            profiler.disable()
            profiler.dump_stats(str(profile_to))

        atexit.register(_dump)
    sys.argv = ["gemma4u", *sys.argv[2:]]
    from gemma4u_batch.cli.app import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()

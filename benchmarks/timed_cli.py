"""The real `gemma4u` CLI, with the engine's timeline recorded on the side.

usage: python -m benchmarks.timed_cli TIMELINE.json caption IN -o OUT --model ... (gemma4u's own args)

With GEMMA4U_BENCH_PROFILE=FILE it also runs cProfile in this (the front-end) process from
the moment the engine is up to the end, and writes the stats to FILE.

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

from benchmarks.timeline import Timeline


def instrument(tl: Timeline, profiler: cProfile.Profile | None = None) -> None:
    from gemma4u_batch.engine import VllmEngine

    start_engine = VllmEngine._start_engine
    add = VllmEngine.add
    step = VllmEngine.step
    import gemma4u_batch.job as job_module

    mark_done = job_module.mark_done

    @functools.wraps(mark_done)
    def _mark_done(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = mark_done(*args, **kwargs)
        tl.done_wall = time.time()  # every record and the complete marker are committed
        return result

    job_module.mark_done = _mark_done  # type: ignore[assignment]

    @functools.wraps(start_engine)
    def _start_engine(self):  # type: ignore[no-untyped-def]
        tl.engine_start_begin = time.monotonic()
        cpu0 = time.process_time()
        try:
            return start_engine(self)
        finally:
            tl.engine_start_end = time.monotonic()
            tl.max_num_seqs = self.engine.max_num_seqs
            tl.engine_start_cpu += time.process_time() - cpu0
            if profiler is not None:
                profiler.enable()

    @functools.wraps(add)
    def _add(self, request):  # type: ignore[no-untyped-def]
        if self._llm is None:  # the lazy engine start is not front-end time
            self._start_engine()
        t0 = time.monotonic()
        rejected = add(self, request)
        t1 = time.monotonic()
        tl.add_seconds += t1 - t0
        tl.adds += 1
        tl.record(len(self._inflight), t1)
        return rejected

    @functools.wraps(step)
    def _step(self):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        results = step(self)
        t1 = time.monotonic()
        tl.step_seconds += t1 - t0
        if results:
            tl.results += len(results)
            tl.record(len(self._inflight), t1)
        return results

    VllmEngine._start_engine = _start_engine  # type: ignore[method-assign]
    VllmEngine.add = _add  # type: ignore[method-assign]
    VllmEngine.step = _step  # type: ignore[method-assign]


def main() -> None:
    out = Path(sys.argv[1])
    tl = Timeline()
    profile_to = os.environ.get("GEMMA4U_BENCH_PROFILE")
    profiler = cProfile.Profile() if profile_to else None
    instrument(tl, profiler)
    atexit.register(tl.save, out)
    atexit.register(lambda: setattr(tl, "cpu_total", time.process_time()))  # runs before the save (LIFO)
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

"""The real `gemma4u` CLI, with the engine's timeline recorded on the side.

usage: python -m benchmarks.timed_cli TIMELINE.json caption IN -o OUT --model ... (gemma4u's own args)

With GEMMA4U_BENCH_FRONTEND_THREADS=N it sets torch's intra-op threads of this (the
front-end) process to N once the engine is up: an experiment for a proposed change (the
engine core runs in its own process and is not affected).
With GEMMA4U_BENCH_MM_UUIDS=1 each image request carries `multi_modal_uuids` (the file's
sha256 and the image size), so vLLM hashes that string instead of the pixels.
With GEMMA4U_BENCH_SHUTDOWN_TIMEOUT=S the engine core gets S seconds (vLLM's default: 5)
to exit on shutdown before it is killed; all records are committed before that point.
These three are experiments for proposed changes to engine.py (see BENCHMARKS.md).
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
    shutdown = VllmEngine.shutdown
    use_uuids = os.environ.get("GEMMA4U_BENCH_MM_UUIDS") == "1"
    shutdown_timeout = os.environ.get("GEMMA4U_BENCH_SHUTDOWN_TIMEOUT")
    current: dict[str, str | None] = {"uuid": None}
    if use_uuids:
        from vllm.v1.engine.llm_engine import LLMEngine

        add_request = LLMEngine.add_request

        @functools.wraps(add_request)
        def _add_request(self, request_id, prompt, *args, **kwargs):  # type: ignore[no-untyped-def]
            if current["uuid"] and isinstance(prompt, dict) and "image" in (prompt.get("multi_modal_data") or {}):
                prompt = {**prompt, "multi_modal_uuids": {"image": [current["uuid"]]}}
            return add_request(self, request_id, prompt, *args, **kwargs)

        LLMEngine.add_request = _add_request  # type: ignore[method-assign]

    def _uuid_of(request) -> str | None:  # type: ignore[no-untyped-def]
        try:
            unit, _ = request.payload
            image = (request.multi_modal_data or {}).get("image")
            sha = unit.decoded.content_sha256
        except (AttributeError, TypeError, ValueError):
            return None
        if image is None or not sha:
            return None
        return f"sha256:{sha}:{image.size[0]}x{image.size[1]}"

    @functools.wraps(shutdown)
    def _shutdown(self):  # type: ignore[no-untyped-def]
        if shutdown_timeout and self._llm is not None:
            self._llm.engine_core.shutdown(timeout=float(shutdown_timeout))
            self._llm = None
            return None
        return shutdown(self)

    VllmEngine.shutdown = _shutdown  # type: ignore[method-assign]

    @functools.wraps(start_engine)
    def _start_engine(self):  # type: ignore[no-untyped-def]
        tl.engine_start_begin = time.monotonic()
        try:
            return start_engine(self)
        finally:
            tl.engine_start_end = time.monotonic()
            tl.max_num_seqs = self.engine.max_num_seqs
            threads = os.environ.get("GEMMA4U_BENCH_FRONTEND_THREADS")
            if threads:
                import torch

                torch.set_num_threads(int(threads))
            if profiler is not None:
                profiler.enable()

    @functools.wraps(add)
    def _add(self, request):  # type: ignore[no-untyped-def]
        if self._llm is None:  # the lazy engine start is not front-end time
            self._start_engine()
        if use_uuids:
            current["uuid"] = _uuid_of(request)
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

"""What asking vLLM for the sampled tokens' log-probabilities costs (every caption/transcribe
request does, for `mean_logprob`): the same requests with logprobs=None, with logprobs=0 as
gemma4u sends it without --logprobs (the sum only: vLLM makes no token texts) and with logprobs=0
and the token texts (as with --logprobs 0), alternated, on the tiny checkpoint; plus the
sampler's extra work for a real vocabulary (a log-softmax over Gemma 4's 262,144 tokens for a
batch), which the tiny model's 758-token vocabulary cannot show.

usage: python -m benchmarks.logprobs_cost [--model DIR] [--requests 64] [--tokens 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any


def _engine(model: str) -> Any:
    from gemma4u_batch.config.job import EngineConfig
    from gemma4u_batch.engine.vllm_engine import VllmEngine

    limits = {"image": 0, "audio": 0, "video": 0}
    cfg = EngineConfig(dtype="float32", max_model_len=1024, max_num_seqs=32)
    return VllmEngine(model=model, engine=cfg, limit_mm=limits).start()  # type: ignore[arg-type]


VARIANTS = ("none", "sum", "texts")  # logprobs=None; logprobs=0, sum only; logprobs=0 with token texts


def _timed(engine: Any, n: int, tokens: int, variant: str, rep: int) -> tuple[float, float]:
    """Wall seconds, and the feeding thread's CPU seconds, for n text requests of exactly
    `tokens` generated tokens each (vLLM's front end runs in that thread; on a fast engine its
    work overlaps the core's and hides from the wall time)."""
    from vllm import SamplingParams

    from gemma4u_batch.config.job import SamplingConfig
    from gemma4u_batch.engine.plugin.logprob_sums import SUM_ONLY
    from gemma4u_batch.prompting.units import EngineRequest

    params = SamplingParams(
        max_tokens=tokens,
        temperature=0,
        ignore_eos=True,
        logprobs=None if variant == "none" else 0,
        extra_args={SUM_ONLY: True} if variant == "sum" else None,
    )
    t0, c0 = time.perf_counter(), time.thread_time()
    for i in range(n):
        prompt = engine.render_prompt([{"role": "user", "content": f"describe picture {rep} {i} of the city"}])
        engine.add(EngineRequest(f"r{rep}-{variant}-{i}", prompt, None, SamplingConfig(), params=params))
    while engine.has_unfinished():
        engine.step()
    return time.perf_counter() - t0, time.thread_time() - c0


def _log_softmax_ms(batch: int, vocab: int = 262_144, reps: int = 20) -> float:
    import torch

    x = torch.randn(batch, vocab)
    torch.log_softmax(x, dim=-1)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.log_softmax(x, dim=-1).gather(-1, torch.zeros(batch, 1, dtype=torch.long))
    return (time.perf_counter() - t0) / reps * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: build the tiny checkpoint)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    model = args.model
    if model is None:
        from gemma4u_batch.verify.tiny_model import build_tiny_checkpoint

        model = str(build_tiny_checkpoint(Path("/tmp/gemma4u-bench-tiny")))
    engine = _engine(model)
    try:
        _timed(engine, 8, 8, "none", -1)  # start the engine, warm up
        runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for rep in range(args.reps):
            for variant in VARIANTS:
                wall, thread = _timed(engine, args.requests, args.tokens, variant, rep)
                runs[variant].append(wall)
                cpu[variant].append(thread)
    finally:
        engine.shutdown()
    total = args.requests * args.tokens
    med = {k: statistics.median(v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    result = {
        "requests": args.requests,
        "tokens_per_request": args.tokens,
        "median_s": med,
        "tokens_per_s": {k: round(total / v, 1) for k, v in med.items()},
        "overhead_pct": {v: round((med[v] / med["none"] - 1) * 100, 1) for v in VARIANTS[1:]},
        "extra_us_per_token": {v: round((med[v] - med["none"]) / total * 1e6, 1) for v in VARIANTS[1:]},
        "feeding_thread_cpu_s": med_cpu,
        "extra_cpu_us_per_token": {v: round((med_cpu[v] - med_cpu["none"]) / total * 1e6, 1) for v in VARIANTS[1:]},
        "log_softmax_262144_ms": {b: round(_log_softmax_ms(b), 2) for b in (1, 32)},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What asking vLLM for the sampled tokens' log-probabilities costs (every caption/transcribe
request does, for `mean_logprob`): the same requests with logprobs=None and logprobs=0, alternated,
on the tiny checkpoint; plus the sampler's extra work for a real vocabulary (a log-softmax over
Gemma 4's 262,144 tokens for a batch), which the tiny model's 758-token vocabulary cannot show.

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
    from gemma4u_batch.config import EngineConfig
    from gemma4u_batch.engine import VllmEngine

    limits = {"image": 0, "audio": 0, "video": 0}
    cfg = EngineConfig(dtype="float32", max_model_len=1024, max_num_seqs=32)
    return VllmEngine(model=model, engine=cfg, limit_mm=limits).start()  # type: ignore[arg-type]


def _timed(engine: Any, n: int, tokens: int, logprobs: int | None, rep: int) -> float:
    """Seconds for n text requests of exactly `tokens` generated tokens each."""
    from vllm import SamplingParams

    from gemma4u_batch.config import SamplingConfig
    from gemma4u_batch.engine import EngineRequest

    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True, logprobs=logprobs)
    t0 = time.perf_counter()
    for i in range(n):
        prompt = engine.render_prompt([{"role": "user", "content": f"describe picture {rep} {i} of the city"}])
        engine.add(EngineRequest(f"r{rep}-{logprobs}-{i}", prompt, None, SamplingConfig(), params=params))
    while engine.has_unfinished():
        engine.step()
    return time.perf_counter() - t0


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
        from gemma4u_batch.tiny_model import build_tiny_checkpoint

        model = str(build_tiny_checkpoint(Path("/tmp/gemma4u-bench-tiny")))
    engine = _engine(model)
    try:
        _timed(engine, 8, 8, None, -1)  # start the engine, warm up
        runs: dict[str, list[float]] = {"none": [], "0": []}
        for rep in range(args.reps):
            runs["none"].append(_timed(engine, args.requests, args.tokens, None, rep))
            runs["0"].append(_timed(engine, args.requests, args.tokens, 0, rep))
    finally:
        engine.shutdown()
    total = args.requests * args.tokens
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "requests": args.requests,
        "tokens_per_request": args.tokens,
        "median_s": med,
        "tokens_per_s": {k: round(total / v, 1) for k, v in med.items()},
        "overhead_pct": round((med["0"] / med["none"] - 1) * 100, 1),
        "log_softmax_262144_ms": {b: round(_log_softmax_ms(b), 2) for b in (1, 32)},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

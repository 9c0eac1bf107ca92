"""The engine's whole surface: dedicated flags (--quantization, --kv-cache-dtype, --revision,
--tokenizer, --download-dir, --lora) and any other vLLM EngineArgs field (--engine-arg KEY=VALUE).

Everything here is checked before an engine starts, so a typo costs a second, not a model load.
It also says which of these settings change what the model writes (they join OUT's guard and
the content keys) and which are known to break, or are unverified for, exact bidirectional image
attention (see docs/parity.md).
"""

from __future__ import annotations

import json
from typing import Any

from ..config.engine_args import NEUTRAL_ARGS
from ..errors import UsageError


def vllm_lora_rank(rank: int) -> int:
    """vLLM accepts max_lora_rank from a fixed set: the smallest one that holds `rank`."""
    for allowed in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    raise UsageError(f"--lora: rank {rank} is larger than vLLM supports (512)")


def options_set(engine: Any) -> str:
    """The engine options beyond the basics that this run sets, as flags ('' when none)."""
    parts = [
        f"--{name.replace('_', '-')} {value}"
        for name in ("quantization", "revision", "tokenizer", "lora")
        if (value := getattr(engine, name))
    ]
    if engine.kv_cache_dtype != "auto":
        parts.append(f"--kv-cache-dtype {engine.kv_cache_dtype}")
    parts += [f"--engine-arg {k}={json.dumps(v)}" for k, v in sorted(engine.engine_args.items())]
    return ", ".join(parts)


def exactness_warnings(engine: Any, on_cpu: bool) -> list[str]:
    """Settings known to break, or not verified for, exact bidirectional image attention
    (one line each; the table in docs/parity.md says the same)."""
    out: list[str] = []
    kv = engine.kv_cache_dtype
    if kv.startswith("fp8"):
        what = (
            "the bidirectional-attention plugin cannot recompute image rows from a quantized KV cache: "
            "image tokens attend causally (inexact)"
            if on_cpu
            else "bidirectional image attention with a quantized KV cache is not verified"
        )
        out.append(f"--kv-cache-dtype {kv}: {what} (see docs/parity.md)")
    elif kv != "auto":
        out.append(f"--kv-cache-dtype {kv}: not parity-checked (only auto is; see docs/parity.md)")
    if engine.quantization:
        where = "on CPU " if on_cpu else ""
        out.append(
            f"--quantization {engine.quantization}: {where}not verified against the reference model "
            "(outputs differ from the unquantized model; see docs/parity.md)"
        )
    if engine.lora:
        out.append("--lora: image attention stays bidirectional, but LoRA outputs are not parity-checked")
    unverified = sorted(k for k in engine.engine_args if k not in NEUTRAL_ARGS)
    if unverified:
        out.append(f"--engine-arg {', '.join(unverified)}: not verified for exactness (see docs/parity.md)")
    return out

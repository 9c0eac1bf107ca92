"""The engine's surface as configured: dedicated flags (--quantization, --kv-cache-dtype,
--revision, --tokenizer, --download-dir, --lora) and any other vLLM EngineArgs field
(--engine-arg KEY=VALUE), checked before an engine starts so a typo costs a second, not a model
load.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import UsageError

OWN_FLAGS: dict[str, str] = {
    "model": "--model",
    "dtype": "--dtype",
    "max_model_len": "--max-model-len",
    "max_num_seqs": "--max-num-seqs",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "tensor_parallel_size": "--tensor-parallel-size",
    "pipeline_parallel_size": "--pipeline-parallel-size",
    "enforce_eager": "--enforce-eager",
    "mm_processor_cache_gb": "--mm-cache-gb",
    "mm_processor_kwargs": "--image-tokens",
    "limit_mm_per_prompt": "--limit-mm-per-prompt (run-batch; caption/transcribe set it per task)",
    "seed": "--seed",
    "quantization": "--quantization",
    "kv_cache_dtype": "--kv-cache-dtype",
    "revision": "--revision",
    "tokenizer": "--tokenizer",
    "download_dir": "--download-dir",
    "enable_lora": "--lora",
    "max_lora_rank": "--lora (the rank is read from the adapter)",
    "max_loras": "--lora",
}
"""EngineArgs fields gemma4u sets from a flag of its own: --engine-arg may not override them."""

SET_BY_GEMMA4U: dict[str, str] = {
    "disable_chunked_mm_input": "the bidirectional-attention plugin needs an image prefilled in one step",
    "structured_outputs_config": "--json-schema/--choices need gemma4u's xgrammar settings",
    "disable_log_stats": "gemma4u reports its own progress",
}
"""EngineArgs fields gemma4u fixes for correctness: refused with the reason."""

NEUTRAL_ARGS = frozenset(
    {
        "download_dir",
        "enable_prefix_caching",
        "max_num_batched_tokens",
        "block_size",
        "swap_space",
        "kv_cache_memory_bytes",
        "num_gpu_blocks_override",
        "max_parallel_loading_workers",
        "use_tqdm_on_load",
        "safetensors_load_strategy",
        "distributed_executor_backend",
        "max_logprobs",
    }
)
"""--engine-arg keys known not to change what the model writes (scheduling, memory, loading):
kept out of OUT's guard and raise no exactness warning. Any other key does both."""


def normalize_key(key: str) -> str:
    return key.strip().replace("-", "_")


def parse_engine_arg(raw: str) -> tuple[str, Any]:
    """'KEY=VALUE' → (key with _ for -, value parsed as JSON when it parses, else the text)."""
    key, sep, text = raw.partition("=")
    key = normalize_key(key)
    if not sep or not key:
        raise UsageError(f"--engine-arg {raw!r}: expected KEY=VALUE, e.g. --engine-arg enable_prefix_caching=false")
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return key, value


def parse_engine_args(raws: Iterable[str]) -> dict[str, Any]:
    """Repeated --engine-arg flags → a checked mapping (a key given twice is refused)."""
    out: dict[str, Any] = {}
    for raw in raws:
        key, value = parse_engine_arg(raw)
        if key in out:
            raise UsageError(f"--engine-arg {key} given twice")
        out[key] = value
    return check_engine_args(out)


@lru_cache(maxsize=1)
def engine_arg_names() -> frozenset[str] | None:
    """vLLM's EngineArgs fields, read from its source without importing vLLM (an import takes
    seconds and logs); None when vLLM is not installed (nothing to check against)."""
    import ast
    import importlib.util

    try:
        spec = importlib.util.find_spec("vllm.engine.arg_utils")
    except ImportError:
        return None
    if spec is None or spec.origin is None:
        return None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "EngineArgs":
            return frozenset(
                n.target.id
                for n in node.body
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and not n.target.id.startswith("_")
            )
    return None


def check_engine_args(args: dict[str, Any]) -> dict[str, Any]:
    """Normalised keys; an unknown key, or one gemma4u sets itself, is a one-line UsageError."""
    out: dict[str, Any] = {}
    for raw_key, value in args.items():
        key = normalize_key(str(raw_key))
        if key in OWN_FLAGS:
            raise UsageError(f"engine argument '{key}' has its own flag: use {OWN_FLAGS[key]}")
        if key in SET_BY_GEMMA4U:
            raise UsageError(f"engine argument '{key}' is set by gemma4u: {SET_BY_GEMMA4U[key]}")
        names = engine_arg_names()
        if names is not None and key not in names:
            hint = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.75)
            extra = f"; did you mean '{hint[0]}'?" if hint else ""
            raise UsageError(f"unknown engine argument '{key}' (see vLLM's EngineArgs{extra})")
        out[key] = value
    return out


def lora_rank(path: str) -> int:
    """The rank of a PEFT LoRA adapter folder (its adapter_config.json), checked before the engine starts."""
    folder = Path(os.path.expanduser(path))
    cfg = folder / "adapter_config.json"
    if not folder.is_dir():
        raise UsageError(f"--lora: adapter folder not found: {path}")
    try:
        data = json.loads(cfg.read_text())
    except FileNotFoundError:
        raise UsageError(f"--lora: {path} has no adapter_config.json (expected a PEFT LoRA adapter)") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--lora: cannot read {cfg}: {exc}") from None
    rank = data.get("r") if isinstance(data, dict) else None
    if data.get("peft_type", "LORA") != "LORA" or not isinstance(rank, int) or rank < 1:
        raise UsageError(f"--lora: {cfg} is not a LoRA adapter config (peft_type LORA with an integer r)")
    if not any((folder / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        raise UsageError(f"--lora: {path} has no adapter_model.safetensors")
    return rank

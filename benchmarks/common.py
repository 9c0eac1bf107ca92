"""Settings every system in the benchmark shares, so they run the same work."""

from __future__ import annotations

import json
import os
from pathlib import Path

# The same for gemma4u and every baseline.
IMAGE_TOKENS = 280
DTYPE = "float32"
MAX_MODEL_LEN = 4096
GPU_MEMORY_UTILIZATION = 0.15  # gemma4u's CPU default: vLLM's KV cache gets 15% of RAM
ENFORCE_EAGER = True  # gemma4u's default; the baselines get it too
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def instruction() -> str:
    """gemma4u's built-in caption instruction, so every system sends the same prompt."""
    from gemma4u_batch.config.tasks import instruction_for
    from gemma4u_batch.records import Modality

    return instruction_for("caption", Modality.IMAGE)


def messages(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)


def quiet_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        VLLM_LOGGING_LEVEL="WARNING",
        TOKENIZERS_PARALLELISM="false",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    return env


def write_json(path: Path, obj: object) -> None:
    Path(path).write_text(json.dumps(obj, indent=1))

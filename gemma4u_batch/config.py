"""The one typed job config that CLI flags (and later recipes) resolve into."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .records import Modality

DEFAULT_MODEL = "google/gemma-4-12B-it"
IMAGE_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = 0


class EngineConfig(BaseModel):
    """Knobs passed to vLLM's EngineArgs; defaults fit a CPU machine with 24 GiB."""

    model_config = ConfigDict(extra="forbid")

    dtype: str = "auto"
    max_model_len: int | None = 8192
    max_num_seqs: int = 32
    gpu_memory_utilization: float | None = None  # None: 0.9 on GPU, 0.15 on CPU
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    enforce_eager: bool = True
    mm_cache_gb: float = 0.0
    max_in_flight: int | None = None  # requests kept in the engine; default 2 × max_num_seqs


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Path | None = None
    output: Path
    model: str = DEFAULT_MODEL
    # Source selection
    dataset: str | None = None  # a `datasets` loader or hub id instead of a path
    split: str | None = None
    column: str | None = None
    allow_roots: list[Path] = Field(default_factory=list)
    modalities: list[Modality] | None = None
    # Task and prompt
    task: str = "caption"
    prompt: str | None = None
    system_prompt: str | None = None
    language: str | None = None
    translate_to: str | None = None
    # Media
    video_frames: int = Field(8, ge=1, le=32)
    video_fps: float | None = Field(None, gt=0)
    with_audio: bool = False
    subtitles: list[Literal["txt", "srt", "vtt"]] = Field(default_factory=list)
    sampling: SamplingConfig = SamplingConfig()
    engine: EngineConfig = EngineConfig()
    image_tokens: int = 280
    workers: int = Field(2, ge=0)
    prefetch: int = Field(8, ge=1)
    format: Literal["jsonl", "parquet", "both"] = "jsonl"
    commit_every: int = Field(64, ge=1)
    commit_seconds: float = Field(30.0, gt=0)
    # Per-item limits (also in the run manifest)
    max_image_pixels: int = Field(180_000_000, ge=1)
    max_input_bytes: int = Field(2 * 1024**3, ge=1)
    max_audio_seconds: float = Field(4 * 3600.0, gt=0)
    max_video_seconds: float = Field(4 * 3600.0, gt=0)
    decode_timeout: float = Field(60.0, gt=0)
    overwrite: bool = False
    retry_errors: bool = False
    quiet: bool = False

    @field_validator("image_tokens")
    @classmethod
    def _budget(cls, v: int) -> int:
        if v not in IMAGE_TOKEN_BUDGETS:
            raise ValueError(f"must be one of {', '.join(map(str, IMAGE_TOKEN_BUDGETS))}")
        return v

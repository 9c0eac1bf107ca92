"""The one typed job config that CLI flags (and later recipes) resolve into."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, field_validator, model_validator

from ..records import Modality, WorkItem
from .languages import normalise_language
from .tasks import is_speech_task
from .urls import WRITABLE_STORES, path_or_url, scheme_of, was_url

DEFAULT_MODEL = "google/gemma-4-12B-it"

Location = Annotated[
    Path | str,
    PlainValidator(path_or_url, json_schema_input_type=str),
    PlainSerializer(str, return_type=str, when_used="json"),
]
"""A local path or a URL (config/urls.py): a URL stays text, since a Path would drop a `/`."""
IMAGE_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)


def _dump_without_new_defaults(model: BaseModel, added: tuple[str, ...]) -> dict[str, Any]:
    """model_dump without the fields `added` later (#14) while they are at their defaults, so
    keys made before those fields existed stay the same."""
    default = type(model)()
    return {k: v for k, v in model.model_dump().items() if k not in added or v != getattr(default, k)}


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = 0
    top_k: int = Field(0, ge=0)  # 0 = all tokens
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list)  # stop strings (not included in the text)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    logprobs: int | None = Field(None, ge=0, le=20)  # record each token's log-probability and N alternatives

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("a stop string cannot be empty")
        return v

    def stable_dump(self) -> dict[str, Any]:
        """For content keys: a set one changes every key."""
        return _dump_without_new_defaults(
            self,
            ("top_k", "min_p", "stop", "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs"),
        )


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
    batch_invariant: bool = False  # VLLM_BATCH_INVARIANT=1: results independent of batching (GPU only)
    # The rest of vLLM's surface (engineargs.py): what changes outputs joins OUT's guard and the keys.
    quantization: str | None = None  # weight quantization method (awq, gptq, fp8, bitsandbytes, ...)
    kv_cache_dtype: str = "auto"  # fp8 variants break exact bidirectional image attention on CPU
    revision: str | None = None  # the model's hub revision (branch, tag or commit)
    tokenizer: str | None = None  # another tokenizer (path or hub id) than the model's
    download_dir: str | None = None  # where hub weights are downloaded (changes nothing else)
    lora: str | None = None  # a PEFT LoRA adapter folder applied to every request
    engine_args: dict[str, Any] = Field(default_factory=dict)  # any other EngineArgs field (checked)
    compact_json: bool = True  # structured output without free whitespace (engine-wide); run-batch: vLLM's default

    @field_validator("engine_args")
    @classmethod
    def _engine_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        """Known EngineArgs fields only, none that a dedicated option sets (checked before any engine starts)."""
        if not v:
            return v
        from ..errors import UsageError
        from .engine_args import check_engine_args

        try:
            return check_engine_args(v)
        except UsageError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("lora")
    @classmethod
    def _lora(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from ..errors import UsageError
        from .engine_args import lora_rank

        try:
            lora_rank(v)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return v

    def stable_dump(self) -> dict[str, Any]:
        """For what was keyed on the whole engine config before these options existed."""
        return _dump_without_new_defaults(
            self,
            (
                "quantization",
                "kv_cache_dtype",
                "revision",
                "tokenizer",
                "download_dir",
                "lora",
                "engine_args",
                "compact_json",
            ),
        )


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Location | None = None  # a local path, or a URL (config/urls.py): kept as text
    output: Location
    model: str = DEFAULT_MODEL
    # Source selection
    dataset: str | None = None  # a `datasets` loader or hub id instead of a path
    split: str | None = None
    column: str | None = None
    allow_roots: list[Location] = Field(default_factory=list)  # folders or URL prefixes rows may name
    modalities: list[Modality] | None = None
    # Task and prompt
    task: str = "caption"
    tasks: list[str] | None = None  # several tasks per item, sharing one decode
    prompt: str | None = None  # a Jinja template over row fields when it contains {{ }}
    system_prompt: str | None = None
    language: str | None = None  # canonical ISO code (languages.py); None: auto, detect it per window
    translate_to: str | None = None
    # Structured output: a JSON schema (inline or a file) or a label list
    json_schema: dict[str, Any] | Path | None = None
    choices: list[str] | None = None
    # Quality: retry items flagged (token cap hit, empty, repetitive) once with these settings
    retry_flagged: SamplingConfig | None = None
    # Media
    video_frames: int = Field(8, ge=1, le=32)
    video_fps: float | None = Field(None, gt=0)
    with_audio: bool = False
    subtitles: list[Literal["txt", "srt", "vtt", "tsv", "json"]] = Field(default_factory=list)
    # SRT/VTT cue shape (subtitles.py)
    max_cue_seconds: float = Field(7.0, gt=0)
    max_line_width: int = Field(42, ge=10)
    max_lines: int = Field(2, ge=1)
    sampling: SamplingConfig = SamplingConfig()
    engine: EngineConfig = EngineConfig()
    image_tokens: int = 280
    workers: int | Literal["auto"] = "auto"  # decode worker processes; see worker_count()
    prefetch: int = Field(8, ge=1)
    format: Literal["jsonl", "parquet", "both"] = "jsonl"
    commit_every: int = Field(64, ge=1)
    commit_seconds: float = Field(30.0, gt=0)
    # Per-item limits (also in the run manifest)
    max_image_pixels: int = Field(180_000_000, ge=1)
    max_input_bytes: int = Field(2 * 1024**3, ge=1)
    max_audio_seconds: float = Field(4 * 3600.0, gt=0)
    max_video_seconds: float = Field(4 * 3600.0, gt=0)
    max_decoded_frames: int = Field(500_000, ge=1)
    decode_timeout: float = Field(60.0, gt=0)
    engine_restarts: int = Field(2, ge=0)  # restarts allowed after the engine dies mid-run
    # Remote inputs (object stores, the Hub, http(s)): see docs/inputs.md
    fetch_timeout: float = Field(30.0, gt=0)  # seconds per remote item, retries included
    fetch_ahead: int = Field(16, ge=1)  # remote items a decode worker fetches while it decodes
    allow_private_urls: bool = False  # rows may name loopback/private addresses (else only the INPUT's origin)
    trust_urls: bool = False  # an http(s) row whose URL OUT knows is done without asking the server again
    overwrite: bool = False
    retry_errors: bool = False
    prune: bool = False  # a run that walks the whole input retires records whose input is gone (tombstones)
    # A run with another model (fingerprint) than OUT's: refused, or accepted with OUT's records
    # kept current until each item's record from the new model supersedes it (docs/outputs.md)
    on_model_change: Literal["refuse", "supersede"] = "refuse"
    strict: bool = False  # exit 3 when any current record in OUT is an error
    verify_weights: bool = False  # fingerprint a local model folder by content, not size + mtime
    shard: str | None = None  # "I/N": this process does the items whose content hash ≡ I (mod N)
    ray: str | None = None  # "auto" or a cluster address: run on Ray replicas
    replicas: int = Field(1, ge=1)
    quiet: bool = False

    @field_validator("output", mode="before")
    @classmethod
    def _output(cls, v: Any) -> Any:
        """OUT is a local folder or an object-store prefix; another URL is refused here, never
        made a folder named after it."""
        if was_url(v):
            scheme = scheme_of(str(v))
            if scheme not in WRITABLE_STORES:
                shown = f"{scheme}://" if scheme else f"{str(v).split(':', 1)[0].lower()}:/ (a mangled URL)"
                raise ValueError(
                    f"output must be a local folder or an object-store URL (s3://, gs://, az://), not {shown}"
                )
        return v

    @field_validator("image_tokens")
    @classmethod
    def _budget(cls, v: int) -> int:
        if v not in IMAGE_TOKEN_BUDGETS:
            raise ValueError(f"must be one of {', '.join(map(str, IMAGE_TOKEN_BUDGETS))}")
        return v

    @field_validator("language", mode="before")
    @classmethod
    def _language(cls, v: Any) -> str | None:
        """One form for every spelling (fr, fra, fre, French), so keys and OUT's guard agree."""
        return normalise_language(None if v is None else str(v))

    @model_validator(mode="before")
    @classmethod
    def _translate(cls, data: Any) -> Any:
        """transcribe + translate_to is the translate task (flags and recipes alike)."""
        if isinstance(data, dict) and data.get("translate_to") and data.get("task") == "transcribe":
            data = {**data, "task": "translate"}
        return data

    @model_validator(mode="after")
    def _combinations(self) -> JobConfig:
        if self.json_schema is not None and self.choices is not None:
            raise ValueError("json_schema and choices cannot be used together")
        if self.choices is not None and len(self.choices) < 2:
            raise ValueError("choices needs at least two labels")
        if self.input is None and self.dataset is None:
            raise ValueError("input (a folder, manifest or saved dataset) or dataset is required")
        return self

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            i, n = (int(x) for x in v.split("/"))
        except ValueError:
            raise ValueError("expected I/N, e.g. 0/4 (I counts from 0)") from None
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"expected 0 <= I < N, got {v}")
        return v

    def shard_index(self) -> tuple[int, int] | None:
        if self.shard is None:
            return None
        i, n = (int(x) for x in self.shard.split("/"))
        return i, n

    def task_list(self) -> list[str]:
        return list(self.tasks) if self.tasks else [self.task]

    def identifies_language(self, task: str) -> bool:
        """Whether each speech window of this task gets a language-identification request (--language auto)."""
        return self.language is None and is_speech_task(task)

    def tasks_of(self, item: WorkItem) -> list[str]:
        """The tasks an item is run with: its manifest row's task, else the job's."""
        return [item.task] if item.task else self.task_list()

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        text = str(v).strip().lower()
        if text == "auto":
            return "auto"
        if isinstance(v, bool) or not text.isdigit():
            raise ValueError(f"--workers takes a number (0 or more) or auto, not {v!r}")
        return int(text)

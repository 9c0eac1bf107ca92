"""`gemma4u caption` and `gemma4u transcribe`: one set of job options, two sets of defaults.

Typer reads a command's options from its signature, so both commands are built from
`job_options` with their own defaults (see `make_job_command`); their flags resolve into a
JobConfig like a recipe's keys do, and the same `run_and_report` runs it.

No `from __future__ import annotations`: `make_job_command` hands job_options' signature to
Typer as it is, so its annotations must be objects, not strings.
"""

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config.job import DEFAULT_MODEL
from ..errors import UsageError
from .launch import check_progress, config_from_flags, run_and_report
from .options import (
    H_ENG,
    H_GEN,
    H_IN,
    H_LIM,
    H_LOG,
    H_MEDIA,
    H_OUT,
    H_TASK,
    LOG_FILE,
    ON_MODEL_CHANGE,
    PROGRESS,
    VERBOSE,
    EngineFlags,
    ModelChange,
    engine_options,
    in_panel,
)


@engine_options
def job_options(
    input: Annotated[
        str | None,
        typer.Argument(
            help="A folder, a manifest (.jsonl/.csv/.parquet) or a saved HF dataset; or a URL: s3://, gs://, "
            "az://, hf://datasets/… (a prefix lists like a folder) or http(s):// (a manifest or one file)."
        ),
    ] = None,
    *,
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="Output folder, or an object-store URL: s3://, gs://, az://.", rich_help_panel=H_OUT
        ),
    ],
    model: Annotated[str, typer.Option("--model", "-m", help="Model path or HF id.")] = DEFAULT_MODEL,
    dataset: Annotated[
        str | None,
        typer.Option(help="HF `datasets` loader (imagefolder, audiofolder, parquet…) or hub id.", rich_help_panel=H_IN),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Dataset split.", rich_help_panel=H_IN)] = None,
    column: Annotated[str | None, typer.Option(help="Dataset/manifest media column.", rich_help_panel=H_IN)] = None,
    allow_root: Annotated[
        list[str] | None,
        typer.Option(
            help="Folder or URL prefix manifest rows may read from (repeatable; default: the manifest's folder).",
            rich_help_panel=H_IN,
        ),
    ] = None,
    allow_private_urls: Annotated[
        bool,
        typer.Option(
            help="Let http(s) rows reach loopback, link-local and private addresses (default: only the INPUT's "
            "own origin may).",
            rich_help_panel=H_IN,
        ),
    ] = False,
    trust_urls: Annotated[
        bool,
        typer.Option(
            help="Take an http(s) or object URL that OUT already holds as unchanged, without asking the server "
            "(default: a conditional request per URL no listing vouches for).",
            rich_help_panel=H_IN,
        ),
    ] = False,
    modality: Annotated[
        list[str] | None,
        typer.Option(help="Only these modalities: image, audio, video (repeatable).", rich_help_panel=H_IN),
    ] = None,
    task: Annotated[str, typer.Option(help="Built-in task (see docs/tasks.md).", rich_help_panel=H_TASK)] = "caption",
    prompt: Annotated[
        str | None,
        typer.Option(help="Replace the task's instruction (the chat template still wraps it).", rich_help_panel=H_TASK),
    ] = None,
    system_prompt: Annotated[str | None, typer.Option(help="System prompt.", rich_help_panel=H_TASK)] = None,
    tasks: Annotated[
        str | None, typer.Option(help="Several tasks per item, comma-separated (one decode).", rich_help_panel=H_TASK)
    ] = None,
    json_schema: Annotated[
        Path | None,
        typer.Option(help="Constrain output to this JSON schema; parsed into `data`.", rich_help_panel=H_TASK),
    ] = None,
    choices: Annotated[
        str | None,
        typer.Option(help="Constrain output to one of these labels: a,b,c (into `data`).", rich_help_panel=H_TASK),
    ] = None,
    language: Annotated[
        str,
        typer.Option(
            help="Spoken language of speech tasks: an ISO 639-1/639-3 code or English name (fr, fra, French), "
            "or auto: the model identifies it per window.",
            rich_help_panel=H_TASK,
        ),
    ] = "auto",
    translate_to: Annotated[
        str | None, typer.Option(help="Translate speech into this language.", rich_help_panel=H_TASK)
    ] = None,
    image_tokens: Annotated[
        int, typer.Option(help="Soft tokens per image: 70/140/280/560/1120.", rich_help_panel=H_MEDIA)
    ] = 280,
    video_frames: Annotated[int, typer.Option(help="Frames sampled per video (≤32).", rich_help_panel=H_MEDIA)] = 8,
    fps: Annotated[
        float | None, typer.Option(help="Sample video at this rate instead.", rich_help_panel=H_MEDIA)
    ] = None,
    with_audio: Annotated[
        bool, typer.Option(help="Send a video's soundtrack (first 30 s) too.", rich_help_panel=H_MEDIA)
    ] = False,
    max_tokens: Annotated[int, typer.Option(help="Max tokens generated per request.", rich_help_panel=H_GEN)] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy (default).", rich_help_panel=H_GEN)] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.", rich_help_panel=H_GEN)] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed (same seed → same text).", rich_help_panel=H_GEN)] = 0,
    top_k: Annotated[
        int, typer.Option(help="Sample from the K most likely tokens (0 = all).", min=0, rich_help_panel=H_GEN)
    ] = 0,
    min_p: Annotated[
        float,
        typer.Option(help="Drop tokens below this share of the top token's probability.", rich_help_panel=H_GEN),
    ] = 0.0,
    stop: Annotated[
        list[str] | None,
        typer.Option(help="Stop generating at this string (not kept in the text). Repeatable.", rich_help_panel=H_GEN),
    ] = None,
    presence_penalty: Annotated[
        float, typer.Option(help="Penalise tokens already generated (-2 to 2).", rich_help_panel=H_GEN)
    ] = 0.0,
    frequency_penalty: Annotated[
        float, typer.Option(help="Penalise tokens by how often they were generated (-2 to 2).", rich_help_panel=H_GEN)
    ] = 0.0,
    repetition_penalty: Annotated[
        float,
        typer.Option(help="Penalise tokens of the prompt and output (> 1 discourages repeats).", rich_help_panel=H_GEN),
    ] = 1.0,
    logprobs: Annotated[
        int | None,
        typer.Option(
            help="Record each generated token's log-probability and its N most likely alternatives "
            "(`logprobs` field, 0-20). Every record has `mean_logprob` anyway.",
            rich_help_panel=H_GEN,
        ),
    ] = None,
    dtype: Annotated[str, typer.Option(help="auto, bfloat16, float16, float32.", rich_help_panel=H_ENG)] = "auto",
    max_model_len: Annotated[int, typer.Option(help="Max model length.", rich_help_panel=H_ENG)] = 8192,
    max_num_seqs: Annotated[int, typer.Option(help="Max concurrent sequences.", rich_help_panel=H_ENG)] = 32,
    gpu_memory_utilization: Annotated[
        float | None,
        typer.Option(help="Engine memory share (on CPU: of RAM). Default 0.15 CPU, 0.9 GPU.", rich_help_panel=H_ENG),
    ] = None,
    tensor_parallel_size: Annotated[int, typer.Option(help="Tensor parallel size.", rich_help_panel=H_ENG)] = 1,
    pipeline_parallel_size: Annotated[int, typer.Option(help="Pipeline parallel size.", rich_help_panel=H_ENG)] = 1,
    mm_cache_gb: Annotated[
        float,
        typer.Option(
            help="vLLM multimodal processor cache (GiB; 0 = off: inputs are not repeated).", rich_help_panel=H_ENG
        ),
    ] = 0.0,
    max_in_flight: Annotated[
        int | None,
        typer.Option(help="Requests kept inside the engine (default 2 × max-num-seqs).", rich_help_panel=H_ENG),
    ] = None,
    enforce_eager: Annotated[
        bool, typer.Option(help="Eager mode (no graph capture; faster start).", rich_help_panel=H_ENG)
    ] = True,
    batch_invariant: Annotated[
        bool,
        typer.Option(
            help="vLLM's batch-invariant mode (VLLM_BATCH_INVARIANT=1): a prompt's output does not depend on "
            "what it is batched with. Slower; GPU only (refused on CPU).",
            rich_help_panel=H_ENG,
        ),
    ] = False,
    workers: Annotated[
        str,
        typer.Option(
            help="Decode worker processes: a number (0 = decode in this process) or auto: the cores left "
            "after the engine's processes and this one, at most one per GiB of free memory.",
            rich_help_panel=H_ENG,
        ),
    ] = "auto",
    engine_flags: EngineFlags,  # --quantization … --engine-arg, spliced in here by engine_options
    max_input_bytes: Annotated[
        int, typer.Option(help="Bytes read per item (else error too_large).", min=1, rich_help_panel=H_LIM)
    ] = 2 * 1024**3,
    max_image_pixels: Annotated[
        int, typer.Option(help="Pixels per image or video frame (too_large).", min=1, rich_help_panel=H_LIM)
    ] = 180_000_000,
    max_audio_seconds: Annotated[
        float, typer.Option(help="Audio duration in seconds (too_long).", rich_help_panel=H_LIM)
    ] = 4 * 3600.0,
    max_video_seconds: Annotated[
        float, typer.Option(help="Video duration in seconds (too_long).", rich_help_panel=H_LIM)
    ] = 4 * 3600.0,
    max_decoded_frames: Annotated[
        int, typer.Option(help="Frames a video may make the decoder decode (too_large).", min=1, rich_help_panel=H_LIM)
    ] = 500_000,
    decode_timeout: Annotated[
        float, typer.Option(help="Wall-clock decode seconds per item (timeout).", rich_help_panel=H_LIM)
    ] = 60.0,
    fetch_timeout: Annotated[
        float,
        typer.Option(help="Seconds to fetch a remote item, retries included (fetch_timeout).", rich_help_panel=H_LIM),
    ] = 30.0,
    fetch_ahead: Annotated[
        int,
        typer.Option(help="Remote items each decode worker fetches while it decodes.", min=1, rich_help_panel=H_LIM),
    ] = 16,
    engine_restarts: Annotated[
        int,
        typer.Option(
            help="Engine restarts allowed after it dies mid-run; one more death exits 75.",
            min=0,
            rich_help_panel=H_LIM,
        ),
    ] = 2,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="jsonl, parquet or both; for transcripts add txt,srt,vtt,tsv,json (comma list).",
            rich_help_panel=H_OUT,
        ),
    ] = "jsonl",
    max_cue_seconds: Annotated[
        float,
        typer.Option(help="Longest SRT/VTT cue on screen, in seconds.", min=0.5, rich_help_panel=H_OUT),
    ] = 7.0,
    max_line_width: Annotated[
        int, typer.Option(help="Characters per SRT/VTT cue line.", min=10, rich_help_panel=H_OUT)
    ] = 42,
    max_lines: Annotated[int, typer.Option(help="Lines per SRT/VTT cue.", min=1, rich_help_panel=H_OUT)] = 2,
    commit_every: Annotated[
        int, typer.Option(help="Commit a part file every N records (also every 30 s).", rich_help_panel=H_OUT)
    ] = 64,
    overwrite: Annotated[
        bool, typer.Option(help="Start fresh, deleting results in OUT.", rich_help_panel=H_OUT)
    ] = False,
    retry_errors: Annotated[
        bool, typer.Option(help="Redo only items whose record has an error.", rich_help_panel=H_OUT)
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            help="Retire the records whose input is gone with a tombstone each (at the end of a run that "
            "walks the whole input; under --shard, shard 0 does); the table and export leave them out.",
            rich_help_panel=H_OUT,
        ),
    ] = False,
    on_model_change: Annotated[ModelChange, in_panel(ON_MODEL_CHANGE, H_OUT)] = "refuse",
    strict: Annotated[
        bool,
        typer.Option(
            help="Exit 3 when the job has any error record (this run's or a skipped earlier one's).",
            rich_help_panel=H_OUT,
        ),
    ] = False,
    verify_weights: Annotated[
        bool,
        typer.Option(
            help="Fingerprint a local model folder by hashing its files (slow), not by their size + mtime.",
            rich_help_panel=H_OUT,
        ),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            help="Do only shard I of N (I from 0), e.g. 0/4; N runs into one OUT add up to the job.",
            rich_help_panel="Scale out",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            help="Run on Ray: 'auto' (existing cluster, else local) or a cluster address.", rich_help_panel="Scale out"
        ),
    ] = None,
    replicas: Annotated[int, typer.Option(help="Engine replicas (Ray actors).", rich_help_panel="Scale out")] = 1,
    progress: Annotated[str, in_panel(PROGRESS, H_LOG)] = "rich",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress or summary.", rich_help_panel=H_LOG)
    ] = False,
    verbose: Annotated[bool, in_panel(VERBOSE, H_LOG)] = False,
    log_file: Annotated[Path | None, in_panel(LOG_FILE, H_LOG)] = None,
) -> None:
    """Template whose signature the job commands share (never called; the commands get their
    flags, the engine options among them, as one flat dict: see `make_job_command`)."""


def job_command(kwargs: dict[str, Any]) -> None:
    """The body of `caption` and `transcribe`: their flags, run."""
    progress = kwargs.get("progress", "rich")
    check_progress(progress)
    if kwargs.get("input") is None and kwargs.get("dataset") is None:
        raise UsageError("give an INPUT (folder, manifest or saved dataset) or --dataset")
    run_and_report(
        config_from_flags(kwargs), progress, verbose=bool(kwargs.get("verbose")), log_file=kwargs.get("log_file")
    )


def make_job_command(doc: str, **defaults: Any) -> Callable[..., None]:
    """A command function with job_options' signature and the given defaults."""
    sig = inspect.signature(job_options)
    params = [p.replace(default=defaults[p.name]) if p.name in defaults else p for p in sig.parameters.values()]

    def command(**kwargs: Any) -> None:
        job_command(kwargs)

    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    command.__doc__ = doc
    return command


caption = make_job_command("Caption every image, video and audio item in INPUT; one record per item.", task="caption")
transcribe = make_job_command(
    "Transcribe speech (audio files, or the soundtrack of videos) in INPUT; long files are cut into "
    "≤30 s windows and stitched into one record with `segments`.",
    task="transcribe",
    modality=["audio", "video"],
    max_tokens=448,
)

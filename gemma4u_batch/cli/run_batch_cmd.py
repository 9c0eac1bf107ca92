"""`gemma4u run-batch -i IN.jsonl -o OUT.jsonl --model M`: a drop-in for `vllm run-batch`
(OpenAI Batch format, /v1/chat/completions), resumable. The work lives in batch/run.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ExitCode
from .launch import engine_overrides, err
from .options import EngineFlags, Verbose, engine_options


@engine_options
def run_batch(
    input_file: Annotated[
        Path, typer.Option("--input-file", "-i", help="OpenAI batch input (JSONL: custom_id, method, url, body).")
    ],
    output_file: Annotated[
        Path, typer.Option("--output-file", "-o", help="Batch output (JSONL), written atomically at the end.")
    ],
    model: Annotated[str, typer.Option("--model", help="Model path or HF id.")],
    served_model_name: Annotated[
        list[str] | None,
        typer.Option("--served-model-name", help="Name(s) a line's body.model may use (default: --model). Repeatable."),
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="auto, bfloat16, float16 or float32.")] = "auto",
    max_model_len: Annotated[int | None, typer.Option("--max-model-len", help="Context length.")] = 8192,
    max_num_seqs: Annotated[int, typer.Option("--max-num-seqs", help="Sequences per engine step.")] = 32,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option("--gpu-memory-utilization", help="Share of (GPU or CPU KV) memory.")
    ] = None,
    tensor_parallel_size: Annotated[int, typer.Option("--tensor-parallel-size", "-tp", help="GPUs per engine.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Engine seed (a line's body.seed wins for that line).")] = 0,
    allowed_local_media_path: Annotated[
        Path | None,
        typer.Option("--allowed-local-media-path", help="file:// media is read only under this folder."),
    ] = None,
    allow_network_media: Annotated[
        bool, typer.Option("--allow-network-media", help="Fetch http(s) media (off by default).")
    ] = False,
    media_timeout: Annotated[float, typer.Option(help="Seconds per http(s) media fetch.")] = 10.0,
    max_media_bytes: Annotated[int, typer.Option(help="Largest media item, in bytes.")] = 64 * 1024**2,
    image_tokens: Annotated[int, typer.Option(help="Soft tokens per image: 70, 140, 280, 560 or 1120.")] = 280,
    limit_mm_per_prompt: Annotated[
        str,
        typer.Option("--limit-mm-per-prompt", help="Media items per line, as JSON, e.g. '{\"image\": 4}'."),
    ] = '{"image": 1, "audio": 1, "video": 1}',
    verbose: Verbose = False,
    *,
    engine_flags: EngineFlags,
) -> None:
    """Run an OpenAI batch file like `vllm run-batch` (same flags and lines), resumable: a rerun
    sends only lines without an answer."""
    from ..batch.run import BatchRun
    from ..console import engine_output
    from ..engine.vllm_engine import VllmEngine

    settings = _settings(dict(locals()))
    run = BatchRun(settings)
    with engine_output(verbose=verbose):
        if run.complete():
            summary = run.run(None)
        else:  # the tokenizer and the engine load only when a line is sent
            engine = VllmEngine(
                model=model, engine=settings.engine, image_tokens=image_tokens, limit_mm=settings.limit_mm, seed=seed
            ).start()
            try:
                summary = run.run(engine)
            finally:
                engine.shutdown()
    for problem in summary.problems:
        err.print(f"[bold red]error:[/] {problem}", soft_wrap=True, highlight=False)
    if summary.already_complete:
        err.print(f"Nothing to do: {output_file} already answers every line of {input_file}.")
    else:
        err.print(
            f"{summary.lines} lines: {summary.done} answered now, {summary.reused} from the checkpoint, "
            f"{summary.errors} error lines → {output_file}"
        )
    if summary.interrupted:
        raise typer.Exit(ExitCode.INTERRUPTED)
    if summary.problems:
        raise typer.Exit(ExitCode.ITEM_ERRORS)


def _settings(a: dict[str, Any]) -> Any:
    """run-batch's flags (its parameters, by name) → BatchSettings, checked before any engine starts."""
    from ..batch.lines import MediaPolicy
    from ..batch.run import BatchSettings
    from ..config.job import EngineConfig
    from ..decode import DecodeOptions

    engine = EngineConfig(
        dtype=a["dtype"],
        max_model_len=a["max_model_len"],
        max_num_seqs=a["max_num_seqs"],
        gpu_memory_utilization=a["gpu_memory_utilization"],
        tensor_parallel_size=a["tensor_parallel_size"],
    )
    return BatchSettings(
        input=a["input_file"],
        output=a["output_file"],
        model=a["model"],
        served_model_names=list(a["served_model_name"] or []),
        engine=engine_overrides(engine, a["engine_flags"]),
        image_tokens=a["image_tokens"],
        seed=a["seed"],
        limit_mm=dict(_limits(a["limit_mm_per_prompt"])),
        media=MediaPolicy(
            allowed_local_media_path=a["allowed_local_media_path"],
            allow_network=a["allow_network_media"],
            timeout_s=a["media_timeout"],
            max_bytes=a["max_media_bytes"],
            decode=DecodeOptions(image_tokens=a["image_tokens"]),
        ),
    )


def _limits(text: str) -> dict[str, int | dict[str, int]]:
    import json

    from ..errors import UsageError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--limit-mm-per-prompt is not JSON: {exc.msg}") from None
    if not isinstance(value, dict) or not all(isinstance(v, int) and v >= 0 for v in value.values()):
        raise UsageError('--limit-mm-per-prompt wants a JSON object of counts, e.g. {"image": 2}')
    return {"image": 1, "audio": 1, "video": 1, **value}

"""The `gemma4u` command. Each command only parses flags; the work lives elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from ..config import DEFAULT_MODEL, EngineConfig, JobConfig, SamplingConfig
from ..errors import ExitCode, UsageError

app = typer.Typer(
    name="gemma4u",
    help="Batch captioning and transcription with Gemma 4 Unified on vLLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Model utilities (tiny test checkpoint).", no_args_is_help=True)
app.add_typer(model_app, name="model")

err = Console(stderr=True, highlight=False)


def fail(message: str, code: int = ExitCode.USAGE) -> None:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return f"invalid value for {loc}: {first['msg']}"


def build_config(**kw: Any) -> JobConfig:
    """Flags → JobConfig; a bad value is a usage error naming the option."""
    sampling_keys = set(SamplingConfig.model_fields)
    engine_keys = set(EngineConfig.model_fields)
    sampling = {k: v for k in list(kw) if k in sampling_keys and (v := kw.pop(k)) is not None}
    engine = {k: v for k in list(kw) if k in engine_keys and (v := kw.pop(k)) is not None}
    try:
        return JobConfig(sampling=SamplingConfig(**sampling), engine=EngineConfig(**engine), **kw)
    except ValidationError as exc:
        raise UsageError(_validation_message(exc)) from None


def run_and_report(config: JobConfig, progress: str) -> None:
    from ..progress import Reporter
    from ..runner import run_job

    mode = "quiet" if config.quiet else progress
    try:
        summary = run_job(config, reporter=Reporter(mode))
    except UsageError as exc:
        fail(str(exc))
        return
    if summary.already_complete:
        err.print(f"Nothing to do: all {summary.skipped} items in {config.output} are already done.")
        return
    if not config.quiet:
        from .summary import print_summary

        print_summary(err, summary, config)
    if summary.interrupted:
        raise typer.Exit(ExitCode.INTERRUPTED)


InputArg = Annotated[Path, typer.Argument(help="Folder of media files.", show_default=False)]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Output folder (JSONL/Parquet part files).")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model path or Hugging Face id.")]


@app.command()
def caption(
    input: InputArg,
    output: OutOpt,
    model: ModelOpt = DEFAULT_MODEL,
    task: Annotated[str, typer.Option(help="Built-in task: caption, detailed-caption, ...")] = "caption",
    prompt: Annotated[str | None, typer.Option(help="Replace the task's instruction (chat template still wraps it).")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Max tokens to generate per item.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy (default).")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed (same seed → same text).")] = 0,
    dtype: Annotated[str, typer.Option(help="auto, bfloat16, float16, float32.")] = "auto",
    image_tokens: Annotated[int, typer.Option(help="Soft tokens per image: 70/140/280/560/1120.")] = 280,
    workers: Annotated[int, typer.Option(help="Decode worker processes (0 = inline).")] = 2,
    format: Annotated[str, typer.Option("--format", help="jsonl, parquet or both.")] = "jsonl",
    max_model_len: Annotated[int, typer.Option(help="Engine max model length.")] = 8192,
    max_num_seqs: Annotated[int, typer.Option(help="Engine max concurrent sequences.")] = 32,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(help="Engine memory share (CPU: of RAM; default 0.15 CPU, 0.9 GPU).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Start fresh, deleting earlier results in OUT.")] = False,
    retry_errors: Annotated[bool, typer.Option(help="Redo only items whose record has an error.")] = False,
    progress: Annotated[str, typer.Option(help="rich, json or quiet.")] = "rich",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary.")] = False,
) -> None:
    """Caption every image (and video/audio) in INPUT; one record per item."""
    config = build_config(
        input=input,
        output=output,
        model=model,
        task=task,
        prompt=prompt,
        system_prompt=system_prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        dtype=dtype,
        image_tokens=image_tokens,
        workers=workers,
        format=format,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        gpu_memory_utilization=gpu_memory_utilization,
        overwrite=overwrite,
        retry_errors=retry_errors,
        quiet=quiet,
    )
    run_and_report(config, progress)


@model_app.command("tiny")
def model_tiny(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the checkpoint into.")],
    seed: Annotated[int, typer.Option(help="Weight seed (same seed → same checkpoint).")] = 0,
) -> None:
    """Write a tiny random-weight Gemma 4 Unified checkpoint (a few MB).

    Its outputs are meaningless text: it exists to run the real code paths offline.
    """
    from ..tiny_model import build_tiny_checkpoint

    if out_dir.exists() and not out_dir.is_dir():
        fail(f"not a folder: {out_dir}")
    try:
        build_tiny_checkpoint(out_dir, seed=seed)
    except PermissionError as exc:
        fail(f"cannot write {out_dir}: {exc.strerror}")
    err.print(f"Wrote tiny Gemma 4 Unified checkpoint to {out_dir} (random weights: its text is meaningless).")


def main() -> None:
    """Console entry point: usage errors are one line, never a traceback."""
    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except UsageError as exc:
        err.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        sys.exit(ExitCode.USAGE)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(ExitCode.INTERRUPTED)
    except Exception as exc:
        # Click's usage errors (typer vendors click, so match by shape, not by class).
        if callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int):
            err.print(f"[bold red]error:[/] {exc.format_message()}", soft_wrap=True)  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        raise

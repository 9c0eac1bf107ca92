"""`gemma4u inspect INPUT`: what the engine will receive for each item, without loading it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..decode.options import decode_options
from ..errors import UsageError
from .launch import config_from_flags, err


def inspect(
    input: Annotated[
        str | None, typer.Argument(help="Folder, manifest or saved dataset, or a URL (see caption).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="HF `datasets` loader or hub id.")] = None,
    split: Annotated[str | None, typer.Option(help="Dataset split.")] = None,
    column: Annotated[str | None, typer.Option(help="Media column.")] = None,
    allow_root: Annotated[
        list[str] | None, typer.Option(help="Extra folder or URL prefix manifest rows may read from.")
    ] = None,
    task: Annotated[str, typer.Option(help="caption or transcribe (transcribe cuts audio into windows).")] = "caption",
    image_tokens: Annotated[int, typer.Option(help="Soft tokens per image.")] = 280,
    video_frames: Annotated[int, typer.Option(help="Frames per video.")] = 8,
    fps: Annotated[float | None, typer.Option(help="Sample video at this rate instead.")] = None,
    with_audio: Annotated[bool, typer.Option(help="Include a video's soundtrack.")] = False,
    dump: Annotated[Path | None, typer.Option(help="Write media exactly as sent into DIR/<id>/.")] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="JSON lines on stdout.")] = False,
    workers: Annotated[int, typer.Option(help="Decode worker processes.")] = 2,
) -> None:
    """Show what the engine will receive for each item (sizes, tokens, frames, audio windows)."""
    import json

    from ..config.tasks import is_speech_task
    from ..plan.inspection import inspect_items, summarize
    from ..sources.job_input import JobInput

    if input is None and dataset is None:
        raise UsageError("give an INPUT (folder, manifest or saved dataset) or --dataset")
    config = config_from_flags(
        {
            "input": input,
            "output": Path("."),
            "dataset": dataset,
            "split": split,
            "column": column,
            "allow_root": allow_root,
            "modality": None,
            "task": task,
            "image_tokens": image_tokens,
            "video_frames": video_frames,
            "fps": fps,
            "with_audio": with_audio,
            "format": "jsonl",
            "workers": workers,
        }
    )
    source = JobInput(config).open()
    out = Console(highlight=False)
    views = []
    for v in inspect_items(
        source,
        decode_options(config),
        windowed_audio=is_speech_task(task),
        workers=workers,
        dump_dir=dump,
    ):
        views.append(v)
        if json_lines:
            print(json.dumps(v.to_dict(), default=str), flush=True)
        elif v.error:
            out.print(f"[red]{v.id}[/]  {v.modality}  error ({v.error_kind}): {v.error}")
        else:
            reqs = ", ".join(
                " ".join(f"{k}={val}" for k, val in r.items() if k not in ("timestamps", "frame_indices"))
                for r in v.requests
            )
            out.print(f"[bold]{v.id}[/]  {v.modality}  {reqs}")
    err.print(json.dumps(summarize(views)))

"""The `gemma4u` command. Each command only parses flags; the work lives elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from ..config.job import JobConfig
from ..decode.options import decode_options
from ..errors import EngineFailure, ExitCode, OutputError, OutputLocked, UsageError
from .launch import config_from_flags, err, fail, job_command
from .options import make_job_command
from .run_batch_cmd import run_batch
from .run_cmd import run as run_recipe
from .verify_cmd import verify

app = typer.Typer(
    name="gemma4u",
    help="Batch captioning and transcription with Gemma 4 Unified on vLLM.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from .launch import version_line

        print(version_line())
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Batch captioning and transcription with Gemma 4 Unified on vLLM."""


model_app = typer.Typer(help="Model utilities: tiny test checkpoint, parity check.", no_args_is_help=True)
app.add_typer(model_app, name="model")
model_app.command("verify")(verify)

app.command("caption")(
    make_job_command(
        job_command,
        "Caption every image, video and audio item in INPUT; one record per item.",
        task="caption",
    )
)
app.command("transcribe")(
    make_job_command(
        job_command,
        "Transcribe speech (audio files, or the soundtrack of videos) in INPUT; long files are cut into "
        "≤30 s windows and stitched into one record with `segments`.",
        task="transcribe",
        modality=["audio", "video"],
        max_tokens=448,
    )
)


app.command("run")(run_recipe)
app.command("run-batch")(run_batch)


@app.command("inspect")
def inspect(
    input: Annotated[Path | None, typer.Argument(help="Folder, manifest or saved dataset.")] = None,
    dataset: Annotated[str | None, typer.Option(help="HF `datasets` loader or hub id.")] = None,
    split: Annotated[str | None, typer.Option(help="Dataset split.")] = None,
    column: Annotated[str | None, typer.Option(help="Media column.")] = None,
    allow_root: Annotated[list[Path] | None, typer.Option(help="Extra folder manifest rows may read from.")] = None,
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


@app.command("status")
def status(
    out: Annotated[Path, typer.Argument(help="Output folder of a gemma4u job.")],
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
    count_pending: Annotated[
        bool, typer.Option(help="Also enumerate the input to count items without a record (reads the input's listing).")
    ] = False,
) -> None:
    """Done, errors, throughput, last update, whether a run is active (from OUT's index: no
    record is read); with --count-pending, how many input items have no record yet."""
    import json

    from ..store.layout import OutLayout
    from ..store.ledger import age, read_status

    layout = OutLayout(out)
    if not layout.meta.exists():
        raise UsageError(f"{out} is not a gemma4u output folder")
    st = read_status(layout)
    if count_pending and st.input and layout.run_manifest.exists():
        st.pending = _count_pending(layout)
    if json_out:
        print(json.dumps(st.to_dict(), default=str))
        return
    from rich.table import Table

    t = Table(title=f"gemma4u status: {out}", show_header=False)
    state = "running" if st.active else ("complete" if st.complete else "incomplete (rerun to resume)")
    t.add_row("state", state)
    t.add_row("model", str(st.model))
    t.add_row("input", str(st.input))
    t.add_row("records (current)", str(st.records))
    t.add_row("done", str(st.done))
    t.add_row("errors", str(st.errors))
    for kind, n in sorted(st.errors_by_kind.items()):
        t.add_row(f"  {kind}", str(n))
    t.add_row("pending", "?" if st.pending is None else str(st.pending))
    t.add_row("superseded records", str(st.superseded))
    t.add_row("parts / writers", f"{st.parts} / {len(st.writers)} ({st.active_writers} active)")
    t.add_row("throughput", "-" if st.throughput is None else f"{st.throughput:.2f} records/s")
    t.add_row("last update", age(st.last_update))
    Console(highlight=False).print(t)


def _count_pending(layout: Any) -> int | None:
    """Input items with no current record for one of their tasks (None if the input is gone)."""
    import json

    from ..sources.job_input import JobInput
    from ..store.index import OutIndex

    man = json.loads(layout.run_manifest.read_text())
    try:
        config = JobConfig(**{**man["config"], "output": str(layout.root)})
        with OutIndex(layout) as index:

            def has_record(item: Any) -> bool:
                return all(index.get(item.id, t) is not None for t in config.tasks_of(item))

            return JobInput(config).count_missing(has_record)
    except (UsageError, ValidationError, KeyError):
        return None


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Argument(help="Output folder of a gemma4u job.")],
    to: Annotated[
        Path,
        typer.Option(
            "--to",
            help="A folder for the Hugging Face Hub layout (data/*.parquet + README.md card), "
            "or a FILE.jsonl|.parquet|.csv for the flat current table.",
        ),
    ],
    media: Annotated[
        bool, typer.Option("--media/--no-media", help="Folder export: include the original media files.")
    ] = True,
    split: Annotated[str, typer.Option(help="Folder export: the split name.")] = "train",
    max_shard_size: Annotated[
        str, typer.Option(help="Folder export: largest Parquet file (e.g. 500MB, 2GB).")
    ] = "500MB",
    include_errors: Annotated[
        bool, typer.Option("--include-errors", help="Also export records that have an error.")
    ] = False,
    columns: Annotated[
        str | None, typer.Option(help="File export: the columns to write, comma-separated (default: all).")
    ] = None,
    push_to_hub: Annotated[
        str | None,
        typer.Option("--push-to-hub", metavar="REPO", help="Upload the exported folder to this Hub dataset repo."),
    ] = None,
    private: Annotated[
        bool, typer.Option("--private", help="With --push-to-hub: create the repo private (else: the Hub's default).")
    ] = False,
    revision: Annotated[
        str | None, typer.Option(help="With --push-to-hub: the branch to upload to (created if missing).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --to folder or file.")] = False,
) -> None:
    """Export current records: a Hub-ready dataset folder with the media, or one flat file."""
    from ..export.dataset import FILE_SUFFIXES, ExportOptions, export, parse_size
    from ..export.hub import push_to_hub as push

    is_file = to.suffix.lower() in FILE_SUFFIXES
    if push_to_hub and is_file:
        raise UsageError("--push-to-hub uploads a folder: give --to a folder, not a file")
    if (private or revision) and not push_to_hub:
        raise UsageError("--private and --revision go with --push-to-hub")
    opts = ExportOptions(
        media=media,
        split=split,
        max_shard_size=parse_size(max_shard_size),
        include_errors=include_errors,
        columns=[c.strip() for c in columns.split(",") if c.strip()] if columns else None,
        overwrite=overwrite,
    )
    res = export(out, to, opts)
    skipped = f"; {res.excluded_errors} with errors left out" if res.excluded_errors else ""
    if is_file:
        err.print(f"Exported {res.rows} records to {to}{skipped}.", soft_wrap=True)
        return
    media_note = ", ".join(f"{n} {k}" for k, n in res.media.items()) or "no media"
    missing = f", {res.media_missing} without media (file gone or changed)" if res.media_missing else ""
    err.print(
        f"Exported {res.rows} records ({media_note}{missing}) to {to} in {len(res.shards)} file(s){skipped} "
        "(load with datasets.load_dataset).",
        soft_wrap=True,
    )
    if push_to_hub:
        url = push(to, push_to_hub, private=private, revision=revision)
        err.print(f"Pushed {to} to the dataset repo {push_to_hub}: {url}", soft_wrap=True)


@app.command("compact")
def compact_cmd(out: Annotated[Path, typer.Argument(help="Output folder of a gemma4u job.")]) -> None:
    """Rewrite OUT's data into few large files of current records only (runs do this at their end;
    use it after --shard runs, or after a run that was killed)."""
    from ..store.compaction import compact_out
    from ..store.layout import OutLayout

    layout = OutLayout(out)
    if not layout.meta.exists():
        raise UsageError(f"{out} is not a gemma4u output folder")
    res = compact_out(layout)
    removed = f"{res.dropped} superseded record(s) removed"
    err.print(f"{out}: {res.parts_before} data part(s) → {res.parts_after}; {removed}.", soft_wrap=True)


@app.command("report")
def report_cmd(
    out: Annotated[Path, typer.Argument(help="Output folder of a gemma4u job.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The HTML file to write (default: OUT/__report__/report.html)."),
    ] = None,
    sample: Annotated[int, typer.Option(help="Items in the grid (a seeded sample of the current records).")] = 200,
    seed: Annotated[int, typer.Option(help="Sample seed: the same seed shows the same items.")] = 0,
    filter: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="Sample only records matching: error, error=KIND, flag, flag=NAME, task=NAME, modality=NAME "
            "(repeat to combine).",
        ),
    ] = None,
) -> None:
    """Write one self-contained HTML page to review a run: its facts, plots, errors and flags grouped,
    and a sampled grid of items (thumbnails, waveforms, captions, transcripts)."""
    from ..report.page import ReportOptions, write_report

    if sample < 0:
        raise UsageError("--sample must be 0 or more")
    res = write_report(out, output, ReportOptions(sample=sample, seed=seed, filters=tuple(filter or ())))
    err.print(
        f"Wrote {res.path} ({res.bytes / 1e6:.1f} MB): {res.sampled} of {res.matched} matching records "
        f"shown, {res.records} in all, in {res.seconds:.1f} s.",
        soft_wrap=True,
    )


@model_app.command("tiny")
def model_tiny(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the checkpoint into.")],
    seed: Annotated[int, typer.Option(help="Weight seed (same seed → same checkpoint).")] = 0,
) -> None:
    """Write a tiny random-weight Gemma 4 Unified checkpoint (a few MB).

    Its outputs are meaningless text: it exists to run the real code paths offline.
    """
    from ..verify.tiny_model import build_tiny_checkpoint

    if out_dir.exists() and not out_dir.is_dir():
        fail(f"not a folder: {out_dir}")
    try:
        build_tiny_checkpoint(out_dir, seed=seed)
    except PermissionError as exc:
        fail(f"cannot write {out_dir}: {exc.strerror}")
    err.print(f"Wrote tiny Gemma 4 Unified checkpoint to {out_dir} (random weights: its text is meaningless).")


def _exit_code(exc: Exception) -> int:
    """The documented exit code for a known failure (most specific class first)."""
    for cls, code in (
        (OutputLocked, ExitCode.LOCKED),
        (UsageError, ExitCode.USAGE),
        (OutputError, ExitCode.OUTPUT_ERROR),
        (EngineFailure, ExitCode.ENGINE_FAILED),
    ):
        if isinstance(exc, cls):
            return code
    return ExitCode.FAILED


def _leave(code: int | None) -> NoReturn:
    """Exit with `code`. Once vLLM has run in this process, skip the interpreter's teardown:
    after the engine is shut down (every record committed before that) it spent ~2 s in
    native destructors. stdio is flushed and the atexit handlers run first; not under Ray,
    whose handlers stop the local cluster it may have started."""
    if "vllm" not in sys.modules or "gemma4u_batch.scale.ray_runner" in sys.modules:
        sys.exit(code)
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code or 0)


def main() -> None:
    """Console entry point: usage errors are one line, never a traceback."""
    try:
        rc = app(standalone_mode=False)
        _leave(rc if isinstance(rc, int) else 0)
    except (UsageError, OutputError, EngineFailure) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)  # text in [] is not markup
        _leave(_exit_code(exc))
    except typer.Exit as exc:
        _leave(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        _leave(ExitCode.INTERRUPTED)
    except Exception as exc:
        # Click's usage errors (typer vendors click, so match by shape, not by class).
        if callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int):
            err.print(f"[bold red]error:[/] {escape(exc.format_message())}", soft_wrap=True)  # type: ignore[attr-defined]
            _leave(exc.exit_code)  # type: ignore[attr-defined]
        raise

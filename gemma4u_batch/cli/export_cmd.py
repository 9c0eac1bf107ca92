"""`gemma4u export OUT --to DEST`: current records as a Hub dataset folder or one flat file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .launch import err
from .options import OutFolder, out_location


def export_cmd(
    out: OutFolder,
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
    include_tombstones: Annotated[
        bool,
        typer.Option(
            "--include-tombstones", help="Also export tombstones: records --prune retired (their input is gone)."
        ),
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
        include_tombstones=include_tombstones,
        columns=[c.strip() for c in columns.split(",") if c.strip()] if columns else None,
        overwrite=overwrite,
    )
    res = export(out_location(out), to, opts)
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

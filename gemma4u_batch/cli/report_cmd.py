"""`gemma4u report OUT`: one self-contained HTML page to review a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .launch import err
from .options import OutFolder, out_location


def report_cmd(
    out: OutFolder,
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
    opts = ReportOptions(sample=sample, seed=seed, filters=tuple(filter or ()))
    res = write_report(out_location(out), output, opts)
    err.print(
        f"Wrote {res.path} ({res.bytes / 1e6:.1f} MB): {res.sampled} of {res.matched} matching records "
        f"shown, {res.records} in all, in {res.seconds:.1f} s.",
        soft_wrap=True,
    )

"""`gemma4u run RECIPE.yaml`: run (or plan, or time) a job described by a recipe file.

The recipe resolves into the same JobConfig as `caption`/`transcribe` flags, and the
same `run_and_report` runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..console import USER_STDERR
from ..errors import ExitCode, UsageError
from .launch import check_progress, engine_overrides, run_and_report
from .options import ON_MODEL_CHANGE, EngineFlags, LogFile, ModelChange, Progress, Verbose, engine_options


@engine_options
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe file (YAML) describing the job; see docs/recipes.md.")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override a recipe key (dotted for nested keys, value parsed as YAML), e.g. "
            "--set sampling.temperature=0.7 --set format=both. Repeatable.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model path or HF id (overrides the recipe's model).")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the resolved plan (items per modality, estimated prompt tokens, "
            "outputs) and exit without loading the model.",
        ),
    ] = False,
    estimate: Annotated[
        int | None,
        typer.Option(
            "--estimate",
            metavar="N",
            help="Run N sampled items for real (into a temporary folder) and project the full job's time.",
        ),
    ] = None,
    sample: Annotated[
        int, typer.Option(help="Items per modality decoded by --dry-run to estimate tokens.", min=0)
    ] = 16,
    json_out: Annotated[
        bool, typer.Option("--json", help="With --dry-run or --estimate: machine-readable JSON on stdout.")
    ] = False,
    progress: Progress = "rich",
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit 3 when the job has any error record (also `strict: true` in the recipe).",
        ),
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Retire the records whose input is gone with a tombstone each (also `prune: true` in the recipe).",
        ),
    ] = False,
    on_model_change: Annotated[ModelChange | None, ON_MODEL_CHANGE] = None,
    verbose: Verbose = False,
    log_file: LogFile = None,
    *,
    engine_flags: EngineFlags,
) -> None:
    """Run the job a recipe file describes (incremental: a rerun only does new or changed items)."""
    from ..plan.estimate import estimate as run_estimate
    from ..plan.estimate import print_estimate
    from ..plan.plan import plan, print_plan, print_resolved_config
    from ..plan.recipes import load_recipe

    check_progress(progress)
    if dry_run and estimate is not None:
        raise UsageError("--dry-run and --estimate cannot be used together (--estimate runs the model)")
    if estimate is not None and estimate < 1:
        raise UsageError("--estimate needs a number of items ≥ 1")
    if json_out and not dry_run and estimate is None:
        raise UsageError("--json applies to --dry-run and --estimate (use --progress json for a run)")

    config = load_recipe(recipe, set_ or [], model)
    config = config.model_copy(update={"engine": engine_overrides(config.engine, engine_flags)})
    if strict:
        config = config.model_copy(update={"strict": True})
    if prune:
        config = config.model_copy(update={"prune": True})
    if on_model_change is not None:  # else the recipe's on_model_change
        config = config.model_copy(update={"on_model_change": on_model_change})
    out = Console(highlight=False)
    if not out.is_terminal:  # logs and pipes: wide enough that the plan's tables do not wrap
        out.width = max(out.width, 120)
    if dry_run:
        p = plan(config, sample=sample, recipe=str(recipe))
        if json_out:
            print(json.dumps(p.to_dict(), default=str))
        else:
            print_plan(p, out)
            print_resolved_config(config, out)
        if p.refused:
            raise UsageError(p.refused)
        return
    if estimate is not None:
        from ..console import engine_output

        err = Console(file=USER_STDERR, highlight=False)
        with engine_output(verbose=verbose, log_file=log_file):
            est = run_estimate(config, estimate, console=None if json_out else err)
        if json_out:
            print(json.dumps(est.to_dict(), default=str))
        else:
            print_estimate(est, out)
        if est.interrupted:
            raise typer.Exit(ExitCode.INTERRUPTED)
        return

    run_and_report(config, progress, verbose=verbose, log_file=log_file)

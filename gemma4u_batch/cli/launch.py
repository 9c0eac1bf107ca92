"""What the commands share: from flags (or a recipe) to a finished job (one config, one runner,
one summary), and the console gemma4u's own messages go to."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from ..config.engine_args import parse_engine_args
from ..config.job import EngineConfig, JobConfig, SamplingConfig
from ..console import USER_STDERR
from ..errors import ExitCode, UsageError, validation_message

# gemma4u's own messages: the terminal's stderr, even while a run diverts the engine's log lines.
err = Console(file=USER_STDERR, highlight=False)

DATA_FORMATS = ("jsonl", "parquet", "both")
SUBTITLE_FORMATS = ("txt", "srt", "vtt", "tsv", "json")
PROGRESS_MODES = ("rich", "json", "quiet")
DISPLAY_FLAGS = ("progress", "verbose", "log_file")
"""Flags about what the user sees: not part of the job's config."""


def check_progress(progress: str) -> None:
    if progress not in PROGRESS_MODES:
        raise UsageError(f"invalid --progress {progress!r}: use rich, json or quiet")


def fail(message: str, code: int = ExitCode.USAGE) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _split_format(value: str) -> tuple[str, list[str]]:
    """'jsonl,srt,vtt' → ('jsonl', ['srt', 'vtt'])."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    data = [p for p in parts if p in DATA_FORMATS]
    subs = [p for p in parts if p in SUBTITLE_FORMATS]
    unknown = [p for p in parts if p not in DATA_FORMATS + SUBTITLE_FORMATS]
    if unknown or len(data) > 1:
        raise UsageError(
            f"invalid --format {value!r}: use one of jsonl, parquet, both, plus any of {', '.join(SUBTITLE_FORMATS)}"
        )
    return (data[0] if data else "jsonl"), subs


def config_from_flags(kw: dict[str, Any]) -> JobConfig:
    """CLI flags → JobConfig; a bad value is a usage error naming the option."""
    from ..prompting.structured import load_schema

    kw = dict(kw)
    for name in DISPLAY_FLAGS:
        kw.pop(name, None)
    fmt, subtitles = _split_format(kw.pop("format"))
    kw["engine_args"] = parse_engine_args(kw.pop("engine_arg", None) or [])
    sampling = {k: kw.pop(k) for k in list(kw) if k in SamplingConfig.model_fields}
    sampling["stop"] = sampling.get("stop") or []
    engine = {k: v for k in list(kw) if k in EngineConfig.model_fields and (v := kw.pop(k)) is not None}
    kw["allow_roots"] = kw.pop("allow_root") or []
    kw["modalities"] = kw.pop("modality") or None
    kw["video_fps"] = kw.pop("fps")
    if kw.get("json_schema") is not None:
        kw["json_schema"] = load_schema(kw["json_schema"])  # inlined: the guard compares content
    if isinstance(kw.get("choices"), str):
        kw["choices"] = [c.strip() for c in kw["choices"].split(",") if c.strip()]
    if isinstance(kw.get("tasks"), str):
        kw["tasks"] = [t.strip() for t in kw["tasks"].split(",") if t.strip()] or None
    try:
        return JobConfig(
            sampling=SamplingConfig(**sampling),
            engine=EngineConfig(**engine),
            format=cast(Any, fmt),
            subtitles=cast(Any, subtitles),
            **kw,
        )
    except ValidationError as exc:
        raise UsageError(validation_message(exc)) from None


def engine_overrides(engine: EngineConfig, flags: dict[str, Any]) -> EngineConfig:
    """`run`'s and `run-batch`'s engine flags over an EngineConfig: a flag left at its default
    keeps the recipe's value; --engine-arg keys join (and override) the recipe's engine_args."""
    update = {k: v for k, v in flags.items() if k != "engine_arg" and v is not None and v != "auto"}
    extra = parse_engine_args(flags.get("engine_arg") or [])
    if extra:
        update["engine_args"] = {**engine.engine_args, **extra}
    try:
        return EngineConfig(**{**engine.model_dump(), **update})
    except ValidationError as exc:
        raise UsageError(validation_message(exc)) from None


def run_and_report(config: JobConfig, progress: str, *, verbose: bool = False, log_file: Path | None = None) -> None:
    """Run the job here or on Ray replicas, then print the summary (or why nothing ran).
    The engine's own log lines are kept off the terminal unless `verbose` (see console.py)."""
    from ..console import Reporter, engine_output
    from ..job.job import run_job

    check_progress(progress)
    if config.ray is None and config.replicas > 1:
        raise UsageError("--replicas needs --ray (one engine per process otherwise)")
    reporter = Reporter("quiet" if config.quiet else progress)
    with engine_output(verbose=verbose, log_file=log_file):
        if config.ray is not None:
            from ..scale.ray_runner import run_on_ray

            summary = run_on_ray(config, reporter=reporter)
        else:
            summary = run_job(config, reporter=reporter)
    if summary.already_complete:
        err.print(f"Nothing to do: all {summary.skipped} items in {config.output} are already done.")
    elif not config.quiet:
        from .summary import print_summary

        print_summary(err, summary, config)
    if summary.missing_inputs and not config.quiet:
        err.print(
            f"{summary.missing_inputs} record(s) in {config.output} have no input any more; "
            "--prune retires them (see `gemma4u status`).",
            soft_wrap=True,
        )
    if summary.interrupted:
        raise typer.Exit(ExitCode.INTERRUPTED)
    if config.strict:
        _strict_check(config)


def _strict_check(config: JobConfig) -> None:
    """--strict: exit 3 when the job has error records (this run's, or earlier ones it skipped)."""
    from ..store.layout import OutLayout
    from ..store.ledger import read_status

    st = read_status(OutLayout(config.output))
    if st.errors:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(st.errors_by_kind.items()))
        err.print(
            f"[bold red]error:[/] {st.errors} item(s) in {config.output} have error records ({kinds}); "
            "--strict exits 3 (see `gemma4u status`; --retry-errors redoes them)",
            soft_wrap=True,
        )
        raise typer.Exit(ExitCode.ITEM_ERRORS)

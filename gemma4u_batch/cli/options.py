"""Options more than one command takes, declared once.

Typer reads a command's options from its signature. An option whose help panel differs between
commands is declared here without one; `in_panel` files it under a panel where a command wants
that. The engine's wider surface is seven options that `engine_options` splices into a command's
signature, at the same place in each.

No `from __future__ import annotations`: the signatures built here are read by Typer as they
are, so their annotations must be objects, not strings.
"""

import functools
import inspect
from collections.abc import Callable
from copy import copy
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer

from ..config.urls import path_or_url

# Help panels of `caption` and `transcribe` (and of the engine options wherever they appear).
H_IN = "Input"
H_TASK = "Task and prompt"
H_MEDIA = "Media"
H_GEN = "Sampling"
H_ENG = "Engine"
H_OUT = "Output and resume"
H_LIM = "Limits (per item; see docs/limits.md)"
H_LOG = "Messages"

VERBOSE = typer.Option("--verbose", "-v", help="Show vLLM's and torch's own log lines too.")
LOG_FILE = typer.Option(help="Append vLLM's and torch's log lines (INFO and up) to this file.")
PROGRESS = typer.Option(help="rich, json or quiet.")
ON_MODEL_CHANGE = typer.Option(
    "--on-model-change",
    help="When OUT was made with another model: refuse (exit 2), or supersede its records item by item "
    "(they stay current until redone; also moves a pinned hub id to its newer commit).",
)

Verbose = Annotated[bool, VERBOSE]
LogFile = Annotated[Path | None, LOG_FILE]
Progress = Annotated[str, PROGRESS]
ModelChange = Literal["refuse", "supersede"]
OutFolder = Annotated[str, typer.Argument(help="Output folder of a gemma4u job, or its object-store URL.")]


def out_location(text: str) -> Path | str:
    """OUT as typed: a URL stays text (a Path would drop a `/`), anything else a local path."""
    return path_or_url(text)


def in_panel(option: Any, panel: str) -> Any:
    """`option` listed under the help panel `panel` (its declaration stays the one above)."""
    shown = copy(option)
    shown.rich_help_panel = panel
    return shown


def engine_surface(
    *,
    quantization: Annotated[
        str | None,
        typer.Option(
            help="Weight quantization method (vLLM's --quantization: awq, gptq, fp8, bitsandbytes, …).",
            rich_help_panel=H_ENG,
        ),
    ] = None,
    kv_cache_dtype: Annotated[
        str,
        typer.Option(
            help="KV cache dtype (auto, bfloat16, fp8, fp8_e4m3, fp8_e5m2); fp8 makes image attention inexact on CPU.",
            rich_help_panel=H_ENG,
        ),
    ] = "auto",
    revision: Annotated[
        str | None, typer.Option(help="Model revision on the hub (branch, tag or commit).", rich_help_panel=H_ENG)
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer path or HF id (default: the model's).", rich_help_panel=H_ENG)
    ] = None,
    download_dir: Annotated[
        str | None, typer.Option(help="Folder hub weights are downloaded to.", rich_help_panel=H_ENG)
    ] = None,
    lora: Annotated[
        str | None,
        typer.Option(
            "--lora", metavar="PATH", help="PEFT LoRA adapter folder applied to every request.", rich_help_panel=H_ENG
        ),
    ] = None,
    engine_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--engine-arg",
            metavar="KEY=VALUE",
            help="Any other vLLM EngineArgs field (value parsed as JSON, else text), e.g. "
            "--engine-arg enable_prefix_caching=false. Repeatable.",
            rich_help_panel=H_ENG,
        ),
    ] = None,
) -> None:
    """The engine's wider surface (config/engine_args.py), taken by caption/transcribe, run and
    run-batch: a signature template (never called) that `engine_options` splices into theirs."""


ENGINE_SURFACE = tuple(inspect.signature(engine_surface).parameters)
"""The engine-surface options, by parameter name."""

EngineFlags = dict[str, Any]
"""The engine-surface options' values, by parameter name (what `engine_options` passes)."""

R = TypeVar("R")


def engine_options(command: Callable[..., R]) -> Callable[..., R]:
    """`command` with the engine-surface options in place of its `engine_flags` parameter (so
    each command lists them where it declares that); the body gets their values as that one dict."""
    sig = inspect.signature(command, eval_str=True)
    params = list(sig.parameters.values())
    at = [p.name for p in params].index("engine_flags")
    kind = params[at].kind
    params[at : at + 1] = [p.replace(kind=kind) for p in inspect.signature(engine_surface).parameters.values()]

    @functools.wraps(command)
    def with_engine_flags(*args: Any, **kwargs: Any) -> R:
        flags = {name: kwargs.pop(name) for name in ENGINE_SURFACE}
        return command(*args, engine_flags=flags, **kwargs)

    with_engine_flags.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return with_engine_flags

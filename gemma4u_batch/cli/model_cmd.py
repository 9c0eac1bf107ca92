"""`gemma4u model tiny` and `gemma4u model verify` (registered on the `model` sub-app by app.py).

`model tiny` writes a tiny random-weight checkpoint, to run the real code paths offline.

`model verify`: does this vLLM setup compute what the reference model computes? It runs a
text, image, two-image, audio and video prompt through vLLM and through transformers
(float32) and prints, per prompt, the largest |Δ logprob| and whether the greedy
continuations agree. Exit 0 when every prompt agrees within the tolerance, 1 otherwise, 2 on
a usage error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..config.job import DEFAULT_MODEL
from ..errors import ExitCode, UsageError

if TYPE_CHECKING:
    from ..verify.parity import ModalityReport


def _fmt(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2e}"


def _greedy(report: ModalityReport) -> str:
    """Where the greedy continuations part, as a table cell."""
    if report.greedy_match:
        return "same"
    if report.first_divergence is not None:
        return f"differs at {report.first_divergence}"
    return "-"


def _report_table(model: str, reports: list[ModalityReport], max_tokens: int) -> Table:
    """One row per prompt: the numbers a reader needs to judge a failure at a glance."""
    table = Table(title=f"vLLM vs transformers: {model}", title_justify="left")
    table.add_column("prompt", no_wrap=True)
    table.add_column("modality", no_wrap=True)
    table.add_column("tokens", justify="right")
    table.add_column("max|Δ lp| first", justify="right", no_wrap=True)
    table.add_column(f"max|Δ lp| {max_tokens} steps", justify="right", no_wrap=True)
    table.add_column(f"greedy {max_tokens}", no_wrap=True)
    table.add_column("result")
    for r in reports:
        result = "[green]ok[/]" if r.ok else f"[bold red]FAIL[/] {r.error or ''}".rstrip()
        table.add_row(
            r.name,
            r.modality,
            str(r.num_prompt_tokens),
            _fmt(r.first_token_max_abs_diff),
            _fmt(r.max_abs_diff),
            _greedy(r),
            result,
        )
    return table


def verify(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model path or Hugging Face id."),
    tolerance: float = typer.Option(
        1e-4, help="Largest |Δ logprob| accepted (meant for --dtype float32; loosen it for bf16)."
    ),
    max_tokens: int = typer.Option(16, min=1, help="Greedy continuation length compared."),
    dtype: str = typer.Option("float32", help="Engine dtype (the reference always runs in float32)."),
    image_tokens: int = typer.Option(280, help="Soft tokens per image: 70/140/280/560/1120."),
    reference_device: str = typer.Option("cpu", help="Device for the transformers reference (cpu, cuda)."),
    gpu_memory_utilization: float | None = typer.Option(
        None, help="Engine memory share (default 0.15 on CPU, 0.45 on GPU to leave room for the reference)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the reports as JSON on stdout."),
) -> None:
    """Check vLLM against transformers on text, image, two-image, audio and video prompts.

    Both run in float32 on synthetic media; the reference uses Gemma 4's official vision
    attention (image blocks bidirectional on sliding layers). Needs memory for the model twice.
    """
    from ..config.job import IMAGE_TOKEN_BUDGETS
    from ..engine.vllm_engine import check_model_path

    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    if image_tokens not in IMAGE_TOKEN_BUDGETS:
        raise UsageError(f"invalid value for image_tokens: must be one of {', '.join(map(str, IMAGE_TOKEN_BUDGETS))}")
    check_model_path(model)
    from ..engine.plugin import describe
    from ..verify.parity import verify_model

    err.print(f"Verifying {model} against transformers (float32 reference; this starts a vLLM engine)...")
    reports, status = verify_model(
        model,
        tolerance=tolerance,
        max_tokens=max_tokens,
        dtype=dtype,
        image_tokens=image_tokens,
        reference_device=reference_device,
        gpu_memory_utilization=gpu_memory_utilization,
    )
    all_ok = all(r.ok for r in reports)
    if json_out:
        print(json.dumps({"ok": all_ok, "reports": [r.to_dict() for r in reports], "plugin": status}, indent=2))
    else:
        out.print(_report_table(model, reports, max_tokens))
        out.print(f"tolerance {tolerance:g}; bidirectional attention: {describe(status)}", soft_wrap=True)
    for problem in status.get("problems", []):
        err.print(f"[bold yellow]warning:[/] {problem}", soft_wrap=True)
    if not all_ok:
        err.print("[bold red]Parity check failed[/]: see the reports above.")
        raise typer.Exit(ExitCode.FAILED)


def tiny(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the checkpoint into.")],
    seed: Annotated[int, typer.Option(help="Weight seed (same seed → same checkpoint).")] = 0,
) -> None:
    """Write a tiny random-weight Gemma 4 Unified checkpoint (a few MB).

    Its outputs are meaningless text: it exists to run the real code paths offline.
    """
    from ..verify.tiny_model import build_tiny_checkpoint
    from .launch import err, fail

    if out_dir.exists() and not out_dir.is_dir():
        fail(f"not a folder: {out_dir}")
    try:
        build_tiny_checkpoint(out_dir, seed=seed)
    except PermissionError as exc:
        fail(f"cannot write {out_dir}: {exc.strerror}")
    err.print(f"Wrote tiny Gemma 4 Unified checkpoint to {out_dir} (random weights: its text is meaningless).")

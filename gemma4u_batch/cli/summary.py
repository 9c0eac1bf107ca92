"""End-of-run summary table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_summary(console: Console, summary: Any, config: Any) -> None:
    table = Table(title="gemma4u run", show_header=False)
    table.add_row("output", str(config.output))
    table.add_row("records written", str(summary.done))
    if summary.reused:
        table.add_row("  copied (same content, no engine)", str(summary.reused))
    table.add_row("errors", str(summary.errors))
    table.add_row("already done (skipped)", str(summary.skipped))
    if summary.pruned:
        table.add_row("pruned (input gone: tombstones)", str(summary.pruned))
    rate = summary.done / summary.elapsed_s if summary.elapsed_s else 0.0
    table.add_row("elapsed", f"{summary.elapsed_s:.1f} s ({rate:.2f} items/s)")
    for kind, n in sorted(summary.errors_by_kind.items()):
        table.add_row(f"  error: {kind}", str(n))
    if summary.interrupted:
        table.add_row("status", "interrupted — rerun the same command to resume")
    console.print(table)

"""`gemma4u run --estimate N`: run N sampled items for real into a temporary OUT and project the
full job's time (the one place in planning that starts the engine).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..config.job import JobConfig
from ..errors import UsageError
from ..job.job import run_job
from ..records import WorkItem
from ..sources.job_input import JobInput
from .scan import InputScan, scan_input


@dataclass
class Estimate:
    sampled: int
    total_items: int
    pending_items: int | None
    records: int = 0
    errors: int = 0
    records_per_item: float = 1.0  # one record per task: tasks per sampled item
    startup_s: float = 0.0  # tokenizer + engine start (paid once per run)
    elapsed_s: float = 0.0  # the whole sample run, start-up included
    per_record_s: float = 0.0
    per_item_s: float = 0.0  # per record × records per item (all of an item's tasks)
    projected_s: float = 0.0  # start-up + per item × all items
    projected_pending_s: float | None = None  # start-up + per item × items not yet in OUT
    sample_modalities: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def estimate(config: JobConfig, n: int, engine: Any = None, console: Console | None = None) -> Estimate:
    """Run n deterministically sampled items for real (into a temporary OUT) and project
    the full job's time. Starts the engine unless one is given."""
    from ..console import Reporter
    from ..engine.vllm_engine import check_model_path

    if n < 1:
        raise UsageError("--estimate needs a number of items ≥ 1")
    check_model_path(config.model)
    scan = scan_input(config, per_modality=0, overall=n)
    assert scan.overall is not None
    items = scan.overall.ordered()
    if not items:
        raise UsageError(f"no usable items in {config.dataset or config.input} to estimate with")
    est = Estimate(sampled=len(items), total_items=scan.items, pending_items=scan.pending)
    est.records_per_item = sum(len(config.tasks_of(it)) for it in items) / len(items)
    job_input = JobInput(config)
    for it in items:
        mod = job_input.as_sent(it).modality
        assert mod is not None
        est.sample_modalities[mod.value] = est.sample_modalities.get(mod.value, 0) + 1
    with tempfile.TemporaryDirectory(prefix="gemma4u-estimate-") as tmp:
        sample_cfg = config.model_copy(
            update={
                "output": Path(tmp) / "out",
                "overwrite": True,
                "retry_errors": False,
                "quiet": True,
                "subtitles": [],
                "shard": None,
                "ray": None,
                "replicas": 1,
            }
        )
        if console is not None:
            console.print(f"Running {len(items)} sampled item(s) for real (engine start-up included)…")
        summary, startup_s = _run_sample(sample_cfg, items, engine, Reporter("quiet"))
    est.records, est.errors, est.interrupted = summary.done, summary.errors, summary.interrupted
    est.elapsed_s = summary.elapsed_s
    est.startup_s = startup_s
    # An item costs all its records (one per task): time per record × records per item.
    est.per_record_s = max(est.elapsed_s - est.startup_s, 0.0) / max(est.records, 1)
    est.per_item_s = est.per_record_s * est.records_per_item
    est.projected_s = est.startup_s + est.per_item_s * est.total_items
    if est.pending_items is not None and not config.overwrite:
        est.projected_pending_s = est.startup_s + est.per_item_s * est.pending_items
    _estimate_assumptions(est, config, scan)
    return est


def _run_sample(config: JobConfig, items: list[WorkItem], engine: Any, reporter: Any) -> tuple[Any, float]:
    """(summary, engine start-up seconds) of a run of `items` on the given or a new engine."""
    from ..engine.vllm_engine import open_engine

    if engine is not None:
        before = engine.startup_s
        return run_job(config, engine, items=items, reporter=reporter), engine.startup_s - before
    with open_engine(config) as owned:
        return run_job(config, owned, items=items, reporter=reporter), owned.startup_s


def _estimate_assumptions(est: Estimate, config: JobConfig, scan: InputScan) -> None:
    a = est.assumptions
    a.append(
        f"the {est.sampled} item(s) were drawn uniformly from the {est.total_items} (fixed seed, same sample every "
        "time); the job's mix of modalities and file sizes is assumed to match the sample's"
    )
    missing = sorted(set(scan.sent) - set(est.sample_modalities))
    if missing:
        a.append(f"no {', '.join(missing)} item was sampled: their cost is not in the projection (raise N)")
    a.append(f"engine start-up ({est.startup_s:.1f} s) is paid once per run and is not in the per-item time")
    if est.records_per_item != 1:
        a.append(
            f"each item is {est.records_per_item:g} records (one per task): the per-item time is the "
            "per-record time × that"
        )
    sample_requests = round(est.sampled * est.records_per_item)
    if sample_requests < config.engine.max_num_seqs:
        a.append(
            f"the sample kept at most {sample_requests} request(s) in flight; a full job keeps up to max_num_seqs="
            f"{config.engine.max_num_seqs} busy, so real throughput is usually higher: read this as an upper bound"
        )
    if est.errors:
        a.append(f"{est.errors} sampled item(s) ended as error records (counted like the others)")
    if est.pending_items is not None and not config.overwrite:
        a.append(f"a rerun into the same OUT skips items already done: {est.pending_items} are pending")


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def print_estimate(est: Estimate, console: Console) -> None:
    t = Table(title="gemma4u estimate", show_header=False, title_justify="left")
    mix = ", ".join(f"{k} {v}" for k, v in sorted(est.sample_modalities.items()))
    t.add_row("sample run for real", f"{est.sampled} item(s): {mix}")
    t.add_row("records (errors)", f"{est.records} ({est.errors})")
    t.add_row("engine start-up", _duration(est.startup_s))
    if est.records_per_item != 1:
        t.add_row("per record", f"{est.per_record_s:.2f} s ({est.records_per_item:g} records per item: one per task)")
    t.add_row("per item", f"{est.per_item_s:.2f} s")
    t.add_row("projected: whole job", f"{_duration(est.projected_s)} for {est.total_items:,} items")
    if est.projected_pending_s is not None:
        t.add_row("projected: pending only", f"{_duration(est.projected_pending_s)} for {est.pending_items:,} items")
    console.print(t)
    console.print("[bold]assumptions[/]")
    for line in est.assumptions:
        console.print(f"• {line}", soft_wrap=True)

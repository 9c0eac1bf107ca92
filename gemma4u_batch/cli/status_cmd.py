"""`gemma4u status OUT`: how far a job is, from OUT's index alone."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from ..config.job import JobConfig
from ..errors import UsageError
from .options import OutFolder, out_location

if TYPE_CHECKING:
    from ..job.quickcheck import InputCount


def status(
    out: OutFolder,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
    count_pending: Annotated[
        bool, typer.Option(help="Also enumerate the input to count items without a record (reads the input's listing).")
    ] = False,
) -> None:
    """Done, errors, throughput, last update, whether a run is active (from OUT's index: no
    record is read); with --count-pending, how many input items have no record yet."""
    import json

    from ..store.layout import RUN_MANIFEST, OutLayout
    from ..store.ledger import age, read_status

    layout = OutLayout(out_location(out))
    if not layout.made():
        raise UsageError(f"{layout.where} is not a gemma4u output folder")
    st = read_status(layout)
    if count_pending and st.input and layout.files.exists(RUN_MANIFEST):
        counted = _count_pending(layout)
        if counted is not None:
            st.pending = counted.pending
            if counted.missing_inputs is not None:  # counted now: fresher than the last run's count
                st.missing_inputs, st.missing_inputs_at = counted.missing_inputs, time.time()
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
    for fp, n in st.records_by_model.items():  # more than one while a model change is under way
        t.add_row(f"  from model {fp}", str(n))
    t.add_row("done", str(st.done))
    if st.reused:
        t.add_row("  copied from the same content", str(st.reused))
    t.add_row("errors", str(st.errors))
    for kind, n in sorted(st.errors_by_kind.items()):
        t.add_row(f"  {kind}", str(n))
    t.add_row("pending", "?" if st.pending is None else str(st.pending))
    t.add_row("input gone", _missing_text(st))
    t.add_row("tombstones (pruned)", str(st.tombstones))
    t.add_row("superseded records", str(st.superseded))
    t.add_row("parts / writers", f"{st.parts} / {len(st.writers)} ({st.active_writers} active)")
    rate = f"{st.throughput:.2f} records/s" if st.throughput is not None else f"- ({st.throughput_note or 'unknown'})"
    t.add_row("throughput", rate)
    t.add_row("started", age(st.started_at))
    t.add_row("finished", age(st.finished_at) if st.finished_at is not None else "-")
    t.add_row("last update", age(st.last_update))
    Console(highlight=False).print(t)


def _missing_text(st: Any) -> str:
    """The records whose input is gone, as the last walk of the whole input counted them."""
    from ..store.ledger import age

    if st.missing_inputs is None:
        return "? (counted by a run that reads the whole input, or --count-pending)"
    if not st.missing_inputs:
        return f"0 (as of {age(st.missing_inputs_at)})"
    n, when = st.missing_inputs, age(st.missing_inputs_at)
    return f"{n} record{'s have' if n != 1 else ' has'} no input any more (as of {when}); --prune retires them"


def _count_pending(layout: Any) -> InputCount | None:
    """The input's pending items for the job OUT's run.json describes, the whole job (every
    shard): what a rerun of it would generate (job/quickcheck.py), and the records whose input
    is gone. None if the input is gone."""
    import json

    from ..job.quickcheck import count_input
    from ..sources.job_input import JobInput
    from ..store.layout import RUN_MANIFEST

    man = json.loads(layout.files.read(RUN_MANIFEST))
    try:
        update = {"output": str(layout.root), "overwrite": False, "shard": None, "ray": None}
        config = JobConfig(**{**man["config"], **update})
        return count_input(config, JobInput(config).chunks(), man["guard"]["model_fingerprint"])
    except (UsageError, ValidationError, KeyError):
        return None

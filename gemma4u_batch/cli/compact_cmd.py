"""`gemma4u compact OUT`: rewrite OUT's data into few large files of current records."""

from __future__ import annotations

from ..errors import UsageError
from .launch import err
from .options import OutFolder, out_location


def compact_cmd(out: OutFolder) -> None:
    """Rewrite OUT's data into few large files of current records only (runs do this at their end;
    use it after --shard runs, or after a run that was killed)."""
    from ..store.compaction import compact_out
    from ..store.layout import OutLayout

    layout = OutLayout(out_location(out))
    if not layout.made():
        raise UsageError(f"{layout.where} is not a gemma4u output folder")
    res = compact_out(layout)
    removed = f"{res.dropped} superseded record(s) removed"
    err.print(f"{out}: {res.parts_before} data part(s) → {res.parts_after}; {removed}.", soft_wrap=True)

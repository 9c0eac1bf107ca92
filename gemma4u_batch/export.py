"""`gemma4u export OUT --to DIR`: the current records as a `datasets`-loadable dataset.

For manifest and dataset inputs the source row's columns (carried in `fields`) become
columns again, so the result is the user's table with our outputs joined on.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UsageError
from .ledger import current_records
from .writer import OutLayout

RESULT_COLUMNS = (
    "id", "key", "source", "modality", "task", "prompt", "text", "finish_reason", "num_prompt_tokens",
    "num_output_tokens", "error", "error_kind", "model", "content_sha256", "segments", "data", "flags",
)  # fmt: skip


def _rows(layout: OutLayout, join_fields: bool) -> Iterator[dict[str, Any]]:
    for rec in current_records(layout):
        row = {c: rec.get(c) for c in RESULT_COLUMNS}
        row["segments"] = json.dumps(row["segments"]) if row["segments"] is not None else None
        row["data"] = json.dumps(row["data"]) if row["data"] is not None else None
        row["flags"] = list(row["flags"] or [])
        fields = rec.get("fields") or {}
        if join_fields:
            for k, v in fields.items():
                name = k if k not in row else f"source_{k}"
                row[name] = v if isinstance(v, str | int | float | bool) or v is None else json.dumps(v)
        else:
            row["fields"] = json.dumps(fields)
        yield row


def export(out: Path, to: Path, overwrite: bool = False) -> int:
    """Write the dataset to `to` (save_to_disk layout); returns the number of rows."""
    import datasets

    layout = OutLayout(out)
    if not layout.commits.exists():
        raise UsageError(f"{out} holds no gemma4u results")
    if to.exists() and any(to.iterdir()):
        if not overwrite:
            raise UsageError(f"{to} exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(to)
    # Field columns vary by row; collect the union first so every row has every column.
    field_names: dict[str, None] = {}
    for rec in current_records(layout, ("fields",)):
        for k in rec.get("fields") or {}:
            field_names.setdefault(k, None)
    join = bool(field_names)

    def gen() -> Iterator[dict[str, Any]]:
        for row in _rows(layout, join):
            for k in field_names:
                name = k if k not in RESULT_COLUMNS else f"source_{k}"
                row.setdefault(name, None)
            yield row

    tmp = to.with_name(to.name + ".incomplete")
    shutil.rmtree(tmp, ignore_errors=True)
    ds = datasets.Dataset.from_generator(gen, cache_dir=str(tmp) + "-cache")
    ds.save_to_disk(str(tmp))
    shutil.rmtree(str(tmp) + "-cache", ignore_errors=True)
    tmp.rename(to)
    return ds.num_rows

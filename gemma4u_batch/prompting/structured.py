"""Structured output: the JSON schema or label list a request is constrained to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config.job import JobConfig
from ..config.tasks import resolve_task
from ..errors import UsageError


def load_schema(value: dict[str, Any] | Path | str | None) -> dict[str, Any] | None:
    """The JSON schema, inline or read from a file, checked once for CLI and recipes alike;
    a usage error starting with `json_schema:` if it is not one."""
    if value is None:
        return None
    if isinstance(value, str | Path):
        value = _read_schema_file(Path(value))
    import jsonschema

    try:
        jsonschema.validators.validator_for(value).check_schema(value)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise UsageError(
            f"json_schema: not a valid JSON schema{' at ' + where if where else ''}: "
            f"{' '.join(exc.message.split())[:200]}"
        ) from None
    return value


def _read_schema_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"json_schema: {'is not a file' if path.exists() else 'file not found'}: {path}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"json_schema: cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"json_schema: {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(value, dict):
        raise UsageError("json_schema: the file must hold a JSON object (a schema)")
    return value


def structured_for(config: JobConfig, schema: dict[str, Any] | None, task: str) -> dict[str, Any] | None:
    """{"choice": [...]}, {"json": schema} or None for one task's requests."""
    if config.choices:
        return {"choice": list(config.choices)}
    if schema is not None:
        return {"json": schema}
    t = resolve_task(task)
    if t is not None and t.json_schema is not None and not config.prompt:
        return {"json": t.json_schema}
    return None

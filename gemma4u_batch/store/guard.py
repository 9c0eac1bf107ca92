"""OUT's settings guard: what run.json records so a later run with other settings or another model is refused."""

from __future__ import annotations

import json
from typing import Any

from ..config.job import JobConfig
from ..prompting.keys import guarded_settings
from .layout import RUN_MANIFEST, OutLayout

OPTIONAL_GUARD_KEYS = ("engine",)
"""Guard keys present only when a setting is made (so older OUT folders keep their keys)."""


def guard_of(config: JobConfig, fingerprint: str) -> dict[str, Any]:
    """What run.json records to refuse a later run with other settings or another model."""
    return {"model_fingerprint": fingerprint, **guarded_settings(config)}


def guard_refusal(layout: OutLayout, guard: dict[str, Any], *, supersede: bool = False) -> str | None:
    """Why OUT cannot take a run with this guard (it was made with another), or None.

    The model is its fingerprint and its `--revision`; `supersede` (--on-model-change
    supersede) accepts another model, never another setting."""
    try:
        old = json.loads(layout.files.read(RUN_MANIFEST)).get("guard", {})
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        old = {}
    # "engine" is in a guard only when set: OUT made with it differs from a run without it too
    keys = [*guard, *(k for k in OPTIONAL_GUARD_KEYS if k in old and k not in guard)]
    diffs = [k for k in keys if k != "model_fingerprint" and _setting(old, k) != _setting(guard, k)]
    model_changed = _model(old) != _model(guard)
    if not diffs and (supersede or not model_changed):
        return None
    names = ", ".join(["model"] * model_changed + diffs)
    why = ""
    if model_changed:
        was, now = _model(old), _model(guard)
        why = (
            f" (model fingerprint {was[0]} → {now[0]}"
            + (f", --revision {was[1]} → {now[1]}" if was[1] != now[1] else "")
            + ": another model, a new revision, rewritten or touched weight/config files, or --verify-weights switched)"
        )
    choices = "use another output folder, or --overwrite (overwrite: true in a recipe) to start fresh"
    if model_changed and not diffs:
        choices = (
            "use another output folder, --overwrite (overwrite: true in a recipe) to start fresh, or "
            "--on-model-change supersede (on_model_change: supersede) to keep OUT's records until each "
            "item's record from the new model replaces it"
        )
    return f"{layout.root} was made with a different {names}{why}; {choices}"


def _model(guard: dict[str, Any]) -> tuple[Any, Any]:
    """The model a guard names: its fingerprint and the engine's --revision."""
    return guard.get("model_fingerprint"), (guard.get("engine") or {}).get("revision")


def _setting(guard: dict[str, Any], key: str) -> Any:
    """A guard's setting, the engine's without its revision (that is the model's)."""
    value = guard.get(key)
    if key == "engine" and isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "revision"} or None
    return value

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


def guard_refusal(layout: OutLayout, guard: dict[str, Any]) -> str | None:
    """Why OUT cannot take a run with this guard (it was made with another), or None."""
    try:
        old = json.loads(layout.files.read(RUN_MANIFEST)).get("guard", {})
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        old = {}
    # "engine" is in a guard only when set: OUT made with it differs from a run without it too
    keys = [*guard, *(k for k in OPTIONAL_GUARD_KEYS if k in old and k not in guard)]
    diffs = [k for k in keys if old.get(k) != guard.get(k)]
    if not diffs:
        return None
    names = ", ".join("model" if d == "model_fingerprint" else d for d in diffs)
    why = ""
    if "model_fingerprint" in diffs:
        why = (
            f" (model fingerprint {old.get('model_fingerprint')} → {guard['model_fingerprint']}: another model, "
            "a new revision, rewritten or touched weight/config files, or --verify-weights switched)"
        )
    return (
        f"{layout.root} was made with a different {names}{why}; use another output folder, "
        "or --overwrite (overwrite: true in a recipe) to start fresh"
    )

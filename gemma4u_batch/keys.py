"""Content keys: what decides that a record is already done.

A key hashes the input bytes, the rendered prompt, the model (and its revision) and
the sampling settings, so reordering or growing the input never redoes or skips the
wrong work, and a changed file gets a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def content_key(*, content: str, prompt: str, model_fingerprint: str, settings: dict[str, Any]) -> str:
    return _digest({"content": content, "prompt": prompt, "model": model_fingerprint, "settings": settings})


def model_fingerprint(model: str) -> str:
    """Model id, plus a hash of config and weight file names/sizes for a local folder."""
    path = Path(os.path.expanduser(model))
    if not path.is_dir():
        return model
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        p = path / name
        if name == "config.json":
            h.update(p.read_bytes())
        elif name.endswith((".safetensors", ".bin", ".json", ".jinja", ".model")) and p.is_file():
            h.update(f"{name}:{p.stat().st_size}".encode())
    return f"{path.name}@{h.hexdigest()[:16]}"

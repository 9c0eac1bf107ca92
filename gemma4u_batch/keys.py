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


class KeyMaker:
    """`content_key` for one job, with the constant part serialised once: the same bytes,
    hence the same keys, at a fraction of the cost (a rerun computes one per item)."""

    def __init__(self, model_fingerprint: str, settings: dict[str, Any]) -> None:
        self._model = json.dumps(model_fingerprint)
        self._settings = settings
        self._by_task: dict[str, str] = {}

    def __call__(self, *, content: str, prompt: str, task: str) -> str:
        tail = self._by_task.get(task)
        if tail is None:
            settings = json.dumps({**self._settings, "task": task}, sort_keys=True, default=str)
            tail = self._by_task[task] = f', "settings": {settings}}}'
        text = f'{{"content": {json.dumps(content)}, "model": {self._model}, "prompt": {json.dumps(prompt)}{tail}'
        return hashlib.sha256(text.encode()).hexdigest()

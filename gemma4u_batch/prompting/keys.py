"""Content keys: what decides that a record is already done.

A key hashes the input bytes, the rendered prompt, the model (and its revision) and
the sampling settings, so reordering or growing the input never redoes or skips the
wrong work, and a changed file gets a new key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..config.engine_args import NEUTRAL_ARGS
from ..config.job import JobConfig

log = logging.getLogger(__name__)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def content_key(*, content: str, prompt: str, model_fingerprint: str, settings: dict[str, Any]) -> str:
    return _digest({"content": content, "prompt": prompt, "model": model_fingerprint, "settings": settings})


MODEL_FILE_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".gguf",
    ".json",
    ".jinja",
    ".model",
    ".txt",
    ".tiktoken",
    ".py",
)
"""The files of a model folder that make the model: weights, configs, tokenizer, chat template."""

_notes: dict[str, str] = {}


def model_fingerprint(model: str, *, verify_weights: bool = False, revision: str | None = None) -> str:
    """What identifies the model in keys and in OUT's guard, so a changed checkpoint is redone.

    * a local folder: `name@<hash>` of the name, size and mtime_ns of every model file (weights,
      configs, tokenizer, template) plus config.json's content; with `verify_weights`
      (`--verify-weights`) `name@sha256:<hash>` of their content
      instead, which reads every byte but survives copies that do not keep mtimes;
    * a hub id: `id@<commit>`, the commit the hub (or, offline, the local cache) resolves it
      (or its `revision`, `--revision`) to; the bare id when neither can say (see `fingerprint_note`).
      A job into an OUT that pinned a commit uses the pin instead (job/model.py).
    """
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        return _folder_fingerprint(path, verify_weights)
    commit = _hub_commit(model, revision)
    if commit is None:
        return model if revision is None else f"{model}@{revision}"
    return f"{model}@{commit}"


def fingerprint_note(model: str) -> str | None:
    """Why a model's fingerprint is its bare id (its revision could not be resolved), or None."""
    return _notes.get(model)


def _model_files(path: Path) -> list[Path]:
    files = []
    for name in sorted(os.listdir(path)):
        p = path / name
        if name.endswith(MODEL_FILE_SUFFIXES) and not name.startswith(".") and p.is_file():
            files.append(p)
    return files


def _folder_fingerprint(path: Path, verify_weights: bool) -> str:
    h = hashlib.sha256()
    for p in _model_files(path):
        if verify_weights:
            with open(p, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            h.update(f"{p.name}:{digest}\n".encode())
            continue
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        if p.name == "config.json":
            h.update(p.read_bytes())
    return f"{path.name}@{'sha256:' if verify_weights else ''}{h.hexdigest()[:16]}"


@lru_cache(maxsize=32)
def _hub_commit(model: str, revision: str | None = None) -> str | None:
    """The commit a hub id resolves to: asked of the hub, or of the local cache when offline
    (HF_HUB_OFFLINE) or when the hub cannot be reached. None (and a note) when neither knows."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(model)
    except Exception as exc:  # not a hub id at all (a missing folder, a typo): the engine says so later
        _notes[model] = f"not a model folder or hub id ({str(exc).splitlines()[0] if str(exc) else exc})"
        return None
    why = "offline (HF_HUB_OFFLINE)"
    if not constants.HF_HUB_OFFLINE:
        try:
            from huggingface_hub import HfApi

            sha = HfApi().model_info(model, revision=revision).sha
            if sha:
                return sha
        except Exception as exc:  # no network, unknown or gated repo: the cache may still know
            why = f"the hub could not be asked ({type(exc).__name__})"
    try:
        cached = try_to_load_from_cache(model, "config.json", revision=revision)
    except Exception:
        cached = None
    if isinstance(cached, str):
        return Path(cached).parent.name  # …/snapshots/<commit>/config.json
    _notes[model] = (
        f"revision of {model} unknown: {why} and not in the local Hugging Face cache; records are keyed by the "
        "bare id, so an updated checkpoint under the same id would not be redone"
    )
    log.info("gemma4u: %s", _notes[model])
    return None


def hub_commit(model: str, revision: str | None = None) -> str | None:
    """The commit a hub id's revision resolves to (the hub, else the local cache), or None."""
    return _hub_commit(model, revision)


def is_hub_id(model: str) -> bool:
    """Whether `model` names a hub repository (not a local folder)."""
    if Path(os.path.expanduser(model)).is_dir():
        return False
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(model)
    except Exception:  # huggingface_hub raises its own validation error type
        return False
    return True


@lru_cache(maxsize=32)
def upstream_commit(model: str, revision: str | None = None) -> str | None:
    """The commit the hub says a hub id's revision (None: its default branch) is at now: one
    request; None offline (HF_HUB_OFFLINE) or when the hub cannot be asked (never the cache's)."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        return HfApi().model_info(model, revision=revision).sha or None
    except Exception as exc:  # no network, unknown or gated repo: the caller keeps what it has
        log.info("gemma4u: the hub could not be asked for %s (%s)", model, type(exc).__name__)
        return None


class KeyMaker:
    """`content_key` for one job, with the constant part serialised once: the same bytes,
    hence the same keys, at a fraction of the cost (a rerun computes one per item)."""

    def __init__(self, model_fingerprint: str, settings: dict[str, Any]) -> None:
        self._model = json.dumps(model_fingerprint)
        self._settings = settings
        self._by_task: dict[str, str] = {}
        self._tails: dict[tuple[str, str], str] = {}  # (task, prompt) → everything after the content

    def __call__(self, *, content: str, prompt: str, task: str) -> str:
        return self.keyed(content, self.tail(prompt, task))

    def tail(self, prompt: str, task: str) -> str:
        """Everything a key hashes after the content: the same for every item sent with this
        prompt and task."""
        tail = self._tails.get((task, prompt))
        if tail is None:
            settings = self._by_task.get(task)
            if settings is None:
                settings = json.dumps({**self._settings, "task": task}, sort_keys=True, default=str)
                self._by_task[task] = settings
            tail = f', "model": {self._model}, "prompt": {json.dumps(prompt)}, "settings": {settings}}}'
            if len(self._tails) < 4096:  # per-row templates make every prompt unique: bound the memo
                self._tails[task, prompt] = tail
        return tail

    @staticmethod
    def keyed(content: str, tail: str) -> str:
        """The key of `content` (a hex digest, or what stands for unread bytes) with a `tail`."""
        quoted = f'"{content}"' if content.isalnum() and content.isascii() else json.dumps(content)  # a hex digest
        return hashlib.sha256(f'{{"content": {quoted}{tail}'.encode()).hexdigest()

    @staticmethod
    def keyed_digest(digest: str, tail: str) -> str:
        """`keyed` for a content hash's hex digest (no quoting to choose)."""
        return hashlib.sha256(f'{{"content": "{digest}"{tail}'.encode()).hexdigest()


def output_settings(engine: Any) -> dict[str, Any]:
    """The engine settings that change what the model writes (only those not at their
    default, so OUT folders made before these options existed keep their keys)."""
    from .keys import model_fingerprint

    out: dict[str, Any] = {}
    if engine.quantization:
        out["quantization"] = engine.quantization
    if engine.kv_cache_dtype != "auto":
        out["kv_cache_dtype"] = engine.kv_cache_dtype
    if engine.revision:
        out["revision"] = engine.revision
    if engine.tokenizer:
        out["tokenizer"] = model_fingerprint(engine.tokenizer)
    if engine.lora:
        out["lora"] = model_fingerprint(engine.lora)
    guarded = {k: v for k, v in sorted(engine.engine_args.items()) if k not in NEUTRAL_ARGS}
    if guarded:
        out["engine_args"] = guarded
    return out


def guarded_settings(config: JobConfig) -> dict[str, Any]:
    """Settings that change what a record means: part of every key, and a rerun into
    OUT with others is refused. Options added later join only when set, so the keys of
    OUT folders made before they existed stay the same."""
    from .keys import output_settings

    settings: dict[str, Any] = {
        "task": config.task,
        "prompt": config.prompt,
        "system_prompt": config.system_prompt,
        "language": config.language,
        "translate_to": config.translate_to,
        "sampling": config.sampling.stable_dump(),
        "image_tokens": config.image_tokens,
        "video_frames": config.video_frames,
        "video_fps": config.video_fps,
        "with_audio": config.with_audio,
        "tasks": config.tasks,
        "json_schema": str(config.json_schema) if isinstance(config.json_schema, Path) else config.json_schema,
        "choices": config.choices,
        "retry_flagged": config.retry_flagged.stable_dump() if config.retry_flagged else None,
    }
    engine = output_settings(config.engine)
    if engine:
        settings["engine"] = engine
    return settings

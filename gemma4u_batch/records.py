"""Typed records that flow between stages: source → decode → engine → writer.

Dicts appear only at the edges (manifest rows in, JSON/Parquet out).
"""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


class Modality(StrEnum):
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"


@dataclass(frozen=True)
class ObjectStat:
    """What a listing says of a stored object (or a URL's last fetch): enough to know it
    unchanged without reading it, the object-store twin of a file's `stat`."""

    etag: str | None = None
    version: str | None = None  # the store's version id or generation, when it keeps them
    size: int | None = None
    mtime_ns: int | None = None
    last_modified: str | None = None  # an http(s) response's Last-Modified header, as sent


@dataclass(frozen=True)
class Known:
    """What OUT's index knows of a URL from its last fetch: the validators a conditional request
    sends (If-None-Match / If-Modified-Since) and the sha256 its body had then."""

    sha256: str
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class WorkItem:
    """One input as a source found it, before any bytes are read.

    `error` is set when the source itself could not make a usable item (a malformed
    manifest row); such an item still flows through so it gets its own record. A remote item
    has a `url` (with any credentials it was given: `source` is what is shown) and, when a
    listing found it, the object's `stat`; `known` is attached by the quick check for a
    conditional request.
    """

    id: str
    source: str
    modality: Modality | None
    path: str | None = None  # a local file, as the OS takes it (a walk makes a million: no Path)
    data: bytes | None = None
    prompt: str | None = None
    task: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    url: str | None = None
    stat: ObjectStat | None = None
    known: Known | None = None

    def __post_init__(self) -> None:
        if self.path is not None and not isinstance(self.path, str):
            object.__setattr__(self, "path", os.fspath(self.path))  # a Path given: kept as its text

    @classmethod
    def file(cls, id: str, source: str, modality: Modality, path: str) -> WorkItem:
        """`WorkItem(id=…, source=…, modality=…, path=…)`, the same item, made by filling its
        attributes at once: a folder's walk makes one per file, and the frozen dataclass's
        `__init__` (a guarded `setattr` per field) was a tenth of a no-op rerun's time."""
        item = _new_object(cls)
        attrs = _WORK_ITEM_DEFAULTS.copy()
        attrs["id"], attrs["source"], attrs["modality"], attrs["path"] = id, source, modality, path
        attrs["fields"] = {}  # the one field with a default factory (checked below)
        _set_attr(item, "__dict__", attrs)
        return item


_WORK_ITEM_DEFAULTS = {f.name: f.default for f in fields(WorkItem) if f.default is not MISSING}
if [f.name for f in fields(WorkItem) if f.default_factory is not MISSING] != ["fields"]:
    raise TypeError("WorkItem.file fills `fields` only: give a new factory field its value there")
_new_object = object.__new__
_set_attr = object.__setattr__


@dataclass(frozen=True)
class Generation:
    """What the engine returned for one request."""

    text: str
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    cumulative_logprob: float | None = None  # sum of the generated tokens' log-probabilities
    token_logprobs: list[dict[str, Any]] | None = None  # with --logprobs N: per token, its N alternatives
    stop_reason: int | str | None = None  # the stop string or token that ended it, if one did
    token_ids: tuple[int, ...] | None = None  # the sampled token ids, when the request asks (run-batch's parsers)

    def mean_logprob(self) -> float | None:
        """Mean log-probability of the generated tokens (≤ 0; closer to 0 = more confident)."""
        if self.cumulative_logprob is None or self.num_output_tokens <= 0:
            return None
        return round(self.cumulative_logprob / self.num_output_tokens, 6)


@dataclass
class OutputRecord:
    """One line of output. Exactly one per input item (per task)."""

    id: str
    key: str
    source: str
    modality: str | None
    task: str
    prompt: str | None
    text: str | None
    finish_reason: str | None
    num_prompt_tokens: int | None
    num_output_tokens: int | None
    error: str | None
    error_kind: str | None
    model: str
    content_sha256: str | None
    decode_seconds: float | None
    segments: list[dict[str, Any]] | None = None
    language: str | None = None  # speech tasks: ISO 639-1 (else 639-3) code, given or identified
    data: Any = None
    mean_logprob: float | None = None
    logprobs: list[dict[str, Any]] | None = None
    flags: list[str] = field(default_factory=list)
    retried: bool = False
    supersedes: str | None = None
    reused_from: str | None = None  # the id whose record (same key) this one copies: made without the engine
    model_fingerprint: str | None = None  # the model the record was made with (OUT's guard names it too)
    tombstone: bool = False  # the input is gone and --prune retired its record
    fields: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None  # stamped by the job: one id per run (run.json has it too)
    created_at: str | None = None  # UTC, ISO 8601

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


OUTPUT_COLUMNS: tuple[str, ...] = tuple(OutputRecord.__dataclass_fields__)

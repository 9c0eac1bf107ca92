"""The decode stage's output: a work item with its media decoded to what the engine takes, or an error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..records import ObjectStat, WorkItem

if TYPE_CHECKING:
    from .spill import SpilledAudio


@dataclass(frozen=True)
class VideoFrames:
    frames: list[Any]  # PIL images, RGB; or decode.patches.ImagePatches (the workers patchify)
    timestamps: list[float]
    indices: list[int]
    fps: float
    total_frames: int
    duration: float


@dataclass
class DecodedItem:
    """A work item with its media decoded to what the engine takes, or an error."""

    item: WorkItem
    content_sha256: str | None = None
    image: Any | None = None  # PIL.Image.Image, RGB, at the processor's size; or decode.patches.ImagePatches
    # float32 mono 16 kHz: an array, or long audio's spill file (decode/spill.py)
    audio: np.ndarray | SpilledAudio | None = None
    video: VideoFrames | None = None
    error: str | None = None
    error_kind: str | None = None
    decode_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False  # belongs to another --shard
    file_stat: tuple[int, int, int, int] | None = None  # (size, mtime_ns, ino, dev) as read: the quick check
    read_at_ns: int = 0  # wall clock just before the read (racy-clean guard)
    fetched: ObjectStat | None = None  # a remote item: what its fetch saw (etag, version, Last-Modified)
    unchanged: bool = False  # a remote item the server said is unchanged (304): no media, `content_sha256` known

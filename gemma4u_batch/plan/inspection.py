"""`gemma4u inspect`: what the engine will receive for each item, without generating.

Users check their data with it (sizes, token counts, frames and timestamps, audio
windows); `--dump` writes the media exactly as it would be sent.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_atomic, write_json_atomic
from ..decode import DecodeOptions
from ..decode.item import DecodedItem
from ..decode.spill import SpilledAudio
from ..decode.workers import DecodePool
from ..prompting.units import SAMPLE_RATE, build_parts
from ..records import Modality


@dataclass
class ItemView:
    id: str
    source: str
    modality: str | None
    error: str | None = None
    error_kind: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "modality": self.modality,
            "error": self.error,
            "error_kind": self.error_kind,
            "detail": self.detail,
            "requests": self.requests,
        }


def view(d: DecodedItem, windowed_audio: bool, opts: DecodeOptions) -> tuple[ItemView, list[Any]]:
    """The description of one decoded item and the parts it becomes."""
    v = ItemView(d.item.id, d.item.source, d.item.modality.value if d.item.modality else None, d.error, d.error_kind)
    v.detail = {k: val for k, val in d.info.items() if k not in ("audio",)}
    if d.error is not None:
        return v, []
    parts = build_parts(d, windowed_audio=windowed_audio, opts=opts)
    for p in parts:
        req: dict[str, Any] = {"media_tokens": p.mm_tokens}
        if p.start is not None:
            req["start"], req["end"] = round(p.start, 3), round(p.end or 0.0, 3)
        if "audio" in p.mm:
            req["audio_samples"] = int(p.mm["audio"][0].size)
        if "video" in p.mm:
            frames, _meta = p.mm["video"]
            req["frames"] = len(frames)
            req["frame_size"] = list(frames[0].size) if frames else None
            req["frame_indices"] = list(d.video.indices) if d.video else []
            req["timestamps"] = [round(t, 3) for t in d.video.timestamps] if d.video else []
        if "image" in p.mm:
            req["image_size"] = list(p.mm["image"].size)
        v.requests.append(req)
    return v, parts


def _save_png(img: Any, fh: Any) -> None:
    img.save(fh, format="PNG")


def _save_wav(clip: np.ndarray, fh: Any) -> None:
    import soundfile as sf

    sf.write(fh, clip, SAMPLE_RATE, format="WAV", subtype="FLOAT")


def _safe_dir(root: Path, item_id: str) -> Path:
    rel = Path(*[p for p in Path(item_id).parts if p not in ("..", "/", "")])
    return root / rel


def dump(root: Path, v: ItemView, d: DecodedItem, parts: list[Any]) -> None:
    """Write DIR/<id>/ with image.png, frame_NNN.png + frames.json, audio_NNN.wav, item.json."""
    out = _safe_dir(root, v.id)
    out.mkdir(parents=True, exist_ok=True)
    if d.image is not None:
        write_atomic(out / "image.png", functools.partial(_save_png, d.image))
    if d.video is not None:
        frames = []
        for i, (img, idx, ts) in enumerate(zip(d.video.frames, d.video.indices, d.video.timestamps, strict=True)):
            write_atomic(out / f"frame_{i:03d}.png", functools.partial(_save_png, img))
            frames.append({"index": int(idx), "timestamp": float(ts)})
        write_json_atomic(out / "frames.json", frames)
    n_audio = 0
    for p in parts:
        if "audio" in p.mm:
            clip = np.asarray(p.mm["audio"][0], dtype=np.float32)
            write_atomic(out / f"audio_{n_audio:03d}.wav", functools.partial(_save_wav, clip))
            n_audio += 1
    write_json_atomic(out / "item.json", v.to_dict())


def inspect_items(
    source: Any, opts: DecodeOptions, *, windowed_audio: bool, workers: int = 2, dump_dir: Path | None = None
) -> Iterator[ItemView]:
    """Decode every item (in workers) and yield its view, dumping media when asked."""
    with DecodePool(iter(source), opts, workers=workers) as pool:
        while not pool.done:
            for d in pool.poll(timeout=0.1):
                v, parts = view(d, windowed_audio, opts)
                if dump_dir is not None:
                    dump(dump_dir, v, d, parts)
                if isinstance(d.audio, SpilledAudio):  # long audio: its windows are described (and dumped)
                    d.audio.file.unlink()
                yield v


def summarize(views: list[ItemView]) -> dict[str, Any]:
    by_mod: dict[str, int] = {}
    for v in views:
        by_mod[v.modality or "unknown"] = by_mod.get(v.modality or "unknown", 0) + 1
    return {
        "items": len(views),
        "by_modality": by_mod,
        "errors": sum(1 for v in views if v.error),
        "media_tokens": sum(r["media_tokens"] for v in views for r in v.requests),
        "requests": sum(len(v.requests) for v in views),
    }


def print_json(views: list[ItemView]) -> None:
    for v in views:
        print(json.dumps(v.to_dict(), default=str))


__all__ = ["ItemView", "Modality", "inspect_items", "summarize", "view"]

"""Per-file transcript outputs (.txt, .srt, .vtt) beside the JSONL/Parquet records (OUT/__transcripts__/)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, BinaryIO

from .atomic import write_atomic


def _write_bytes(payload: bytes, fh: BinaryIO) -> None:
    fh.write(payload)


SUBTITLE_FORMATS = ("txt", "srt", "vtt")


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: list[dict[str, Any]]) -> str:
    blocks = []
    for i, seg in enumerate((s for s in segments if s["text"]), start=1):
        blocks.append(f"{i}\n{_stamp(seg['start'], ',')} --> {_stamp(seg['end'], ',')}\n{seg['text']}\n")
    return "\n".join(blocks)


def to_vtt(segments: list[dict[str, Any]]) -> str:
    cues = [f"{_stamp(s['start'], '.')} --> {_stamp(s['end'], '.')}\n{s['text']}\n" for s in segments if s["text"]]
    return "WEBVTT\n\n" + "\n".join(cues)


def to_txt(segments: list[dict[str, Any]]) -> str:
    return " ".join(s["text"] for s in segments if s["text"]) + "\n"


def write_transcripts(folder: Path, item_id: str, segments: list[dict[str, Any]], formats: tuple[str, ...]) -> None:
    """Write <folder>/<id>.<fmt> atomically (ids may contain folders); the job's folder is
    OUT/__transcripts__/, which table readers skip."""
    render = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt}
    base = folder / item_id
    base.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        dest = base.with_name(base.name + f".{fmt}")
        write_atomic(dest, functools.partial(_write_bytes, render[fmt](segments).encode("utf-8")))

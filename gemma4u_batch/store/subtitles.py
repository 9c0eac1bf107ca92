"""Per-file transcript outputs (.txt, .srt, .vtt, .tsv, .json) beside the JSONL/Parquet records
(OUT/__transcripts__/).

SRT and WebVTT cues are shaped for reading: at most `max_cue_seconds` on screen, at most
`max_lines` lines of at most `max_line_width` characters. A segment (one request window of
speech) whose text does not fit one cue is split at sentence, then clause punctuation, then
between words, and its time is shared among the cues by their share of its characters: the
model gives no word timestamps, so cue times inside a segment are estimates. Cue text is
cleaned so the files always parse: one line of text per line (no blank lines), no `-->`, no
control characters.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from .layout import TRANSCRIPTS_DIR
from .objects import OutFiles

SUBTITLE_FORMATS = ("txt", "srt", "vtt", "tsv", "json")


@dataclass(frozen=True)
class CueLimits:
    """How SRT/VTT cues are shaped (the CLI's --max-cue-seconds, --max-line-width, --max-lines)."""

    max_seconds: float = 7.0
    line_width: int = 42
    lines: int = 2


def clean_text(text: str) -> str:
    """One line of printable text: control and format characters dropped, every run of
    whitespace (newlines included) one space, `-->` (the cue timing arrow) written `->`."""
    kept = "".join(" " if c.isspace() else c for c in text if c.isspace() or unicodedata.category(c)[0] != "C")
    text = " ".join(kept.split())
    while "-->" in text:
        text = text.replace("-->", "->")
    return text


_SENTENCE = re.compile(r"(?<=[.!?…。！？])\s+")
_CLAUSE = re.compile(r"(?<=[,;:、，；：])\s+")


def _wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap; a word longer than the width is cut into width-long pieces."""
    lines: list[str] = []
    cur = ""
    for word in text.split(" "):
        while len(word) > width:
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(word[:width])
            word = word[width:]
        if not word:
            continue
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    if cur:
        lines.append(cur)
    return lines


def _pieces(text: str, fits: Any) -> list[str]:
    """The text cut at sentence ends, then clause marks, then spaces, then inside words, only
    as finely as needed for every piece to fit."""
    out: list[str] = []
    for sentence in _SENTENCE.split(text):
        if fits(sentence):
            out.append(sentence)
            continue
        for clause in _CLAUSE.split(sentence):
            if fits(clause):
                out.append(clause)
                continue
            for word in clause.split(" "):
                while word and not fits(word):
                    n = max(1, len(word) // 2)
                    while n > 1 and not fits(word[:n]):
                        n //= 2
                    out.append(word[:n])
                    word = word[n:]
                if word:
                    out.append(word)
    return out


def _chunks(text: str, limits: CueLimits, target_chars: int) -> list[str]:
    """Consecutive runs of pieces, each fitting one cue: ≤ max lines once wrapped and about
    target_chars long (so long segments get enough cues to stay under max_seconds)."""

    def fits(s: str) -> bool:
        return len(s) <= target_chars and len(_wrap(s, limits.line_width)) <= limits.lines

    chunks: list[str] = []
    for piece in _pieces(text, fits):
        if chunks and fits(f"{chunks[-1]} {piece}"):
            chunks[-1] = f"{chunks[-1]} {piece}"
        else:
            chunks.append(piece)
    return chunks


def cues(segments: list[dict[str, Any]], limits: CueLimits = CueLimits()) -> list[dict[str, Any]]:
    """Subtitle cues `{start, end, lines}` from transcription segments (see the module doc)."""
    out: list[dict[str, Any]] = []
    for seg in segments:
        text = clean_text(str(seg.get("text") or ""))
        if not text:
            continue
        start, end = float(seg["start"]), max(float(seg["end"]), float(seg["start"]))
        by_time = max(1, math.ceil((end - start) / limits.max_seconds - 1e-9))
        target = max(1, min(limits.line_width * limits.lines, math.ceil(len(text) / by_time)))
        chunks = _chunks(text, limits, target)
        total = sum(len(c) for c in chunks)
        done = 0
        for chunk in chunks:
            a = start + (end - start) * done / total
            done += len(chunk)
            b = start + (end - start) * done / total
            out.append({"start": a, "end": min(b, a + limits.max_seconds), "lines": _wrap(chunk, limits.line_width)})
    return out


def _stamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: list[dict[str, Any]], limits: CueLimits = CueLimits()) -> str:
    blocks = []
    for i, cue in enumerate(cues(segments, limits), start=1):
        text = "\n".join(cue["lines"])
        blocks.append(f"{i}\n{_stamp(cue['start'], ',')} --> {_stamp(cue['end'], ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(segments: list[dict[str, Any]], limits: CueLimits = CueLimits()) -> str:
    blocks = []
    for cue in cues(segments, limits):
        text = "\n".join(cue["lines"])
        blocks.append(f"{_stamp(cue['start'], '.')} --> {_stamp(cue['end'], '.')}\n{text}\n")
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_txt(segments: list[dict[str, Any]], limits: CueLimits = CueLimits()) -> str:
    return " ".join(t for s in segments if (t := clean_text(str(s.get("text") or "")))) + "\n"


def to_tsv(segments: list[dict[str, Any]], limits: CueLimits = CueLimits()) -> str:
    """Whisper's TSV: a `start end text` header, then one segment a line, times in integer ms."""
    rows = ["start\tend\ttext"]
    for s in segments:
        text = clean_text(str(s.get("text") or "")).replace("\t", " ")
        if text:
            rows.append(f"{round(float(s['start']) * 1000)}\t{round(float(s['end']) * 1000)}\t{text}")
    return "\n".join(rows) + "\n"


def to_json(segments: list[dict[str, Any]], limits: CueLimits = CueLimits(), language: str | None = None) -> str:
    """Whisper's JSON: the whole text, the language (an ISO code, as Whisper's) and the
    segments (id, start, end, text; seconds; plus each window's language code)."""
    segs = [
        {
            "id": i,
            "start": float(s["start"]),
            "end": float(s["end"]),
            "text": str(s.get("text") or ""),
            "language": s.get("language"),
        }
        for i, s in enumerate(segments)
    ]
    doc = {"text": to_txt(segments).strip(), "language": language, "segments": segs}
    return json.dumps(doc, ensure_ascii=False) + "\n"


_RENDER = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv, "json": to_json}


def write_transcripts(
    files: OutFiles,
    item_id: str,
    segments: list[dict[str, Any]],
    formats: tuple[str, ...],
    limits: CueLimits = CueLimits(),
    language: str | None = None,
) -> None:
    """Write `__transcripts__/<id>.<fmt>` in OUT, each whole (ids may contain folders): table
    readers skip that folder. `language` goes into the json format."""
    for fmt in formats:
        text = to_json(segments, limits, language) if fmt == "json" else _RENDER[fmt](segments, limits)
        files.put(f"{TRANSCRIPTS_DIR}/{item_id}.{fmt}", text.encode("utf-8"))

"""Request building: one decoded item becomes one *unit* of one or more engine requests.

An image or a video is one request. Audio for transcription is cut into ≤30 s windows
(the model's limit), each its own request; the unit completes — and its single record
is written — when every window is back, with the windows as `segments`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config.job import SamplingConfig
from ..decode.audio import num_audio_tokens, pad_to_token_multiple, split_windows
from ..decode.item import DecodedItem, VideoFrames
from ..decode.options import DecodeOptions
from ..decode.spill import SpilledAudio, SpillFile, Waveform
from ..decode.vad import speech_windows
from ..decode.video import frame_tokens
from ..errors import ItemError
from ..records import Generation, Modality, OutputRecord
from .quality import parse_structured, quality_flags

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 30.0  # 750 tokens × 40 ms


@dataclass
class Part:
    """One request's worth of media and where it sits in the item's timeline."""

    mm: dict[str, Any]
    mm_tokens: int
    start: float | None = None
    end: float | None = None
    detects: int | None = None  # a language-identification request for the window part at this index


@dataclass
class Unit:
    """A decoded item in flight: its parts' results arrive in any order."""

    decoded: DecodedItem
    key: str
    instruction: str
    rendered: str
    parts: list[Part]
    task: str = "caption"
    structured: dict[str, Any] | None = None  # {"json": schema} or {"choice": [...]}
    results: list[Generation | None] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None
    outstanding: int = 0
    retried: bool = False
    media_flags: list[str] = field(default_factory=list)  # e.g. audio_truncated: set when parts are built
    no_speech: bool = False  # a speech task on audio in which the VAD found no speech: nothing is sent
    supersedes: str | None = None  # key of the (id, task)'s current record, looked up once when admitted
    language: str | None = None  # the given language (a canonical code); None: detected per window
    spill: SpillFile | None = None  # long audio's spill file, shared by the item's units (job releases it)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget results (before a retry with other sampling settings)."""
        self.results = [None] * len(self.parts)
        self.outstanding = len(self.parts)
        self.error = self.error_kind = None

    def release(self) -> None:
        """The unit is finished with its media: the last unit of long audio removes its spill file."""
        if self.spill is not None:
            self.spill.release()
            self.spill = None

    def finish_part(self, index: int, gen: Generation | None, error: str | None, kind: str | None) -> bool:
        """Record one part's outcome; True when the unit is complete."""
        self.results[index] = gen
        if error is not None and self.error is None:
            self.error, self.error_kind = error, kind
        self.outstanding -= 1
        return self.outstanding == 0


def video_metadata(v: VideoFrames) -> dict[str, Any]:
    """The frames' timeline as vLLM's video processor takes it (frames already sampled)."""
    fps = float(v.fps) if v.fps else 24.0
    indices = list(v.indices)
    # vLLM (like transformers) stamps frame i at indices[i] / fps. For variable frame
    # rate files that is not the real time, so express the real stamps in milliseconds.
    if any(abs(i / fps - t) >= 0.5 for i, t in zip(indices, v.timestamps, strict=True)):
        fps, indices = 1000.0, [round(t * 1000) for t in v.timestamps]
    return {
        "fps": fps,
        "frames_indices": indices,
        "total_num_frames": int(v.total_frames),
        "duration": float(v.duration),
        "do_sample_frames": False,
    }


# What each medium costs in the prompt: its soft tokens plus the tokens around them.
def image_tokens(info: dict[str, Any]) -> int:
    """A decoded image: its soft tokens (decode's `num_tokens`) + <boi> and <eoi>."""
    return int(info.get("num_tokens", 0)) + 2


def audio_tokens(samples: int) -> int:
    """An audio clip: one soft token per 40 ms + <boa> and <eoa>."""
    return num_audio_tokens(samples) + 2


def video_tokens(v: VideoFrames, opts: DecodeOptions) -> int:
    """Sampled frames: each "mm:ss " (~4 tokens) + <boi> + its soft tokens + <eoi>."""
    return sum(frame_tokens(f, opts) + 6 for f in v.frames)


NO_SPEECH = "no_speech"
"""Flag of a speech-task record of an audio file in which voice activity detection found no
speech: empty text, no segments, no request sent (not an error)."""

AUDIO_TRUNCATED = "audio_truncated"
"""Flag of a record whose audio was cut to its first 30 s (one request: captioning audio,
a video's soundtrack); speech tasks cut long audio into windows instead."""


def media_flags(d: DecodedItem, *, windowed_audio: bool) -> list[str]:
    """Flags about what of the item was sent: `audio_truncated` when only its first 30 s were."""
    if d.audio is None or d.image is not None:
        return []
    if d.video is not None:  # the soundtrack decoder keeps the first 30 s and says whether it cut
        cut = bool((d.info.get("audio") or {}).get("truncated")) or d.audio.size > int(WINDOW_SECONDS * SAMPLE_RATE)
    else:
        cut = not windowed_audio and d.audio.size > int(WINDOW_SECONDS * SAMPLE_RATE)
    return [AUDIO_TRUNCATED] if cut else []


def no_speech(d: DecodedItem, *, windowed_audio: bool) -> bool:
    """Whether the VAD ran on this audio item for a speech task and found no speech."""
    return windowed_audio and d.video is None and d.audio is not None and d.info.get("speech") == []


def build_parts(d: DecodedItem, *, windowed_audio: bool, opts: DecodeOptions) -> list[Part]:
    """Split a decoded item into the media of each request it needs."""
    if d.image is not None:
        return [Part({"image": d.image}, image_tokens(d.info))]
    if d.video is not None:
        mm: dict[str, Any] = {"video": (list(d.video.frames), video_metadata(d.video))}
        tokens = video_tokens(d.video, opts)
        if d.audio is not None and d.audio.size:
            clip = pad_to_token_multiple(np.array(d.audio[: int(WINDOW_SECONDS * SAMPLE_RATE)], dtype=np.float32))
            mm["audio"] = (clip, SAMPLE_RATE)
            tokens += audio_tokens(clip.size)
        return [Part(mm, tokens, 0.0, float(d.video.duration))]
    if d.audio is not None:
        x = d.audio
        if windowed_audio and "speech" in d.info:  # the VAD's regions: only speech is sent
            regions = [(int(s), int(e)) for s, e in d.info["speech"]]
            spans = speech_windows(x, regions, SAMPLE_RATE, max_seconds=WINDOW_SECONDS)
        elif windowed_audio:
            spans = split_windows(x, SAMPLE_RATE, max_seconds=WINDOW_SECONDS)
        else:
            spans = [(0, min(x.size, int(WINDOW_SECONDS * SAMPLE_RATE)))]
        parts = []
        for s, e in spans:
            window = _clip(x, s, e)
            tokens = audio_tokens(window.size)
            parts.append(Part({"audio": (window, SAMPLE_RATE)}, tokens, s / SAMPLE_RATE, e / SAMPLE_RATE))
        return parts
    return []


class PendingClip:
    """A window of spilled long audio, read from its spill file only when its request goes
    to the engine (`engine_media`), so windows waiting their turn hold no samples. Looks
    like the padded clip where only its size or samples are asked for (`size`, np.asarray)."""

    def __init__(self, audio: SpilledAudio) -> None:
        self.audio = audio
        self.size = num_audio_tokens(len(audio)) * 640  # as pad_to_token_multiple pads it

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        clip = pad_to_token_multiple(np.asarray(self.audio, dtype=np.float32))
        return clip if dtype is None else clip.astype(dtype, copy=False)


def _clip(x: Waveform, s: int, e: int) -> np.ndarray | PendingClip:
    """A window's clip: copied out of an in-memory waveform (the job drops the whole
    waveform once the parts are built), or read later from a spill file."""
    if isinstance(x, SpilledAudio):
        return PendingClip(x[s:e])
    return pad_to_token_multiple(np.array(x[s:e], dtype=np.float32))


def engine_media(mm: dict[str, Any] | None) -> dict[str, Any] | None:
    """A request's media as the engine takes it: pending clips read into arrays now."""
    if not mm or not isinstance((mm.get("audio") or (None,))[0], PendingClip):
        return mm
    clip, rate = mm["audio"]
    return {**mm, "audio": (np.asarray(clip), rate)}


def language_parts(parts: list[Part]) -> list[Part]:
    """With `--language auto`, one language-identification request per speech window (the
    window's audio alone, answered with a constrained choice of codes; see builder.py)."""
    found = []
    for i, part in enumerate(parts):
        audio = part.mm.get("audio")
        if part.detects is None and audio is not None:
            found.append(Part({"audio": audio}, audio_tokens(audio[0].size), part.start, part.end, detects=i))
    return found


def add_language_parts(unit: Unit) -> None:
    unit.parts.extend(language_parts(unit.parts))
    unit.reset()


def window_languages(unit: Unit) -> list[str | None]:
    """Each window part's language: the given one, or what its identification request chose."""
    windows = [p for p in unit.parts if p.detects is None]
    found: dict[int, str] = {}
    for part, gen in zip(unit.parts, unit.results, strict=True):
        if part.detects is not None and gen is not None and gen.text.strip():
            found[part.detects] = gen.text.strip()
    return [unit.language or found.get(i) for i in range(len(windows))]


def record_language(unit: Unit) -> str | None:
    """The record's language: the given one, else the first speech window's identified one."""
    if unit.language is not None:
        return unit.language
    return next((lang for lang in window_languages(unit) if lang), None)


def stitch(unit: Unit) -> tuple[str, list[dict[str, Any]] | None, Generation | None]:
    """(text, segments, a representative generation) for a finished unit; language
    identification requests are not part of the text nor of the token counts.

    Windows do not overlap (VAD windows of speech, or cuts at the quietest point), so
    stitching is concatenation in time order; nothing needs de-duplicating.
    """
    pairs = [(p, g) for p, g in zip(unit.parts, unit.results, strict=True) if p.detects is None]
    gens = [g for _, g in pairs if g is not None]
    if not gens:
        return "", None, None
    if len(pairs) == 1 and pairs[0][0].start is None:
        return gens[0].text, None, gens[0]
    segments = []
    texts = []
    languages = window_languages(unit)
    for (part, gen), lang in zip(pairs, languages, strict=True):
        text = gen.text.strip() if gen is not None else ""
        start, end = round(part.start or 0.0, 3), round(part.end or 0.0, 3)
        segments.append({"start": start, "end": end, "text": text, "language": lang})
        if text:
            texts.append(text)
    cumulative = [g.cumulative_logprob for g in gens]
    per_token = [g.token_logprobs for g in gens]
    total = Generation(
        text=" ".join(texts),
        finish_reason="length" if any(g.finish_reason == "length" for g in gens) else gens[-1].finish_reason,
        num_prompt_tokens=sum(g.num_prompt_tokens for g in gens),
        num_output_tokens=sum(g.num_output_tokens for g in gens),
        cumulative_logprob=None if None in cumulative else sum(c for c in cumulative if c is not None),
        token_logprobs=None if None in per_token else [t for p in per_token for t in p or []],
    )
    if unit.decoded.item.modality is Modality.VIDEO:
        return total.text, None, total
    return total.text, segments, total


def to_record(unit: Unit, model: str) -> OutputRecord:
    """The one record of a finished unit: stitched text, checked structure, flags, or its error."""
    d = unit.decoded
    error = d.error or unit.error
    kind = d.error_kind or unit.error_kind
    text, segments, gen = (None, None, None) if error else stitch(unit)
    data: Any = None
    flags: list[str] = []
    if text is not None and unit.no_speech:
        segments, flags = [], [NO_SPEECH]
    elif text is not None:
        flags = quality_flags(text, gen.finish_reason if gen else None) + unit.media_flags
        if unit.structured is not None:
            try:
                data = parse_structured(text, unit.structured)
            except ItemError as exc:
                error, kind = exc.message, exc.kind
    return OutputRecord(
        id=d.item.id,
        key=unit.key,
        source=d.item.source,
        modality=d.item.modality.value if d.item.modality else None,
        task=unit.task,
        prompt=unit.instruction,
        text=text,
        finish_reason=gen.finish_reason if gen else None,
        num_prompt_tokens=gen.num_prompt_tokens if gen else None,
        num_output_tokens=gen.num_output_tokens if gen else None,
        error=error,
        error_kind=kind,
        model=model,
        content_sha256=d.content_sha256,
        decode_seconds=round(d.decode_seconds, 6),
        segments=segments,
        data=data,
        mean_logprob=gen.mean_logprob() if gen else None,
        logprobs=gen.token_logprobs if gen else None,
        flags=flags,
        retried=unit.retried,
        fields=dict(d.item.fields),
        language=None if error else record_language(unit),
    )


@dataclass
class EngineRequest:
    """One request for the engine: what request building hands the feeding loop (job or run-batch)."""

    request_id: str
    prompt: str
    multi_modal_data: dict[str, Any] | None
    sampling: SamplingConfig
    payload: Any = None  # the runner's context for this request, returned untouched
    structured: dict[str, Any] | None = None  # {"json": schema} or {"choice": [...]}
    params: Any = None  # vLLM SamplingParams used as given instead of `sampling` (run-batch)
    prompt_token_ids: tuple[int, ...] | None = None  # the prompt as vLLM's chat serving tokenized it (run-batch)

    def with_media_read(self) -> EngineRequest:
        """The request as an engine takes it: a window of spilled long audio is read now (a
        queued request keeps only the reference, so windows waiting their turn hold no samples)."""
        mm = engine_media(self.multi_modal_data)
        return self if mm is self.multi_modal_data else dataclasses.replace(self, multi_modal_data=mm)

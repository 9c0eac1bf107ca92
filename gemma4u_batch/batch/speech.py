"""Transcription and translation lines (`/v1/audio/transcriptions`, `/v1/audio/translations`)
answered by gemma4u's transcribe pipeline, in `vllm run-batch`'s line and body formats.

    line → check (vLLM's BatchTranscriptionRequest / BatchTranslationRequest) → WorkItem
         → decode_item (VAD: speech regions) → one unit of ≤30 s speech windows (RequestBuilder)
         → engine requests → stitch → vLLM's response body

Decoding is kept apart from answering (`speech_item` then `decode_item`, then `SpeechAnswer`) so
the decode can move into worker processes without touching the rest.

Choices where vLLM defines no shape (docs/run-batch.md, "Transcription and translation lines"):
`prompt` (Whisper's context text) is appended to the task's instruction as earlier text for
spelling and style; `srt`/`vtt` (which vLLM's serving refuses) answer vLLM's json body with the
subtitle document as `text`; verbose segments are the speech windows (no token ids: `tokens` is
empty); a language no one gave and the response does not report is not identified.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass
from typing import Any

from ..config.job import JobConfig
from ..config.languages import language_name, normalise_language
from ..decode.item import DecodedItem
from ..engine.protocol import Engine, EngineResult
from ..errors import ItemError
from ..prompting.builder import RequestBuilder
from ..prompting.prompts import item_instruction
from ..prompting.units import SAMPLE_RATE, EngineRequest, Unit, record_language, stitch
from ..records import Generation, WorkItem
from ..store.subtitles import to_srt, to_vtt
from .lines import (
    SPEECH_URLS,
    BatchLine,
    completion_output,
    error_output,
    error_response,
    invalid_body,
    max_tokens_for,
    media_error,
    request_error,
    shape_error,
)
from .media import MediaPolicy, MediaRef

CONTEXT = 'Earlier text, for spelling and style only (do not repeat it): "{{ context }}"'
"""How a line's `prompt` reaches the model: after the task's instruction (a template over the
item's fields, so the prompt's own text is never read as a template)."""

DEFAULT_MAX_TOKENS = 4096  # a window's answer when neither the line nor the context bounds it

UNDETERMINED = "und"
"""verbose_json's `language` when none was given and none was identified (no speech): ISO 639-2's
code for an undetermined language (vLLM's model requires a string)."""


@dataclass(frozen=True)
class SpeechBody:
    """A checked speech line: vLLM's request model and what gemma4u takes from it."""

    request: Any  # vLLM's BatchTranscriptionRequest or BatchTranslationRequest
    task: str  # "transcribe" or "translate"
    language: str | None  # the spoken language's canonical code; None: identify it when reported
    target: str | None  # translate: the target language's English name (None: English)

    @property
    def response_format(self) -> str:
        return str(self.request.response_format)


@dataclass(frozen=True)
class SpeechPart:
    """An engine request's payload for a speech line: its answer and the unit part's index."""

    answer: SpeechAnswer
    index: int


def check_speech_line(line: BatchLine, served_names: list[str]) -> tuple[SpeechBody | None, dict[str, Any] | None]:
    """(the checked body, None), or (None, its error line), in run-batch's order: the line's
    shape, its body (vLLM's own models and messages), its model, then what gemma4u refuses."""
    import pydantic
    from vllm.entrypoints.launchers.run_batch import BatchTranscriptionRequest, BatchTranslationRequest
    from vllm.exceptions import VLLMValidationError

    if (error := shape_error(line)) is not None:
        return None, error
    task = SPEECH_URLS[line.raw["url"]]
    model = BatchTranslationRequest if task == "translate" else BatchTranscriptionRequest
    try:
        request = model.model_validate(line.raw["body"])
    except pydantic.ValidationError as exc:
        return None, invalid_body(line, exc)
    except VLLMValidationError as exc:  # vLLM's own validators (a `file` field, stream options)
        return None, error_output(line.custom_id, f"invalid body: {str(exc).split(' (parameter=')[0]}")
    if (error := request_error(line, request, served_names)) is not None:
        return None, error
    if request.response_format == "diarized_json":  # vLLM's message for a model without diarization
        msg = f"Currently do not support diarized_json for {request.model or served_names[0]}"
        return None, error_output(line.custom_id, error_response(msg, "BadRequestError", 400))
    try:
        language = normalise_language(request.language)
        to = normalise_language(request.to_language) if task == "translate" else None
    except ValueError as exc:
        return None, error_output(line.custom_id, error_response(str(exc), "BadRequestError", 400, "language"))
    return SpeechBody(request, task, language, language_name(to) if to else None), None


def speech_item(body: SpeechBody, policy: MediaPolicy, item_id: str) -> WorkItem:
    """The line's audio as a decode worker's item: a data: URI's bytes inline, a file:// URL's
    path, a URL to fetch; ItemError for a URL the media policy refuses."""
    return policy.item(MediaRef("audio", str(body.request.file_url)), item_id)


class SpeechAnswer:
    """One speech line in flight: its decoded audio as one unit of window requests (plus
    language identification when the response reports a language no one gave), and the
    response body once every part is back."""

    def __init__(
        self, line: BatchLine, body: SpeechBody, decoded: DecodedItem, engine: Engine, request_id: str
    ) -> None:
        self.line, self.body, self.engine = line, body, engine
        self.duration = 0.0
        self.unit: Unit | None = None
        self._requests: list[EngineRequest] = []
        self._error: dict[str, Any] | None = None  # the error line, once there is one
        if decoded.error is not None:
            self._error = media_error(line.custom_id, ItemError(decoded.error_kind or "decode_error", decoded.error))
            return
        if decoded.audio is not None:
            self.duration = len(decoded.audio) / SAMPLE_RATE
        try:
            self.unit, builder = self._unit(decoded)
            self._requests = self._build(builder, request_id)
        except ValueError as exc:  # the prompt over the context, sampling values vLLM refuses
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._error = error_output(line.custom_id, error_response(msg, "BadRequestError", 400))
            self._requests = []
        decoded.audio = None  # every part holds its own window: the whole waveform is not kept

    def _unit(self, decoded: DecodedItem) -> tuple[Unit, RequestBuilder]:
        b = self.body
        config = JobConfig(input="run-batch", output=".", task=b.task, language=b.language, translate_to=b.target)
        builder = RequestBuilder(config, self.engine, "run-batch")
        item = decoded.item
        if b.request.prompt:
            prompt = f"{item_instruction(config, item, b.task)} {CONTEXT}"
            item = dataclasses.replace(item, prompt=prompt, fields={"context": b.request.prompt})
        unit = builder.units(dataclasses.replace(decoded, item=item))[0]
        if b.response_format != "verbose_json" and any(p.detects is not None for p in unit.parts):
            unit.parts = [p for p in unit.parts if p.detects is None]  # no response would show the language
            unit.reset()
        if unit.error is not None:
            raise ValueError(unit.error)
        if (why := builder.unsendable(unit)) is not None:
            raise ValueError(why[0])
        return unit, builder

    def _build(self, builder: RequestBuilder, request_id: str) -> list[EngineRequest]:
        """The unit's requests, each window's with vLLM's own sampling parameters from the body
        (language identification keeps its constrained, greedy settings)."""
        unit = self.unit
        assert unit is not None
        if unit.no_speech:
            return []
        out = []
        for i, (req, part) in enumerate(zip(builder.requests(unit), unit.parts, strict=True)):
            params = None
            if part.detects is None:
                prompt_len = self.engine.count_tokens(req.prompt) + part.mm_tokens
                asked = self.body.request.max_completion_tokens
                defaults = self.engine.generation_defaults()
                limit = self.engine.max_model_len or prompt_len + DEFAULT_MAX_TOKENS
                params = self.body.request.to_sampling_params(
                    max_tokens_for(limit, prompt_len, asked, defaults), defaults
                )
                if self.body.response_format == "verbose_json":
                    params.logprobs = 0  # the sampled tokens' log-probabilities: each segment's avg_logprob
            rid = f"{request_id}.{i}"
            out.append(dataclasses.replace(req, request_id=rid, payload=SpeechPart(self, i), params=params))
        return out

    def requests(self) -> list[EngineRequest]:
        """What to send; none when the line is answered already (an error, or no speech)."""
        return list(self._requests)

    def finish(self, index: int, result: EngineResult, *, rejected: bool = False) -> bool:
        """Record one part's result; True when every part is back."""
        assert self.unit is not None
        gen = result.generation or (result.choices[0] if result.choices else None)
        error = result.error or (None if gen is not None else "no output")
        if error is not None and self._error is None:
            status, kind = (400, "BadRequestError") if rejected else (500, "InternalServerError")
            self._error = error_output(self.line.custom_id, error_response(error, kind, status), status)
        return self.unit.finish_part(index, gen, error, result.error_kind)

    def output(self) -> dict[str, Any]:
        """The line's BatchRequestOutput: vLLM's response body, or the error line."""
        if self._error is not None:
            return self._error
        assert self.unit is not None
        text, segments, _ = ("", [], None) if self.unit.no_speech else stitch(self.unit)
        return completion_output(self.line.custom_id, self._body(text, segments or []))

    def _body(self, text: str, segments: list[dict[str, Any]]) -> Any:
        """vLLM's response model for the line's response_format (its serving's shapes)."""
        from vllm.entrypoints.speech_to_text.transcription.protocol import (
            TranscriptionResponse,
            TranscriptionResponseVerbose,
            TranscriptionSegment,
            TranscriptionUsageAudio,
        )
        from vllm.entrypoints.speech_to_text.translation.protocol import (
            TranslationResponse,
            TranslationResponseVerbose,
            TranslationSegment,
        )

        translate = self.body.task == "translate"
        fmt = self.body.response_format
        if fmt == "verbose_json":
            assert self.unit is not None
            segment = TranslationSegment if translate else TranscriptionSegment
            verbose = TranslationResponseVerbose if translate else TranscriptionResponseVerbose
            gens = [g for p, g in zip(self.unit.parts, self.unit.results, strict=True) if p.detects is None]
            return verbose(
                text=text,
                language=record_language(self.unit) or UNDETERMINED,
                duration=self.duration,
                segments=[
                    segment(**_segment(i, seg, gen, self.body.request.temperature))
                    for i, (seg, gen) in enumerate(zip(segments, gens, strict=True))
                ],
            )
        if fmt == "srt":
            text = to_srt(segments)
        elif fmt == "vtt":
            text = to_vtt(segments)
        if translate:  # vLLM reports no usage for translations
            return TranslationResponse(text=text)
        # vLLM's usage for audio: its duration in whole seconds, rounded up (as OpenAI's)
        return TranscriptionResponse(text=text, usage=TranscriptionUsageAudio(seconds=math.ceil(self.duration)))


def _segment(i: int, seg: dict[str, Any], gen: Generation | None, temperature: float) -> dict[str, Any]:
    """One speech window as vLLM's verbose segment (its compression ratio and seek as vLLM
    computes them; no token ids and no no_speech_prob)."""
    text = str(seg["text"])
    raw = text.encode("utf-8")
    mean = gen.mean_logprob() if gen is not None else None
    return {
        "id": i,
        "seek": int(seg["start"]),
        "start": float(seg["start"]),
        "end": float(seg["end"]),
        "temperature": temperature,
        "text": text,
        "compression_ratio": len(raw) / len(zlib.compress(raw)),
        "tokens": [],
        "avg_logprob": mean if mean is not None else 0.0,
    }

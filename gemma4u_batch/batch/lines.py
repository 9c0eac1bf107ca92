"""The OpenAI Batch format as `vllm run-batch` reads and writes it, for `gemma4u run-batch`.

One input line is `{"custom_id", "method", "url", "body"}`; one output line is vLLM's
`BatchRequestOutput` (`id`, `custom_id`, `response{status_code, request_id, body}`, `error`).
Each line is checked the way run-batch checks it (vLLM's own pydantic models and messages),
its messages become the conversation vLLM's chat utilities hand the chat template (content
parts in the "openai" format: `{"type": "image"}` placeholders in place, text parts as given),
and its media is decoded by gemma4u's decoders (limits and fidelity as in every gemma4u job).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..decode import DecodeOptions
from ..errors import ItemError, UsageError

CHAT_URL = "/v1/chat/completions"
# run-batch's other endpoints: a generative model has no handler for them.
OTHER_ENDPOINTS = {
    "embeddings": lambda url: url == "/v1/embeddings",
    "score": lambda url: url.endswith("/score"),
    "rerank": lambda url: url.endswith("/rerank"),
    "transcriptions": lambda url: url == "/v1/audio/transcriptions",
    "translations": lambda url: url == "/v1/audio/translations",
}
UNKNOWN_URL = (
    "URL {url} was used. Supported endpoints: /v1/chat/completions, /v1/embeddings,"
    " /v1/audio/transcriptions, /v1/audio/translations, /score,  /rerank."
)
STREAM_REFUSED = "Request must not be sent in stream mode"
AUDIO_MAX_SECONDS = 30.0  # the model's audio tower takes at most 750 tokens × 40 ms per item


@dataclass
class BatchLine:
    """A readable input line: its 1-based line number, custom_id and parsed object."""

    lineno: int
    custom_id: str
    raw: dict[str, Any]

    def key(self, settings: dict[str, Any]) -> str:
        """Content key of this line under these settings: a checkpointed answer is reused
        only for the same line, model and engine settings."""
        blob = json.dumps([self.raw, settings], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class BatchFile:
    lines: list[BatchLine]
    problems: list[str]  # "file:line: why", one per line that could not be read
    sha256: str


def read_batch(path: Path) -> BatchFile:
    """Every readable line, and a report of the unreadable ones. Duplicate custom_ids are a
    usage error (outputs are matched to inputs by custom_id)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the input file {path}: {exc.strerror or exc}") from exc
    lines: list[BatchLine] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for n, text in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{n}: not JSON ({exc.msg} at column {exc.colno})")
            continue
        cid = obj.get("custom_id") if isinstance(obj, dict) else None
        if not isinstance(cid, str) or not cid:
            problems.append(f"{path}:{n}: no custom_id (a non-empty string is required)")
            continue
        if cid in seen:
            raise UsageError(f"{path}:{n}: duplicate custom_id {cid!r} (first on line {seen[cid]})")
        seen[cid] = n
        lines.append(BatchLine(n, cid, obj))
    return BatchFile(lines, problems, hashlib.sha256(data).hexdigest())


# ------------------------------------------------------------------------- outputs


def _uuid() -> str:
    from vllm.utils import random_uuid

    return random_uuid()


def _output_line(custom_id: str, error: Any, **response: Any) -> dict[str, Any]:
    """One output line as vLLM's run-batch builds it (its own pydantic models)."""
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput, BatchResponseData

    out = BatchRequestOutput(
        id=f"vllm-{_uuid()}",
        custom_id=custom_id,
        response=BatchResponseData(**response, request_id=f"vllm-batch-{_uuid()}"),
        error=error,
    )
    return json.loads(out.model_dump_json())


def error_output(custom_id: str, message: str | Any, status: int = 400) -> dict[str, Any]:
    """An error line as run-batch writes it: status in `response`, the reason in `error`
    (a message string, or vLLM's ErrorResponse)."""
    return _output_line(custom_id, message, status_code=status)


def error_response(message: str, err_type: str, status: int, param: str | None = None) -> Any:
    from http import HTTPStatus

    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    return create_error_response(message, err_type, HTTPStatus(status), param)


def completion_output(custom_id: str, body: Any) -> dict[str, Any]:
    """An answered line: status 200 (the model's default) and the completion as `body`."""
    return _output_line(custom_id, None, body=body)


# ------------------------------------------------------------------- line checks


def check_line(line: BatchLine, served_names: list[str]) -> tuple[Any | None, dict[str, Any] | None]:
    """(vLLM's ChatCompletionRequest, None) for a line to generate, or (None, its error line),
    in run-batch's order: the line's shape, its url, its model, streaming."""
    import pydantic
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    raw = line.raw
    url = raw.get("url")
    if not isinstance(url, str) or not isinstance(raw.get("method"), str) or not isinstance(raw.get("body"), dict):
        return None, error_output(line.custom_id, "invalid batch line: method, url (strings) and body are required")
    if url != CHAT_URL:
        key = url.split("/")[-1]
        if key in OTHER_ENDPOINTS and OTHER_ENDPOINTS[key](url):
            return None, error_output(line.custom_id, f"Model does not support endpoint: {url}")
        return None, error_output(line.custom_id, UNKNOWN_URL.format(url=url))
    try:
        body = ChatCompletionRequest.model_validate(raw["body"])
    except pydantic.ValidationError as exc:
        return None, error_output(line.custom_id, f"invalid body: {_first_error(exc)}")
    if body.model and body.model not in served_names:
        msg = f"The model `{body.model}` does not exist. Valid aliases: {', '.join(served_names)}."
        return None, error_output(line.custom_id, error_response(msg, "NotFoundError", 404, "model"), 404)
    if body.stream:
        return None, error_output(line.custom_id, STREAM_REFUSED)
    if body.use_beam_search:
        return None, error_output(line.custom_id, "beam search is not supported by gemma4u run-batch")
    if body.tools:
        return None, error_output(line.custom_id, "tools are not supported by gemma4u run-batch")
    return body, None


def _first_error(exc: Any) -> str:
    errs = exc.errors()
    if not errs:
        return str(exc).splitlines()[0]
    e = errs[0]
    where = ".".join(str(p) for p in e.get("loc", ()))
    return f"{where}: {e.get('msg')}" if where else str(e.get("msg"))


# ------------------------------------------------------------------------- media


@dataclass
class MediaPolicy:
    """Where media may come from: data: URIs always, file:// under allowed_local_media_path
    (as vLLM), http(s) only with allow_network (with a timeout and a size limit)."""

    allowed_local_media_path: Path | None = None
    allow_network: bool = False
    timeout_s: float = 10.0
    max_bytes: int = 64 * 1024**2
    decode: DecodeOptions = field(default_factory=DecodeOptions)

    def fetch(self, url: str) -> bytes:
        scheme = urllib.parse.urlparse(url).scheme.lower()
        if scheme == "data":
            return self._data_uri(url)
        if scheme == "file":
            return self._local(url)
        if scheme in ("http", "https"):
            if not self.allow_network:
                raise ItemError("network_media", f"{scheme} media is off; pass --allow-network-media to fetch {url}")
            return self._download(url)
        raise ItemError("bad_media_url", f"unsupported media URL scheme {scheme!r} (data:, file:// or http(s))")

    def _data_uri(self, url: str) -> bytes:
        head, sep, payload = url.partition(",")
        if not sep or ";base64" not in head:
            raise ItemError("bad_media_url", "a data: URI must be base64 (data:<type>;base64,<data>)")
        return self._b64(payload)

    def _b64(self, payload: str) -> bytes:
        if len(payload) * 3 // 4 > self.max_bytes:
            raise ItemError("too_large", f"media over {self.max_bytes} bytes")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ItemError("bad_media_url", f"invalid base64 media: {exc}") from exc

    def _local(self, url: str) -> bytes:
        if self.allowed_local_media_path is None:
            raise ItemError("bad_media_url", "file:// media needs --allowed-local-media-path")
        parsed = urllib.parse.urlparse(url)
        path = Path(urllib.parse.unquote(parsed.path)).resolve()
        root = self.allowed_local_media_path.resolve()
        if parsed.netloc not in ("", "localhost") or not path.is_relative_to(root):
            raise ItemError("bad_media_url", f"{url} is outside --allowed-local-media-path {root}")
        try:
            if path.stat().st_size > self.max_bytes:
                raise ItemError("too_large", f"{path} is over {self.max_bytes} bytes")
            return path.read_bytes()
        except OSError as exc:
            raise ItemError("unreadable", f"cannot read {path}: {exc.strerror or exc}") from exc

    def _download(self, url: str) -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                data = resp.read(self.max_bytes + 1)
        except (OSError, ValueError) as exc:
            raise ItemError("fetch_failed", f"cannot fetch {url}: {exc}") from exc
        if len(data) > self.max_bytes:
            raise ItemError("too_large", f"{url} is over {self.max_bytes} bytes")
        return data


# ------------------------------------------------------------------ conversation

_IMAGE_PARTS = ("image_url", "input_image")


@dataclass
class Conversation:
    """The messages the chat template sees and the media of the request, in order."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    audios: list[Any] = field(default_factory=list)
    videos: list[Any] = field(default_factory=list)
    mm_tokens: int = 0  # soft tokens the media adds (for a default max_tokens)

    def multi_modal_data(self) -> dict[str, Any] | None:
        mm: dict[str, Any] = {}
        for name, items in (("image", self.images), ("audio", self.audios), ("video", self.videos)):
            if items:
                mm[name] = items[0] if len(items) == 1 else list(items)
        return mm or None


def conversation_of(messages: list[Any], media: MediaPolicy) -> Conversation:
    """vLLM's chat-utility parse in the "openai" content format: string content becomes one
    text part, media parts become placeholders in place; media decoded by gemma4u."""
    conv = Conversation()
    for msg in messages:
        m = dict(msg)
        role = m.get("role")
        content = m.get("content")
        out: dict[str, Any] = {"role": role}
        if isinstance(content, str):
            out["content"] = [{"type": "text", "text": content}]
        elif content is None:
            out["content"] = None if role == "assistant" else []
        else:
            out["content"] = [p for part in content if (p := _part(dict(part), conv, media)) is not None]
        for extra in ("name", "tool_call_id", "tool_calls"):
            if m.get(extra) is not None:
                out[extra] = m[extra]
        conv.messages.append(out)
    return conv


def _part(part: dict[str, Any], conv: Conversation, media: MediaPolicy) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind in ("text", "input_text", "output_text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind in _IMAGE_PARTS:
        ref = part.get(kind)
        url = ref.get("url") if isinstance(ref, dict) else ref
        _add_image(conv, media.fetch(str(url)), media)
        return {"type": "image"}
    if kind == "input_audio":
        spec = part.get("input_audio") or {}
        _add_audio(conv, media._b64(str(spec.get("data", ""))), media)
        return {"type": "audio"}
    if kind == "audio_url":
        _add_audio(conv, media.fetch(str((part.get("audio_url") or {}).get("url"))), media)
        return {"type": "audio"}
    if kind == "video_url":
        _add_video(conv, media.fetch(str((part.get("video_url") or {}).get("url"))), media)
        return {"type": "video"}
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal", "")}
    raise ItemError("unsupported_part", f"unsupported content part type {kind!r}")


def _add_image(conv: Conversation, data: bytes, media: MediaPolicy) -> None:
    from ..decode.image import decode_image
    from ..prompting.units import image_tokens

    img, info = decode_image(data, media.decode)
    conv.images.append(img)
    conv.mm_tokens += image_tokens(info)


def _add_audio(conv: Conversation, data: bytes, media: MediaPolicy) -> None:
    import numpy as np

    from ..decode.audio import decode_audio, pad_to_token_multiple
    from ..prompting.units import audio_tokens

    wave, _ = decode_audio(data, media.decode)
    assert isinstance(wave, np.ndarray)  # no spill folder is given here: decoded in memory
    if wave.size > AUDIO_MAX_SECONDS * media.decode.sample_rate:
        seconds = wave.size / media.decode.sample_rate
        raise ItemError("too_long", f"audio of {seconds:.1f} s: the model takes at most 30 s per audio item")
    clip = pad_to_token_multiple(wave)
    conv.audios.append((clip, media.decode.sample_rate))
    conv.mm_tokens += audio_tokens(clip.size)


def _add_video(conv: Conversation, data: bytes, media: MediaPolicy) -> None:
    from ..decode.video import decode_video
    from ..prompting.units import video_metadata, video_tokens

    frames, _, _ = decode_video(data, media.decode)
    conv.videos.append((list(frames.frames), video_metadata(frames)))
    conv.mm_tokens += video_tokens(frames, media.decode)


def media_error(custom_id: str, exc: ItemError) -> dict[str, Any]:
    return error_output(custom_id, error_response(f"{exc.kind}: {exc.message}", "BadRequestError", 400))

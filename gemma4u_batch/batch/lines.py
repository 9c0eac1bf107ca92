"""The OpenAI Batch format as `vllm run-batch` reads and writes it, for `gemma4u run-batch`.

One input line is `{"custom_id", "method", "url", "body"}`; one output line is vLLM's
`BatchRequestOutput` (`id`, `custom_id`, `response{status_code, request_id, body}`, `error`).
Each line is checked the way run-batch checks it (vLLM's own pydantic models and messages);
chat lines are then rendered by vLLM's chat serving code (chat.py), transcription and
translation lines answered by gemma4u's transcribe pipeline (speech.py), and every line's media
decoded by gemma4u's decode workers (media.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ItemError, UsageError

CHAT_URL = "/v1/chat/completions"
# run-batch's other endpoints: a generative model has no handler for them.
OTHER_ENDPOINTS = {
    "embeddings": lambda url: url == "/v1/embeddings",
    "score": lambda url: url.endswith("/score"),
    "rerank": lambda url: url.endswith("/rerank"),
}
# run-batch's speech endpoints, answered by gemma4u's transcribe pipeline (speech.py): the task of each
SPEECH_URLS = {"/v1/audio/transcriptions": "transcribe", "/v1/audio/translations": "translate"}
UNKNOWN_URL = (
    "URL {url} was used. Supported endpoints: /v1/chat/completions, /v1/embeddings,"
    " /v1/audio/transcriptions, /v1/audio/translations, /score,  /rerank."
)
STREAM_REFUSED = "Request must not be sent in stream mode"


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
    """A local batch file's lines (`parse_batch`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the input file {path}: {exc.strerror or exc}") from exc
    return parse_batch(data, str(path))


def parse_batch(data: bytes, path: str) -> BatchFile:
    """Every readable line, and a report of the unreadable ones (as `path:LINE: why`; `path` is
    the file as messages name it, a URL redacted). Duplicate custom_ids are a usage error
    (outputs are matched to inputs by custom_id)."""
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
    """(the body to answer, None) for a line to generate, or (None, its error line), in
    run-batch's order: the line's shape, its url, its model, streaming. The body is vLLM's
    ChatCompletionRequest, or a speech line's `speech.SpeechBody`."""
    import pydantic
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    if (error := shape_error(line)) is not None:
        return None, error
    raw = line.raw
    url = raw["url"]
    if url in SPEECH_URLS:
        from .speech import check_speech_line

        return check_speech_line(line, served_names)
    if url != CHAT_URL:
        key = url.split("/")[-1]
        if key in OTHER_ENDPOINTS and OTHER_ENDPOINTS[key](url):
            return None, error_output(line.custom_id, f"Model does not support endpoint: {url}")
        return None, error_output(line.custom_id, UNKNOWN_URL.format(url=url))
    try:
        body = ChatCompletionRequest.model_validate(raw["body"])
    except pydantic.ValidationError as exc:
        return None, invalid_body(line, exc)
    if (error := request_error(line, body, served_names)) is not None:
        return None, error
    asked = [name for name in UNSUPPORTED_CHAT if getattr(body, name, None)]
    if body.echo and body.logprobs:
        asked.append("echo with logprobs (the prompt's log-probabilities)")
    if asked:
        return None, error_output(line.custom_id, f"{asked[0]} is not supported by gemma4u run-batch")
    return body, None


UNSUPPORTED_CHAT = ("prompt_logprobs", "return_token_ids", "return_tokens_as_token_ids", "logprob_token_ids")
"""Chat request fields vLLM's server answers and gemma4u run-batch does not (an error line
says so rather than an answer without them)."""


BEAM_SEARCH_REFUSED = "beam search is not supported by gemma4u run-batch"


def request_error(line: BatchLine, body: Any, served_names: list[str]) -> dict[str, Any] | None:
    """The error line of a valid body run-batch refuses (chat and speech alike), in its order:
    another model, streaming, beam search; else None."""
    if (error := model_error(line, body.model, served_names)) is not None:
        return error
    if body.stream:
        return error_output(line.custom_id, STREAM_REFUSED)
    if body.use_beam_search:
        return error_output(line.custom_id, BEAM_SEARCH_REFUSED)
    return None


def shape_error(line: BatchLine) -> dict[str, Any] | None:
    """The error line of a line without a method, url (strings) and body, else None."""
    raw = line.raw
    strings = isinstance(raw.get("url"), str) and isinstance(raw.get("method"), str)
    if not strings or not isinstance(raw.get("body"), dict):
        return error_output(line.custom_id, "invalid batch line: method, url (strings) and body are required")
    return None


def model_error(line: BatchLine, model: str | None, served_names: list[str]) -> dict[str, Any] | None:
    """vLLM's 404 for a `model` that is not served (none given: the served model), else None."""
    if model and model not in served_names:
        msg = f"The model `{model}` does not exist. Valid aliases: {', '.join(served_names)}."
        return error_output(line.custom_id, error_response(msg, "NotFoundError", 404, "model"), 404)
    return None


def invalid_body(line: BatchLine, exc: Any) -> dict[str, Any]:
    """The error line of a body vLLM's pydantic model rejects."""
    return error_output(line.custom_id, f"invalid body: {_first_error(exc)}")


def _first_error(exc: Any) -> str:
    errs = exc.errors()
    if not errs:
        return str(exc).splitlines()[0]
    e = errs[0]
    where = ".".join(str(p) for p in e.get("loc", ()))
    return f"{where}: {e.get('msg')}" if where else str(e.get("msg"))


def max_tokens_for(
    max_model_len: int, prompt_len: int, asked: int | None, defaults: dict[str, Any], truncate: int | None = None
) -> int:
    """A line's max_tokens as vLLM's serving computes it (`get_max_tokens`: the asked number,
    else the model's generation config's, at most what is left of the context); ValueError,
    with vLLM's message, when the prompt alone is over the context."""
    from vllm.entrypoints.serve.utils.api_utils import get_max_tokens

    return get_max_tokens(max_model_len, asked, prompt_len, defaults, truncate_prompt_tokens=truncate)


def media_error(custom_id: str, exc: ItemError) -> dict[str, Any]:
    return error_output(custom_id, error_response(f"{exc.kind}: {exc.message}", "BadRequestError", 400))

"""The output record schema: one place for the Arrow/Parquet types and their docs."""

from __future__ import annotations

import json
from typing import Any

COLUMN_DOCS: dict[str, str] = {
    "id": "stable item id: path relative to the input root, manifest id, or dataset row id",
    "key": "content key: sha256 over input bytes, rendered prompt, model and sampling",
    "source": "where the item came from (file path, manifest:line, dataset[split]#row)",
    "modality": "image, audio or video (null if unknown)",
    "task": "task name (caption, transcribe, ...)",
    "prompt": "the instruction sent (the chat template wraps it)",
    "text": "generated text; null on error",
    "finish_reason": "stop or length; null on error",
    "num_prompt_tokens": "prompt length in tokens, media included",
    "num_output_tokens": "generated tokens",
    "error": "null on success, else a one-line message",
    "error_kind": "machine-readable error class (corrupt, too_large, not_an_image, ...)",
    "model": "model path or id",
    "content_sha256": "sha256 of the input bytes",
    "decode_seconds": "time spent decoding the media",
    "segments": (
        "transcription windows: list of {start, end, text, language} (seconds; the window's language code); "
        "null otherwise"
    ),
    "language": (
        "speech tasks: the spoken language as an ISO 639-1 code (639-3 where none), given by --language or "
        "identified by the model in the first speech window (auto); null otherwise"
    ),
    "data": (
        "structured output: the parsed JSON object (--json-schema) or the chosen label (--choices); "
        "a JSON string in Parquet"
    ),
    "mean_logprob": (
        "mean log-probability of the generated tokens (≤ 0; nearer 0 = more confident): threshold it to "
        "find doubtful outputs; null on error"
    ),
    "logprobs": (
        "with --logprobs N: per generated token {token, logprob, top: [{token, logprob}] × N}; null otherwise"
    ),
    "flags": "quality flags: token_cap (hit --max-tokens), empty, repetition",
    "retried": "true when a flagged output was regenerated with retry_flagged sampling",
    "supersedes": "key of the earlier record of this id that this one replaces (changed input, --retry-errors)",
    "reused_from": (
        "id of the record this one was copied from: same content key (a moved, renamed or copied input), "
        "made without the engine; null when generated"
    ),
    "model_fingerprint": "the model (and its revision or files) the text was made with; null before it was kept",
    "tombstone": "true when the input no longer exists and --prune retired its record (text and data null)",
    "fields": "extra manifest/dataset columns (JSON object; a JSON string in Parquet)",
    "run_id": "the run that wrote this record (also in .gemma4u/run.json)",
    "created_at": "when the record was made (UTC; ISO 8601 in JSONL, a timestamp in Parquet)",
}
DATA_TYPED_DOC = (
    "Parquet only, with --json-schema whose top level is an object with properties: `data` as a struct "
    "with one typed field per property (values that do not fit the schema are null)"
)
DATA_SCHEMA_KEY = "gemma4u.json_schema"  # Parquet metadata: the schema `data_typed` follows


def arrow_schema(data_schema: dict[str, Any] | None = None) -> Any:
    """The Parquet schema; with a JSON schema (object with properties) a typed `data_typed` struct."""
    import pyarrow as pa

    typed = [("data_typed", json_schema_arrow_type(data_schema))] if data_schema is not None else []
    return pa.schema(
        [
            ("id", pa.string()),
            ("key", pa.string()),
            ("source", pa.string()),
            ("modality", pa.string()),
            ("task", pa.string()),
            ("prompt", pa.string()),
            ("text", pa.string()),
            ("finish_reason", pa.string()),
            ("num_prompt_tokens", pa.int64()),
            ("num_output_tokens", pa.int64()),
            ("error", pa.string()),
            ("error_kind", pa.string()),
            ("model", pa.string()),
            ("content_sha256", pa.string()),
            ("decode_seconds", pa.float64()),
            (
                "segments",
                pa.list_(
                    pa.struct(
                        [
                            ("start", pa.float64()),
                            ("end", pa.float64()),
                            ("text", pa.string()),
                            ("language", pa.string()),
                        ]
                    )
                ),
            ),
            ("language", pa.string()),
            ("data", pa.string()),
            *typed,
            ("mean_logprob", pa.float64()),
            ("logprobs", logprobs_arrow_type()),
            ("flags", pa.list_(pa.string())),
            ("retried", pa.bool_()),
            ("supersedes", pa.string()),
            ("reused_from", pa.string()),
            ("model_fingerprint", pa.string()),
            ("tombstone", pa.bool_()),
            ("fields", pa.string()),
            ("run_id", pa.string()),
            ("created_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def logprobs_arrow_type() -> Any:
    """`logprobs`: list<struct<token, logprob, top: list<struct<token, logprob>>>>."""
    import pyarrow as pa

    alt = pa.struct([("token", pa.string()), ("logprob", pa.float64())])
    return pa.list_(pa.struct([("token", pa.string()), ("logprob", pa.float64()), ("top", pa.list_(alt))]))


def data_schema_metadata(json_schema: Any) -> dict[str, str]:
    """Parquet metadata naming the --json-schema `data_typed` follows (empty without one)."""
    from ..prompting.structured import load_schema

    schema = load_schema(json_schema)
    return {DATA_SCHEMA_KEY: json.dumps(schema)} if typed_schema_ok(schema) else {}


def data_schema_of(metadata: dict[str, str] | dict[bytes, bytes] | None) -> dict[str, Any] | None:
    """The JSON schema recorded in Parquet metadata, if it can give `data` typed columns."""
    if not metadata:
        return None
    raw = metadata.get(DATA_SCHEMA_KEY) or metadata.get(DATA_SCHEMA_KEY.encode())  # type: ignore[call-overload]
    if not raw:
        return None
    schema = json.loads(raw)
    return schema if typed_schema_ok(schema) else None


def typed_schema_ok(schema: Any) -> bool:
    return isinstance(schema, dict) and _kind(schema) == "object" and bool(schema.get("properties"))


def _kind(js: Any) -> str:
    """The one JSON type a schema node stands for ("json" when it is not one simple type)."""
    if not isinstance(js, dict):
        return "json"
    t = js.get("type")
    if isinstance(t, list):
        t = [x for x in t if x != "null"]
        t = t[0] if len(t) == 1 else None
    if t is None and "enum" in js and all(isinstance(v, str) for v in js["enum"]):
        t = "string"
    if t is None and "const" in js and isinstance(js["const"], str):
        t = "string"
    if t == "object" and not (isinstance(js.get("properties"), dict) and js["properties"]):
        return "json"
    if t == "array" and not isinstance(js.get("items"), dict):
        return "json"
    return t if t in ("string", "integer", "number", "boolean", "array", "object") else "json"


def json_schema_arrow_type(js: Any, depth: int = 0) -> Any:
    """The Arrow type for a JSON schema node: string/int64/float64/bool, list, struct; a JSON
    string for anything else (unions, $ref, free-form objects, nesting past 8 levels)."""
    import pyarrow as pa

    kind = _kind(js) if depth < 8 else "json"
    if kind == "integer":
        return pa.int64()
    if kind == "number":
        return pa.float64()
    if kind == "boolean":
        return pa.bool_()
    if kind == "array":
        return pa.list_(json_schema_arrow_type(js["items"], depth + 1))
    if kind == "object":
        return pa.struct([(k, json_schema_arrow_type(v, depth + 1)) for k, v in js["properties"].items()])
    return pa.string()


def coerce_to_schema(value: Any, js: Any, depth: int = 0) -> Any:
    """`value` shaped for json_schema_arrow_type(js): what does not fit becomes null."""
    if value is None:
        return None
    kind = _kind(js) if depth < 8 else "json"
    if kind == "string":
        return value if isinstance(value, str) else None
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
        return value if ok else None
    if kind == "number":
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if kind == "array":
        return [coerce_to_schema(v, js["items"], depth + 1) for v in value] if isinstance(value, list) else None
    if kind == "object":
        if not isinstance(value, dict):
            return None
        return {k: coerce_to_schema(value.get(k), v, depth + 1) for k, v in js["properties"].items()}
    return json.dumps(value, ensure_ascii=False)

"""The output record schema: one place for the Arrow/Parquet types and their docs."""

from __future__ import annotations

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
    "segments": "transcription windows: list of {start, end, text} (seconds); null otherwise",
    "data": (
        "structured output: the parsed JSON object (--json-schema) or the chosen label (--choices); "
        "a JSON string in Parquet"
    ),
    "flags": "quality flags: token_cap (hit --max-tokens), empty, repetition",
    "retried": "true when a flagged output was regenerated with retry_flagged sampling",
    "supersedes": "key of the earlier record of this id that this one replaces (changed input, --retry-errors)",
    "fields": "extra manifest/dataset columns (JSON object; a JSON string in Parquet)",
}


def arrow_schema() -> Any:
    import pyarrow as pa

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
                pa.list_(pa.struct([("start", pa.float64()), ("end", pa.float64()), ("text", pa.string())])),
            ),
            ("data", pa.string()),
            ("flags", pa.list_(pa.string())),
            ("retried", pa.bool_()),
            ("supersedes", pa.string()),
            ("fields", pa.string()),
        ]
    )

"""Baseline (b)'s input: an OpenAI batch JSONL (chat completions) of the same items.

Each line points at its file with a file:// URL (vLLM reads it through
--allowed-local-media-path), so the JSONL stays small and no base64 is parsed.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_batch_jsonl(paths: list[Path], out: Path, model: str, max_tokens: int, text: str) -> Path:
    with out.open("w") as fh:
        for p in paths:
            body = {
                "model": model,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": Path(p).resolve().as_uri()}},
                            {"type": "text", "text": text},
                        ],
                    }
                ],
                "max_completion_tokens": max_tokens,
                "temperature": 0.0,
                "seed": 0,
            }
            line = {"custom_id": Path(p).name, "method": "POST", "url": "/v1/chat/completions", "body": body}
            fh.write(json.dumps(line) + "\n")
    return out


def read_batch_output(path: Path) -> list[dict]:
    """custom_id, text, token counts (or error) per line of run_batch's output."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        resp = r.get("response") or {}
        body = resp.get("body") or {}
        usage = body.get("usage") or {}
        choices = body.get("choices") or [{}]
        rows.append(
            {
                "id": r.get("custom_id"),
                "text": (choices[0].get("message") or {}).get("content"),
                "num_output_tokens": usage.get("completion_tokens"),
                "num_prompt_tokens": usage.get("prompt_tokens"),
                "error": r.get("error") or (body if resp.get("status_code", 200) != 200 else None),
            }
        )
    return rows

"""Checks on generated text: quality flags and structured-output parsing."""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import ItemError


def repetitive(text: str, min_len: int = 40) -> bool:
    """Degenerate repetition: the tail is one short unit repeated, or few distinct words."""
    t = text.strip()
    if len(t) < min_len:
        return False
    tail = t[-min(len(t), 200) :]
    for n in range(1, 21):
        unit = tail[-n:]
        if unit.strip() and tail.endswith(unit * max(3, 60 // n)):
            return True
    words = re.findall(r"\w+", t.lower())
    return len(words) >= 20 and len(set(words)) / len(words) < 0.2


def quality_flags(text: str, finish_reason: str | None) -> list[str]:
    flags = []
    if finish_reason == "length":
        flags.append("token_cap")
    if not text.strip():
        flags.append("empty")
    elif repetitive(text):
        flags.append("repetition")
    return flags


def parse_structured(text: str, structured: dict[str, Any]) -> Any:
    """The parsed value of a constrained generation; ItemError('unparsable') if it isn't one."""
    if "choice" in structured:
        value = text.strip()
        if value not in structured["choice"]:
            raise ItemError("unparsable", f"output {value[:80]!r} is not one of the choices")
        return value
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ItemError("unparsable", f"output is not valid JSON ({exc.msg} at char {exc.pos})") from exc
    import jsonschema

    try:
        jsonschema.validate(value, structured["json"])
    except jsonschema.ValidationError as exc:
        raise ItemError("unparsable", f"output does not match the JSON schema: {exc.message}") from exc
    return value

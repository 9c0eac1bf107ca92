"""What the tests of the real `gemma4u` hold its output to: docs/exit-codes.md's table (they
compare the exit status with the code the table gives, so a code that changes in the docs or in
the code fails a test) and the absence of the engine's own log lines on the terminal."""

from __future__ import annotations

import re
from functools import cache

from .conftest import REPO

EXIT_CODES_MD = REPO / "docs" / "exit-codes.md"
ROW = re.compile(r"^\| (\d+) \| `([A-Z_]+)` \|", re.M)


@cache
def documented_codes() -> dict[str, int]:
    """{"LOCKED": 73, ...} from the table's code and name columns."""
    return {name: int(code) for code, name in ROW.findall(EXIT_CODES_MD.read_text(encoding="utf-8"))}


def documented_code(name: str) -> int:
    """The exit code docs/exit-codes.md gives for an `ExitCode` name."""
    codes = documented_codes()
    assert name in codes, f"docs/exit-codes.md has no row for {name}"
    return codes[name]


ENGINE_NOISE = re.compile(
    r"vllm|torch|triton|cuda|numa|safetensors|EngineCore|\bINFO\b|\bWARNING\b(?!:)|(?-i:[a-z]Warning:)|\bit/s\]",
    re.IGNORECASE,
)
"""What vLLM, torch and Triton print (their log lines, warnings, tqdm bars); gemma4u's own
messages never look like this."""


def engine_noise(text: str) -> list[str]:
    """Lines of a CLI's output that came from the engine's libraries rather than from gemma4u."""
    return [line for line in text.splitlines() if ENGINE_NOISE.search(line)]

"""What a job needs from an engine, and what the engine hands back. The job is handed one and never
shuts it down: its owner (`open_engine`, a Ray replica, a test fixture) does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..prompting.units import EngineRequest
from ..records import Generation


@dataclass
class EngineResult:
    request: EngineRequest
    generation: Generation | None = None
    error: str | None = None
    error_kind: str | None = None
    output: Any = None  # vLLM's RequestOutput as returned (every choice, logprobs); None from FakeEngine


class Engine(Protocol):
    """What a job needs from an engine. The job is handed one and never shuts it down:
    its owner (`open_engine`, a Ray replica, a test fixture) does."""

    startup_s: float  # seconds spent starting so far (tokenizer, then the engine on first use)
    accepts_patches: bool  # images may come as decode.patches.ImagePatches (the workers patchify)

    @property
    def model_name(self) -> str: ...
    @property
    def max_model_len(self) -> int | None: ...

    def notes(self) -> dict[str, Any]: ...

    def render_prompt(self, messages: list[dict[str, Any]]) -> str: ...
    def count_tokens(self, text: str) -> int: ...
    def capacity(self) -> int: ...
    def add(self, request: EngineRequest) -> EngineResult | None: ...
    def step(self) -> list[EngineResult]: ...
    def has_unfinished(self) -> bool: ...
    def take_inflight(self) -> list[EngineRequest]: ...
    def shutdown(self) -> None: ...
    def prestart(self) -> None: ...

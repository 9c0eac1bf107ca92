"""What a runner needs from an engine, and what the engine hands back.

Everything a runner (a job, run-batch) asks of an engine is here: its chat template, token
counts and generation defaults as well as the request traffic, so nothing outside `engine/`
touches an engine's internals or asks which engine it is. A runner is handed an engine and
never shuts it down: its owner (`open_engine`, a Ray replica, a test fixture) does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..prompting.builder import PromptRenderer
from ..prompting.units import EngineRequest
from ..records import Generation


@dataclass
class EngineResult:
    """A finished (or refused) request. `generation` is its first sampled sequence; `choices`
    holds every one of them (a request may ask for several, `n`), in order."""

    request: EngineRequest
    generation: Generation | None = None
    error: str | None = None
    error_kind: str | None = None
    choices: list[Generation] = field(default_factory=list)


class Engine(PromptRenderer, Protocol):
    """An engine driven request by request: top up with `add` while `capacity` lasts, `step` to
    harvest what finished. Prompts are rendered and counted by the engine's own tokenizer."""

    startup_s: float  # seconds spent starting so far (tokenizer, then the engine on first use)
    accepts_patches: bool  # images may come as decode.patches.ImagePatches (the workers patchify)

    @property
    def model_name(self) -> str: ...

    def notes(self) -> dict[str, Any]:
        """Facts for the run manifest (what the engine's plugin does here, ...)."""
        ...

    def chat_frontend(self) -> tuple[Any, Any]:
        """vLLM's model config and renderer for this model (its chat template, tokenizer and
        multimodal limits): run-batch lines are parsed and rendered by vLLM's own serving code.
        Loads what it needs (the engine, for the real one) if it has not loaded yet."""
        ...

    def generation_defaults(self) -> dict[str, Any]:
        """The model's generation config as vLLM applies it to requests that do not set a value
        (starts the engine if it has not started)."""
        ...

    def ready(self) -> bool:
        """Whether `add` would go ahead now, not wait for a start `prestart` began (a runner
        may do other work meanwhile)."""
        ...

    def prestart(self) -> None:
        """Begin starting in the background: the first item that surely needs the engine calls it."""
        ...

    def capacity(self) -> int: ...
    def add(self, request: EngineRequest) -> EngineResult | None: ...
    def step(self) -> list[EngineResult]: ...
    def has_unfinished(self) -> bool: ...

    def take_inflight(self) -> list[EngineRequest]:
        """After a death: the requests that never finished; the next `add` restarts the engine."""
        ...

    def shutdown(self) -> None: ...

"""A deterministic stand-in engine for fast unit tests of batching, resume and writing (never
instead of the real engine's tests).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..errors import EngineDied
from ..prompting.units import EngineRequest
from ..records import Generation
from .protocol import EngineResult


@dataclass
class FakeEngine:
    """Deterministic stand-in for unit tests of batching, resume and writing.

    It echoes a digest of the prompt; `fail_if` lets a test make it reject a request.
    """

    model_name: str = "fake-model"
    max_in_flight: int = 4
    steps_to_finish: int = 2
    fail_if: Callable[[EngineRequest], str | None] | None = None
    text_for: Callable[[EngineRequest, str], str] | None = None
    die_at_steps: tuple[int, ...] = ()  # simulate engine deaths at these step numbers
    steps: int = 0
    _inflight: dict[str, tuple[EngineRequest, int]] = field(default_factory=dict)
    added: int = 0
    prestarts: int = 0
    startup_s: float = 0.0
    max_model_len: int | None = None
    accepts_patches: bool = False
    frontend_model: str | None = None  # a checkpoint folder whose vLLM renderer chat_frontend() gives
    limit_mm: dict[str, int] = field(default_factory=lambda: {"image": 1, "audio": 1, "video": 1})

    def notes(self) -> dict[str, Any]:
        return {}

    def prestart(self) -> None:
        """Nothing to start; counted, so a test can tell a run never asked for the engine."""
        self.prestarts += 1

    def ready(self) -> bool:
        return True

    def render_prompt(self, messages: list[dict[str, Any]]) -> str:
        parts = []
        for m in messages:
            content = m["content"]
            if isinstance(content, str):
                parts.append(f"<{m['role']}>{content}")
            else:
                parts.append(f"<{m['role']}>" + "".join(c.get("text", f"[{c['type']}]") for c in content))
        return "".join(parts) + "<model>"

    def chat_frontend(self) -> tuple[Any, Any]:
        """vLLM's model config and renderer for `frontend_model` (a real checkpoint's folder:
        run-batch lines are rendered by vLLM's code even when the answers are fake)."""
        if self.frontend_model is None:
            raise RuntimeError("FakeEngine(frontend_model=...) is needed to render chat lines")
        return _frontend(self.frontend_model, self.max_model_len or 4096, json.dumps(self.limit_mm, sort_keys=True))

    def generation_defaults(self) -> dict[str, Any]:
        """No generation config: requests keep their own values."""
        return {}

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def capacity(self) -> int:
        return self.max_in_flight - len(self._inflight)

    def add(self, request: EngineRequest) -> EngineResult | None:
        if self.fail_if is not None and (msg := self.fail_if(request)):
            return EngineResult(request, error=f"engine rejected the request: {msg}", error_kind="rejected")
        self._inflight[request.request_id] = (request, 0)
        self.added += 1
        return None

    def step(self) -> list[EngineResult]:
        import hashlib

        self.steps += 1
        if self.steps in self.die_at_steps:
            raise EngineDied(f"fake engine died at step {self.steps}")
        done: list[EngineResult] = []
        for rid, (req, n) in list(self._inflight.items()):
            if n + 1 >= self.steps_to_finish:
                del self._inflight[rid]
                digest = hashlib.sha256(req.prompt.encode()).hexdigest()[:12]
                mm = sorted((req.multi_modal_data or {}).keys())
                text = f"fake {digest} {' '.join(mm)}".strip()
                if req.structured and "choice" in req.structured:
                    text = req.structured["choice"][int(digest, 16) % len(req.structured["choice"])]
                elif req.structured and "json" in req.structured:
                    text = json.dumps({"tags": [digest[:4], *mm]})
                if self.text_for is not None:
                    text = self.text_for(req, text)
                gen = _fake_generation(req, text, digest)
                done.append(EngineResult(req, gen, choices=[gen]))
            else:
                self._inflight[rid] = (req, n + 1)
        return done

    def has_unfinished(self) -> bool:
        return bool(self._inflight)

    def take_inflight(self) -> list[EngineRequest]:
        reqs = [r for r, _ in self._inflight.values()]
        self._inflight.clear()
        return reqs

    def shutdown(self) -> None:
        self._inflight.clear()


@lru_cache(maxsize=4)
def _frontend(model: str, max_model_len: int, limits: str) -> tuple[Any, Any]:
    """Built once per checkpoint and limits, without an engine (it takes seconds)."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.renderers import renderer_from_config

    config = EngineArgs(
        model=model,
        dtype="float32",
        max_model_len=max_model_len,
        limit_mm_per_prompt=json.loads(limits),
        mm_processor_kwargs={"max_soft_tokens": 280},
        enforce_eager=True,
    ).create_engine_config()
    return config.model_config, renderer_from_config(config)


def _fake_generation(req: EngineRequest, text: str, digest: str) -> Generation:
    """FakeEngine's answer: 3 tokens, each with a log-probability drawn from the prompt's digest."""
    lp = -(int(digest[:4], 16) % 1000) / 1000
    per_token = None
    if req.sampling.logprobs is not None:
        top = [{"token": "x", "logprob": lp}][: req.sampling.logprobs]
        per_token = [{"token": "x", "logprob": lp, "top": top} for _ in range(3)]
    prompt_tokens = len(req.prompt_token_ids) if req.prompt_token_ids is not None else len(req.prompt)
    return Generation(
        text, "stop", prompt_tokens, 3, cumulative_logprob=3 * lp, token_logprobs=per_token, token_ids=(1, 2, 3)
    )

"""The parts of a chat completion vLLM's serving builds from a finished request's tokens (its
pydantic models): `logprobs` with `top_logprobs` per sampled token."""

from __future__ import annotations

from typing import Any

from ..records import Generation


def chat_logprobs(gen: Generation, body: Any) -> Any:
    """Per sampled token: its logprob and the top `top_logprobs` alternatives (vLLM's shape)."""
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionLogProb,
        ChatCompletionLogProbs,
        ChatCompletionLogProbsContent,
    )

    top_n = body.top_logprobs or 0
    content = []
    for step in gen.token_logprobs or []:
        token = step["token"] or ""
        top = [
            ChatCompletionLogProb(
                token=alt["token"] or "", logprob=_floor(alt["logprob"]), bytes=_bytes(alt["token"] or "")
            )
            for alt in step["top"][:top_n]
        ]
        content.append(
            ChatCompletionLogProbsContent(
                token=token, logprob=_floor(step["logprob"]), bytes=_bytes(token), top_logprobs=top
            )
        )
    return ChatCompletionLogProbs(content=content)


def _floor(logprob: float | None) -> float:
    """vLLM's floor for -inf (and a token it has no logprob for)."""
    return max(logprob, -9999.0) if logprob is not None else -9999.0


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))

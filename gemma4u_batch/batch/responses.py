"""A finished engine request → the chat completion vLLM's serving would answer (its pydantic
models): one choice per sampled sequence (`n`), `logprobs`/`top_logprobs` when asked, usage."""

from __future__ import annotations

from typing import Any

from ..engine.protocol import EngineResult
from ..records import Generation


def chat_completion(res: EngineResult, body: Any, model_name: str) -> Any:
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionResponse,
        ChatCompletionResponseChoice,
        ChatMessage,
    )
    from vllm.entrypoints.serve.engine.protocol import UsageInfo

    role = "assistant" if body.add_generation_prompt else body.messages[-1]["role"]
    choices = [
        ChatCompletionResponseChoice(
            index=i,
            message=ChatMessage(role=role, content=gen.text),
            logprobs=_logprobs(gen, body) if body.logprobs else None,
            finish_reason=gen.finish_reason or "stop",
            stop_reason=gen.stop_reason,
        )
        for i, gen in enumerate(res.choices)
    ]
    prompt_tokens = res.choices[0].num_prompt_tokens
    completion_tokens = sum(gen.num_output_tokens for gen in res.choices)
    usage = UsageInfo(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )
    return ChatCompletionResponse(model=model_name, choices=choices, usage=usage)


def _logprobs(gen: Generation, body: Any) -> Any:
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

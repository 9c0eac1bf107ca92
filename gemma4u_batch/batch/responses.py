"""A finished engine request → the chat completion vLLM's serving would answer (its pydantic
models): one choice per sampled sequence (`n`), `logprobs`/`top_logprobs` when asked, usage."""

from __future__ import annotations

from typing import Any

from ..engine.protocol import Engine, EngineResult


def chat_completion(res: EngineResult, body: Any, model_name: str, engine: Engine) -> Any:
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionResponse,
        ChatCompletionResponseChoice,
        ChatMessage,
    )
    from vllm.entrypoints.serve.engine.protocol import UsageInfo

    role = "assistant" if body.add_generation_prompt else body.messages[-1]["role"]
    out = res.output
    gen = res.generation
    assert gen is not None
    choices = []
    if out is None:  # FakeEngine: its one generation
        choices.append(
            ChatCompletionResponseChoice(
                index=0, message=ChatMessage(role=role, content=gen.text), finish_reason=gen.finish_reason or "stop"
            )
        )
        prompt_tokens, completion_tokens = gen.num_prompt_tokens, gen.num_output_tokens
    else:
        for o in out.outputs:
            logprobs = _logprobs(o, body) if body.logprobs else None
            choices.append(
                ChatCompletionResponseChoice(
                    index=o.index,
                    message=ChatMessage(role=role, content=o.text),
                    logprobs=logprobs,
                    finish_reason=o.finish_reason or "stop",
                    stop_reason=o.stop_reason,
                )
            )
        prompt_tokens = len(out.prompt_token_ids or [])
        completion_tokens = sum(len(o.token_ids) for o in out.outputs)
    usage = UsageInfo(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )
    return ChatCompletionResponse(model=model_name, choices=choices, usage=usage)


def _logprobs(o: Any, body: Any) -> Any:
    """Per sampled token: its logprob and the top `top_logprobs` alternatives (vLLM's shape)."""
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionLogProb,
        ChatCompletionLogProbs,
        ChatCompletionLogProbsContent,
    )

    top_n = body.top_logprobs or 0
    content = []
    for token_id, step in zip(o.token_ids, o.logprobs or [], strict=False):
        chosen = step.get(token_id)
        token = _token(chosen, token_id)
        top = [
            ChatCompletionLogProb(
                token=_token(lp, tid), logprob=max(lp.logprob, -9999.0), bytes=_bytes(_token(lp, tid))
            )
            for i, (tid, lp) in enumerate(sorted(step.items(), key=lambda kv: kv[1].rank or 0))
            if i < top_n
        ]
        content.append(
            ChatCompletionLogProbsContent(
                token=token,
                logprob=max(chosen.logprob, -9999.0) if chosen is not None else -9999.0,
                bytes=_bytes(token),
                top_logprobs=top,
            )
        )
    return ChatCompletionLogProbs(content=content)


def _token(lp: Any, token_id: int) -> str:
    text = getattr(lp, "decoded_token", None)
    return text if text is not None else f"token_id:{token_id}"


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))

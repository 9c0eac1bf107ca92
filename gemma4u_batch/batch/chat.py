"""Chat lines as vLLM's OpenAI server parses, renders and answers them, with the media left to
gemma4u's decode workers.

vLLM's own code does everything a line's meaning depends on: `OnlineRenderer.render_chat`
checks the chat template and the tool choice, parses the messages (every content part vLLM
accepts, its placeholders, its per-prompt media limits), applies the chat template with the
request's kwargs and tools, lets the tool parser adjust the request, and tokenizes the prompt
as the server does. Only the media differ: vLLM's chat parser asks a media connector for each
media part, and the connector registered here hands back where the medium is (`MediaRef`)
instead of fetching and decoding it in this process; the decode workers do that, with
gemma4u's limits, and their patches go to the engine with vLLM's token ids. The answer is
built as vLLM's `chat_completion_full_generator` builds it (tool calls and reasoning through
vLLM's parser, finish reasons, usage).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..engine.protocol import EngineResult

MEDIA_REFS = "gemma4u-media-refs"
"""The media connector vLLM's chat parser uses in `gemma4u run-batch` (VLLM_MEDIA_CONNECTOR)."""


@dataclass(frozen=True)
class MediaRef:
    """One media part of a line, as vLLM's chat parser found it: its modality and URL (data:,
    file:// or http(s)); fetched and decoded later, in a decode worker."""

    modality: str  # "image", "audio" or "video"
    url: str


def _register_connector() -> None:
    """Register the connector under MEDIA_REFS (once; vLLM is imported only when a line is
    rendered, so a rerun with nothing to send never loads it)."""
    from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector

    if MEDIA_REFS in MEDIA_CONNECTOR_REGISTRY.name2class:
        return

    class RefConnector(MediaConnector):
        """vLLM's media connector interface, answering with where a medium is, not its content."""

        def fetch_image(self, image_url: str, *, image_mode: str | None = "RGB") -> Any:
            return MediaRef("image", image_url)

        async def fetch_image_async(self, image_url: str, *, image_mode: str | None = "RGB") -> Any:
            return MediaRef("image", image_url)

        def fetch_audio(self, audio_url: str) -> Any:
            return MediaRef("audio", audio_url)

        async def fetch_audio_async(self, audio_url: str) -> Any:
            return MediaRef("audio", audio_url)

        def fetch_video(
            self, video_url: str, *, image_mode: str | None = "RGB", video_processor: str | None = None
        ) -> Any:
            return MediaRef("video", video_url)

        async def fetch_video_async(
            self, video_url: str, *, image_mode: str | None = "RGB", video_processor: str | None = None
        ) -> Any:
            return MediaRef("video", video_url)

        # Embeddings as input: vLLM's server refuses them unless --enable-mm-embeds, which
        # gemma4u run-batch does not offer (the engine enables the option for its own patches).
        def fetch_image_embedding(self, *args: Any, **kwargs: Any) -> Any:
            raise _embeds_refused("image_embeds")

        async def fetch_image_embedding_async(self, *args: Any, **kwargs: Any) -> Any:
            raise _embeds_refused("image_embeds")

        def fetch_audio_embedding(self, *args: Any, **kwargs: Any) -> Any:
            raise _embeds_refused("audio_embeds")

        async def fetch_audio_embedding_async(self, *args: Any, **kwargs: Any) -> Any:
            raise _embeds_refused("audio_embeds")

        def fetch_video_embedding(self, *args: Any, **kwargs: Any) -> Any:
            raise _embeds_refused("video_embeds")

        async def fetch_video_embedding_async(self, *args: Any, **kwargs: Any) -> Any:
            raise _embeds_refused("video_embeds")

    MEDIA_CONNECTOR_REGISTRY.register(MEDIA_REFS)(RefConnector)


@contextlib.contextmanager
def _media_refs() -> Iterator[None]:
    """vLLM's chat parser loads the media connector VLLM_MEDIA_CONNECTOR names, for each
    request: ours while a line renders, the process's own setting otherwise (it must not leak
    into anything else in this process, or into the processes it starts)."""
    before = os.environ.get("VLLM_MEDIA_CONNECTOR")
    os.environ["VLLM_MEDIA_CONNECTOR"] = MEDIA_REFS
    try:
        yield
    finally:
        if before is None:
            del os.environ["VLLM_MEDIA_CONNECTOR"]
        else:
            os.environ["VLLM_MEDIA_CONNECTOR"] = before


def _embeds_refused(part: str) -> Exception:
    """vLLM's own error for an embeddings part when --enable-mm-embeds is not set."""
    from vllm.exceptions import VLLMValidationError

    return VLLMValidationError(f"You must set `--enable-mm-embeds` to input `{part}`", parameter=part)


@dataclass
class ChatOptions:
    """The server options that change how vLLM renders and answers a chat line (vLLM's flags of
    the same names)."""

    chat_template: str | None = None  # a template file's text, or None: the model's
    content_format: str = "auto"
    trust_request_chat_template: bool = False
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    exclude_tools_when_tool_choice_none: bool = False
    default_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    response_role: str = "assistant"

    def check(self) -> None:
        """vLLM's start-up checks of these flags, as one line before anything is loaded."""
        from ..errors import UsageError

        if self.content_format not in ("auto", "string", "openai"):
            raise UsageError("--chat-template-content-format is auto, string or openai")
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise UsageError("--enable-auto-tool-choice needs --tool-call-parser (e.g. gemma4), as in vLLM")
        if not self.tool_call_parser and not self.reasoning_parser:
            return
        from vllm.reasoning import ReasoningParserManager
        from vllm.tool_parsers import ToolParserManager

        tools = ToolParserManager.list_registered()
        if self.tool_call_parser and self.tool_call_parser not in tools:
            known = ", ".join(sorted(tools))
            raise UsageError(f"unknown --tool-call-parser {self.tool_call_parser!r}; vLLM has: {known}")
        reasoning = ReasoningParserManager.list_registered()
        if self.reasoning_parser and self.reasoning_parser not in reasoning:
            raise UsageError(
                f"unknown --reasoning-parser {self.reasoning_parser!r}; vLLM has: {', '.join(sorted(reasoning))}"
            )

    def settings(self) -> dict[str, Any]:
        """What an answer depends on (the checkpoint's settings): only what is not vLLM's default."""
        default = ChatOptions()
        return {k: v for k, v in vars(self).items() if v != getattr(default, k)}


@dataclass
class RenderedChat:
    """A chat line ready for the engine but for its media."""

    request: Any  # vLLM's ChatCompletionRequest, as its tool parser adjusted it
    conversation: list[Any]  # the messages as vLLM's parser gave them to the template
    prompt: str  # the chat template's text
    prompt_token_ids: list[int]
    media: dict[str, list[MediaRef]]  # per modality, in prompt order

    @property
    def media_count(self) -> int:
        return sum(len(v) for v in self.media.values())


class _MediaDeferred:
    """vLLM's renderer up to the tokenized prompt: `OnlineRenderer` calls `render_chat_async`,
    which in vLLM goes on to process the media for the engine; here that step is the decode
    workers' and the engine's, so it stops after tokenizing."""

    def __init__(self, renderer: Any) -> None:
        self._renderer = renderer
        self.tokenizer = renderer.tokenizer

    def get_tokenizer(self) -> Any:
        return self._renderer.get_tokenizer()

    def validate_token_ids(self, ids: list[int], parameter: str) -> None:
        self._renderer.validate_token_ids(ids, parameter=parameter)

    async def render_chat_async(
        self,
        conversations: list[Any],
        chat_params: Any,
        tok_params: Any = None,
        *,
        prompt_extras: dict[str, Any] | None = None,
        skip_mm_cache: bool = False,
    ) -> tuple[list[Any], list[Any]]:
        r = self._renderer
        rendered = [r.render_messages(c, chat_params) for c in conversations]
        prompts = r.tokenize_prompts([p for _, p in rendered], tok_params or r.default_chat_tok_params)
        return [c for c, _ in rendered], prompts


class ChatFrontend:
    """vLLM's chat serving front end on the engine's model config and renderer."""

    def __init__(self, model_config: Any, renderer: Any, options: ChatOptions) -> None:
        from vllm.renderers.online_renderer import OnlineRenderer

        _register_connector()
        self.options = options
        self.model_config = model_config
        self.tokenizer = renderer.tokenizer
        self.online = OnlineRenderer(
            model_config,
            _MediaDeferred(renderer),  # type: ignore[arg-type]
            request_logger=None,
            chat_template=options.chat_template,
            chat_template_content_format=options.content_format,  # type: ignore[arg-type]
            trust_request_chat_template=options.trust_request_chat_template,
            enable_auto_tools=options.enable_auto_tool_choice,
            exclude_tools_when_tool_choice_none=options.exclude_tools_when_tool_choice_none,
            tool_parser=options.tool_call_parser,
            reasoning_parser=options.reasoning_parser,
            default_chat_template_kwargs=options.default_chat_template_kwargs,
        )
        self._loop = asyncio.new_event_loop()

    def close(self) -> None:
        self._loop.close()

    def render(self, request: Any) -> RenderedChat | Any:
        """The line's prompt and media references, or vLLM's ErrorResponse for it."""
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

        try:
            with _media_refs():
                result = self._loop.run_until_complete(self.online.render_chat(request))
        except Exception as exc:  # vLLM's server answers any failure to render with an error body
            return create_error_response(exc)
        if isinstance(result, ErrorResponse):
            return result
        conversation, (tokenized,) = result
        engine_input: dict[str, Any] = dict(tokenized)  # vLLM's tokenized prompt (a TypedDict)
        media: dict[str, list[MediaRef]] = {}
        for modality, items in (engine_input.get("multi_modal_data") or {}).items():
            refs = list(items) if isinstance(items, list) else [items]
            if not all(isinstance(r, MediaRef) for r in refs):
                raise RuntimeError(
                    f"vLLM's chat parser used another media connector than gemma4u's ({MEDIA_REFS}); "
                    "is VLLM_MEDIA_CONNECTOR set after the engine cached its environment?"
                )
            media[modality] = refs
        prompt, ids = engine_input.get("prompt", ""), list(engine_input["prompt_token_ids"])
        return RenderedChat(request, list(conversation), prompt, ids, media)

    def sampling_params(self, rendered: RenderedChat, media_tokens: int, defaults: dict[str, Any]) -> Any:
        """vLLM's sampling parameters for the line (`get_max_tokens` on the prompt's length with
        its media's soft tokens, then the request's own `to_sampling_params`)."""
        import warnings

        from .lines import max_tokens_for

        req = rendered.request
        with warnings.catch_warnings():  # `max_tokens` is deprecated in the API, still honoured
            warnings.simplefilter("ignore", DeprecationWarning)
            asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        prompt_len = len(rendered.prompt_token_ids) + media_tokens
        return req.to_sampling_params(
            max_tokens_for(self.model_config.max_model_len, prompt_len, asked, defaults), defaults
        )

    def _parser(self, request: Any) -> Any:
        cls = self.online.parser
        if cls is None:
            return None
        kwargs = (
            request.build_chat_params(self.options.chat_template, self.options.content_format)
            .with_defaults(self.options.default_chat_template_kwargs)
            .chat_template_kwargs
        )
        return cls(self.tokenizer, request.tools, chat_template_kwargs=kwargs, model_config=self.model_config)

    def completion(self, result: EngineResult, rendered: RenderedChat, model_name: str) -> Any:
        """The ChatCompletionResponse vLLM's server answers for this finished request: per choice,
        reasoning and tool calls through vLLM's parser, the message and finish reason by its rules."""
        from vllm.entrypoints.generate.base.protocol import ToolCall
        from vllm.entrypoints.openai.chat_completion.protocol import (
            ChatCompletionNamedToolChoiceParam,
            ChatCompletionResponse,
            ChatCompletionResponseChoice,
            ChatMessage,
        )
        from vllm.entrypoints.serve.engine.protocol import UsageInfo
        from vllm.entrypoints.serve.utils.tool_calls_utils import maybe_filter_parallel_tool_calls
        from vllm.renderers.chat_utils import make_tool_call_id

        from .responses import chat_logprobs

        req = rendered.request
        role = self.options.response_role if req.add_generation_prompt else req.messages[-1]["role"]
        auto = self.options.enable_auto_tool_choice and self.online.parser is not None
        has_tool_parser = self.online.parser is not None and self.online.parser.tool_parser_cls is not None
        named = req.tool_choice is not None and type(req.tool_choice) is ChatCompletionNamedToolChoiceParam
        required = req.tool_choice == "required"
        choices = []
        for i, gen in enumerate(result.choices):
            logprobs = chat_logprobs(gen, req) if req.logprobs else None
            parser = self._parser(req)
            reasoning: str | None = None
            content: str | None = gen.text
            tool_calls: list[Any] | None = []
            if parser is not None:
                parser.set_prompt_token_ids(rendered.prompt_token_ids)
                reasoning, content, tool_calls = parser.parse(
                    gen.text, req, enable_auto_tools=auto, model_output_token_ids=list(gen.token_ids or ())
                )
                if not req.include_reasoning:
                    reasoning = None
                    logprobs = None
            calls = [ToolCall(id=tc.id or make_tool_call_id(), function=tc) for tc in (tool_calls or [])]
            auto_called = False
            if (not auto or not has_tool_parser) and not named and not required:
                message = ChatMessage(role=role, reasoning=reasoning, content=content)
            elif named or required:
                message = ChatMessage(role=role, reasoning=reasoning, content=content or "", tool_calls=calls)
            elif not req.tool_choice or req.tool_choice == "none":
                message = ChatMessage(role=role, reasoning=reasoning, content=content)
            else:  # tools with "auto", auto tool choice on and a tool parser
                auto_called = bool(calls)
                message = ChatMessage(role=role, reasoning=reasoning, content=content, tool_calls=calls or [])
            finish = (
                "tool_calls"
                if auto_called or (required and gen.finish_reason == "stop")
                else (gen.finish_reason or "stop")
            )
            choice = ChatCompletionResponseChoice(
                index=i, message=message, logprobs=logprobs, finish_reason=finish, stop_reason=gen.stop_reason
            )
            choices.append(maybe_filter_parallel_tool_calls(choice, req))
        if req.echo:  # vLLM's: the last message's content, when it is the answer's role, goes first
            last = rendered.conversation[-1] if rendered.conversation else {}
            echoed = (last.get("content") or "") if last.get("role") == role else ""
            if isinstance(echoed, list):
                echoed = "\n".join(part["text"] for part in echoed)
            for choice in choices:
                choice.message.content = echoed + (choice.message.content or "")
        prompt_tokens = result.choices[0].num_prompt_tokens
        completion_tokens = sum(gen.num_output_tokens for gen in result.choices)
        usage = UsageInfo(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        return ChatCompletionResponse(model=model_name, choices=choices, usage=usage)

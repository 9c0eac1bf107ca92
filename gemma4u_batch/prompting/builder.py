"""Decoded items → units of engine requests, one unit per task: the instruction, the
chat prompt, the content key, the structured-output constraint and the media parts.

`RequestBuilder` is also the one place that says what an item costs the engine (`count`:
requests, media and text tokens, whether one is over max_model_len): a run, a plan and an
estimate count the same way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from ..config.job import JobConfig, SamplingConfig
from ..config.languages import DETECT_CODES
from ..config.tasks import TASKS, is_speech_task, resolve_task
from ..decode import in_shard
from ..decode.item import DecodedItem
from ..decode.options import decode_options
from ..errors import UsageError
from ..records import Modality, WorkItem
from .keys import KeyMaker, guarded_settings
from .prompts import check_template, sent_instruction
from .quality import quality_flags
from .structured import load_schema, structured_for
from .units import EngineRequest, Part, Unit, add_language_parts, build_parts, media_flags, no_speech, stitch

LANGUAGE_INSTRUCTION = (
    "Which language is spoken in this audio? Answer with its ISO 639-1 code (ISO 639-3 where it has none), e.g. en."
)
"""What a language-identification request asks; its answer is constrained to DETECT_CODES."""

LANGUAGE_SAMPLING = SamplingConfig(max_tokens=8, temperature=0.0, top_p=1.0, seed=0)
"""Greedy and short: the longest code is three letters, and the choice ends the answer."""


class PromptCache(Protocol):
    def rendered_prompt(self, digest: str) -> str | None: ...
    def remember_prompt(self, digest: str, rendered: str) -> None: ...


class PromptRenderer(Protocol):
    """What request building needs of a tokenizer: the chat template, token counts and the
    context length (an engine is one; a plan uses an approximation that loads nothing)."""

    @property
    def max_model_len(self) -> int | None: ...

    def render_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The chat template applied to a job's messages, ready for generation."""
        ...

    def count_tokens(self, text: str) -> int: ...


@dataclass(frozen=True)
class RequestCount:
    """What one unit costs the engine."""

    requests: int = 0
    media_tokens: int = 0
    text_tokens: int = 0
    too_long: int | None = None  # tokens of the first request over max_model_len, if one is


class RequestBuilder:
    """What the engine is asked for each decoded item, and how a flagged unit is retried."""

    def __init__(
        self, config: JobConfig, renderer: PromptRenderer, fingerprint: str, prompt_cache: PromptCache | None = None
    ) -> None:
        self.config = config
        self.renderer = renderer
        self.fingerprint = fingerprint
        self.prompt_cache = prompt_cache
        self.key = KeyMaker(fingerprint, guarded_settings(config))
        self._rendered: dict[tuple[Any, ...], str] = {}
        self._builtin: dict[tuple[Any, ...], tuple[str, str, None]] = {}  # (task, modality, with audio) → prompt
        self._language_keyed: dict[str, bool] = {}
        self._tails: dict[tuple[Any, ...], str] = {}  # (task, modality, with audio) → a built-in prompt's key tail
        self._seq = 0
        self._language_rendered: str | None = None
        self._media = decode_options(config)
        for task in config.task_list():
            if resolve_task(task) is None and config.prompt is None:
                raise UsageError(f"unknown task '{task}'; choose one of {', '.join(sorted(TASKS))}")
        if config.prompt:
            check_template(config.prompt)
        self._schema = load_schema(config.json_schema)

    def in_shard(self, d: DecodedItem) -> bool:
        return not d.skipped and self.in_shard_of(d.item.id, d.content_sha256)

    def in_shard_of(self, id: str, content_sha256: str | None) -> bool:
        """Deterministic partition by content: the input's hash (its id's if unreadable)."""
        shard = self.config.shard_index()
        if shard is None:
            return True
        basis = content_sha256 or hashlib.sha256(id.encode()).hexdigest()
        return in_shard(basis, shard)

    def units(self, d: DecodedItem) -> list[Unit]:
        """One unit per task; the media was decoded once and is shared."""
        return [self._unit(d, task) for task in self.config.tasks_of(d.item)]

    def prompt(self, item: WorkItem, task: str, has_audio: bool) -> tuple[str, str, tuple[str, str] | None]:
        """(instruction, chat prompt as rendered, (error, kind) if the row's template fails)."""
        with_audio = has_audio and item.modality is Modality.VIDEO
        builtin = not (item.prompt or self.config.prompt)  # the task's own instruction: one per modality
        if builtin and (known := self._builtin.get((task, item.modality, with_audio))) is not None:
            return known
        instruction, failed = sent_instruction(self.config, item, task)
        error = (failed.message, failed.kind) if failed is not None else None
        memo = (item.modality, with_audio, instruction)
        rendered = self._rendered.get(memo)
        if rendered is None:
            rendered = self._render(self._messages(item.modality, with_audio, instruction))
            if len(self._rendered) < 4096:  # per-row templates make every prompt unique: bound the memo
                self._rendered[memo] = rendered
        if builtin:
            self._builtin[task, item.modality, with_audio] = (instruction, rendered, None)
        return instruction, rendered, error

    def _render(self, messages: list[dict[str, Any]]) -> str:
        """The chat template applied to messages, from the cache of earlier runs when it has it."""
        if self.prompt_cache is None:
            return self.renderer.render_prompt(messages)
        digest = hashlib.sha256(json.dumps([self.fingerprint, messages], sort_keys=True).encode()).hexdigest()
        rendered = self.prompt_cache.rendered_prompt(digest)
        if rendered is None:
            rendered = self.renderer.render_prompt(messages)
            self.prompt_cache.remember_prompt(digest, rendered)
        return rendered

    def key_of(self, item: WorkItem, content_sha256: str | None, task: str, rendered: str) -> str:
        """The content key; a speech task under `--language auto` also hashes what identifies
        the language (its instruction, codes and sampling), since its records carry the answer."""
        return self.key.keyed(content_sha256 or f"unread:{item.source}", self._key_tail(task, rendered))

    def key_for(self, item: WorkItem, content_sha256: str, task: str, has_audio: bool) -> str:
        """`key_of` the prompt `item` is sent with, for content known by its sha256 hex digest."""
        if not (item.prompt or self.config.prompt):
            return self.builtin_key(item.modality, content_sha256, task, has_audio)
        rendered = self.prompt(item, task, has_audio)[1]
        return self.key.keyed_digest(content_sha256, self._key_tail(task, rendered))

    def builtin_key(self, modality: Modality | None, content_sha256: str, task: str, has_audio: bool) -> str:
        """`key_for` an item sent with its task's built-in instruction (neither it nor the job
        has a prompt), which depends on its modality alone."""
        return self.key.keyed_digest(content_sha256, self.builtin_tail(modality, task, has_audio))

    def builtin_tail(self, modality: Modality | None, task: str, has_audio: bool) -> str:
        """What `builtin_key` hashes after the content (`KeyMaker.keyed_digest`): the quick
        check asks for a key of every file and task on every rerun, so it is kept per (task,
        modality, audio)."""
        memo = (task, modality, has_audio and modality is Modality.VIDEO)
        tail = self._tails.get(memo)
        if tail is None:
            stand_in = WorkItem(id="", source="", modality=modality)
            tail = self._tails[memo] = self._key_tail(task, self.prompt(stand_in, task, has_audio)[1])
        return tail

    def _key_tail(self, task: str, rendered: str) -> str:
        language = self._language_keyed.get(task)
        if language is None:
            language = self._language_keyed[task] = self.config.identifies_language(task)
        if language:
            rendered = json.dumps([rendered, LANGUAGE_INSTRUCTION, DETECT_CODES, LANGUAGE_SAMPLING.model_dump()])
        return self.key.tail(rendered, task)

    def _language_prompt(self) -> str:
        """The identification prompt: the transcription's messages (system prompt, then the
        audio) with another question, so the two share their prefix up to the audio's end."""
        if self._language_rendered is None:
            messages = self._messages(Modality.AUDIO, False, LANGUAGE_INSTRUCTION)
            self._language_rendered = self._render(messages)
        return self._language_rendered

    def _unit(self, d: DecodedItem, task: str) -> Unit:
        instruction, rendered, error = self.prompt(d.item, task, d.audio is not None)
        key = self.key_of(d.item, d.content_sha256, task, rendered)
        parts = []
        flags: list[str] = []
        silent = False
        if d.error is None and error is None:
            windowed = is_speech_task(task)
            parts = build_parts(d, windowed_audio=windowed, opts=self._media)
            flags = media_flags(d, windowed_audio=windowed)
            silent = no_speech(d, windowed_audio=windowed)
        structured = structured_for(self.config, self._schema, task)
        unit = Unit(
            decoded=d,
            key=key,
            instruction=instruction,
            rendered=rendered,
            parts=parts,
            task=task,
            structured=structured,
            media_flags=flags,
            no_speech=silent,
            language=self.config.language if is_speech_task(task) else None,
        )
        if error is not None:
            unit.error, unit.error_kind = error
        elif self.config.identifies_language(task) and not silent:
            add_language_parts(unit)
        return unit

    def _messages(self, modality: Modality | None, with_audio: bool, instruction: str) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        if self.config.system_prompt:
            msgs.append({"role": "system", "content": [{"type": "text", "text": self.config.system_prompt}]})
        content: list[dict[str, Any]] = []
        if modality is not None:
            content.append({"type": modality.value})
            if with_audio:
                content.append({"type": "audio"})
        content.append({"type": "text", "text": instruction})
        msgs.append({"role": "user", "content": content})
        return msgs

    def count(self, unit: Unit) -> RequestCount:
        """The unit's requests, their media and text tokens, and the first over max_model_len."""
        if unit.decoded.error is not None or unit.error is not None or unit.no_speech:
            return RequestCount()
        limit = self.renderer.max_model_len
        media = text = 0
        too_long = None
        for part in unit.parts:
            tokens = self.renderer.count_tokens(self._prompt_of(unit, part))
            media, text = media + part.mm_tokens, text + tokens
            if too_long is None and limit and tokens + part.mm_tokens >= limit:
                too_long = tokens + part.mm_tokens
        return RequestCount(len(unit.parts), media, text, too_long)

    def unsendable(self, unit: Unit) -> tuple[str, str] | None:
        """(message, kind) when a unit cannot go to the engine: it fails before it is sent."""
        if unit.decoded.error is not None or unit.error is not None or unit.no_speech:
            return None
        if not unit.parts:
            return "nothing to send for this item", "empty"
        if not self.renderer.max_model_len:
            return None
        need = self.count(unit).too_long
        if need is None:
            return None
        return (
            f"prompt needs about {need} tokens, over max_model_len {self.renderer.max_model_len}; "
            "lower --image-tokens/--video-frames or raise --max-model-len",
            "too_long_for_model",
        )

    def _prompt_of(self, unit: Unit, part: Part) -> str:
        """A part's prompt: the unit's, or the language question for an identification request."""
        return self._language_prompt() if part.detects is not None else unit.rendered

    def requests(self, unit: Unit) -> list[EngineRequest]:
        sampling = self.config.retry_flagged if unit.retried and self.config.retry_flagged else self.config.sampling
        reqs = []
        for i, part in enumerate(unit.parts):
            self._seq += 1
            identify = part.detects is not None
            reqs.append(
                EngineRequest(
                    request_id=f"r{self._seq}",
                    prompt=self._prompt_of(unit, part),
                    multi_modal_data=part.mm,
                    sampling=LANGUAGE_SAMPLING if identify else sampling,
                    payload=(unit, i),
                    structured={"choice": list(DETECT_CODES)} if identify else unit.structured,
                )
            )
        return reqs

    def retry(self, unit: Unit) -> list[EngineRequest]:
        """Requests to regenerate a flagged unit once with `retry_flagged` sampling, or []."""
        if self.config.retry_flagged is None or unit.retried or unit.error or unit.decoded.error:
            return []
        text, _, gen = stitch(unit)
        if not quality_flags(text, gen.finish_reason if gen else None):
            return []
        unit.retried = True
        unit.reset()
        return self.requests(unit)

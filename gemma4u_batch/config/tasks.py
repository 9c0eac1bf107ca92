"""Built-in tasks: the instruction each one sends, per modality, plus any output schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ItemError
from ..records import Modality

UNSUPPORTED_MODALITY = "unsupported_modality"
"""error_kind of an item whose modality its task has no instruction for."""

IMAGE, AUDIO, VIDEO = Modality.IMAGE, Modality.AUDIO, Modality.VIDEO

TAGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 12}},
    "required": ["tags"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Task:
    name: str
    instructions: dict[Modality, str]
    json_schema: dict[str, Any] | None = None
    windowed_audio: bool = False  # long audio is cut into ≤30 s windows (speech tasks)
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def instruction(self, modality: Modality) -> str:
        """The instruction for this modality; ItemError('unsupported_modality') when the task
        has none (never another modality's: `ocr` on audio would ask to read an image)."""
        text = self.instructions.get(modality)
        if text is None:
            works = ", ".join(m.value for m in self.instructions)
            raise ItemError(
                UNSUPPORTED_MODALITY,
                f"task '{self.name}' has no instruction for {modality.value} (it works on {works}); "
                "give a --prompt to use it on this item",
            )
        return text


_ALL = (
    Task(
        "caption",
        {
            IMAGE: "Write a one-sentence caption for this image.",
            VIDEO: "Describe what happens in this video in two or three sentences.",
            AUDIO: "Describe this audio clip in one sentence.",
        },
        description="short caption",
        aliases=("short-caption",),
    ),
    Task(
        "detailed-caption",
        {
            IMAGE: "Describe this image in detail: the subjects, the setting, colours, any text, and the composition.",
            VIDEO: "Describe this video in detail, in order: the setting, the people and objects, and what happens.",
            AUDIO: "Describe this audio in detail: the speakers, sounds, music and setting.",
        },
        description="a paragraph",
    ),
    Task(
        "alt-text",
        {
            IMAGE: "Write alt text for this image for a screen reader user: one or two plain sentences, "
            "no 'image of', include any important text.",
            VIDEO: "Write a one-sentence accessible description of this video.",
        },
        description="accessible alt text",
    ),
    Task(
        "tags",
        {
            IMAGE: 'List 5 to 10 short lowercase tags for this image as JSON: {"tags": [...]}.',
            VIDEO: 'List 5 to 10 short lowercase tags for this video as JSON: {"tags": [...]}.',
            AUDIO: 'List 3 to 8 short lowercase tags for this audio as JSON: {"tags": [...]}.',
        },
        json_schema=TAGS_SCHEMA,
        description="JSON tags",
    ),
    Task(
        "ocr",
        {
            IMAGE: "Transcribe all text visible in this image exactly, line by line. Output only the text.",
            VIDEO: "Transcribe all text visible in this video, in order of appearance. Output only the text.",
        },
        description="text in images",
    ),
    Task(
        "transcribe",
        {
            AUDIO: "Transcribe the speech in this audio verbatim. Output only the transcript.",
            VIDEO: "Transcribe the speech in this video verbatim. Output only the transcript.",
        },
        windowed_audio=True,
        description="speech to text",
    ),
    Task(
        "translate",
        {
            AUDIO: "Translate the speech in this audio into {target}. Output only the translation.",
            VIDEO: "Translate the speech in this video into {target}. Output only the translation.",
        },
        windowed_audio=True,
        description="speech translation",
    ),
    Task(
        "audio-description",
        {AUDIO: "Describe the sounds in this audio: speech, music, environment and notable events."},
        description="what is heard",
    ),
    Task(
        "video-description",
        {
            VIDEO: "Describe this video as a list of events, each starting with its mm:ss timestamp "
            "from the frames, e.g. '00:04 a car enters from the left'."
        },
        description="timestamped events",
    ),
)

TASKS: dict[str, Task] = {t.name: t for t in _ALL}
ALIASES: dict[str, str] = {a: t.name for t in _ALL for a in t.aliases}


def resolve_task(name: str) -> Task | None:
    return TASKS.get(ALIASES.get(name, name))


def is_speech_task(name: str) -> bool:
    """Speech tasks cut long audio into windows and treat a video as its soundtrack."""
    t = resolve_task(name)
    return t is not None and t.windowed_audio


def instruction_for(task: str, modality: Modality, *, language: str | None = None, target: str | None = None) -> str:
    """The built-in instruction for a task, with the language options folded in."""
    t = resolve_task(task)
    assert t is not None
    text = t.instruction(modality)
    if t.name == "translate":
        text = text.format(target=target or "English")
    elif language and t.name == "transcribe":
        text = text.replace("verbatim.", f"verbatim. The speech is in {language}.")
    return text

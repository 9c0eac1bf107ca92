"""Built-in tasks: the instruction each one sends, per modality."""

from __future__ import annotations

from dataclasses import dataclass

from .records import Modality


@dataclass(frozen=True)
class Task:
    name: str
    instructions: dict[Modality, str]

    def instruction(self, modality: Modality) -> str:
        return self.instructions.get(modality) or next(iter(self.instructions.values()))


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "caption",
            {
                Modality.IMAGE: "Write a one-sentence caption for this image.",
                Modality.VIDEO: "Describe what happens in this video in two or three sentences.",
                Modality.AUDIO: "Describe this audio clip in one sentence.",
            },
        ),
        Task(
            "detailed-caption",
            {
                Modality.IMAGE: "Describe this image in detail: subjects, setting, colors, text and composition.",
                Modality.VIDEO: "Describe this video in detail, in order, mentioning the timestamps.",
                Modality.AUDIO: "Describe this audio in detail: speakers, sounds, music and setting.",
            },
        ),
        Task(
            "translate",
            {
                Modality.AUDIO: "Translate the speech in this audio into {target}. Output only the translation.",
                Modality.VIDEO: "Translate the speech in this video into {target}. Output only the translation.",
            },
        ),
        Task(
            "transcribe",
            {
                Modality.AUDIO: "Transcribe the speech in this audio verbatim. Output only the transcript.",
                Modality.VIDEO: "Transcribe the speech in this video verbatim. Output only the transcript.",
            },
        ),
    )
}


def instruction_for(task: str, modality: Modality, *, language: str | None = None, target: str | None = None) -> str:
    """The built-in instruction for a task, with the language options folded in."""
    text = TASKS[task].instruction(modality)
    if task == "translate":
        text = text.format(target=target or "English")
    elif language and task == "transcribe":
        text = text.replace("verbatim.", f"verbatim. The speech is in {language}.")
    return text

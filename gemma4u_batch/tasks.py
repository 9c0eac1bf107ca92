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
            "transcribe",
            {
                Modality.AUDIO: "Transcribe the speech in this audio verbatim. Output only the transcript.",
                Modality.VIDEO: "Transcribe the speech in this video verbatim. Output only the transcript.",
            },
        ),
    )
}

"""Tasks, prompt templates, structured output, quality and media flags and multi-task runs
(FakeEngine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from gemma4u_batch.config.job import JobConfig, SamplingConfig
from gemma4u_batch.config.tasks import TASKS
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.errors import UsageError
from gemma4u_batch.prompting.quality import parse_structured, quality_flags, repetitive

from .helpers import EXAMPLES, SR, records_by_task, run_fake, tone


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    for i in range(4):
        Image.new("RGB", (40, 30), (i * 50, 10, 10)).save(tmp_path / f"p{i}.png")
    rows = [{"path": f"p{i}.png", "id": f"p{i}", "title": f"Title {i}"} for i in range(4)]
    rows[3].pop("title")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "m.jsonl"


def run(inp: Path, out: Path, engine: FakeEngine | None = None, **settings) -> dict[tuple[str, str], dict]:
    """A FakeEngine job's records by (id, task)."""
    run_fake(inp, out, engine=engine, **settings)
    return records_by_task(out)


def test_builtin_tasks_cover_the_issue() -> None:
    for name in (
        "caption",
        "detailed-caption",
        "alt-text",
        "tags",
        "ocr",
        "transcribe",
        "translate",
        "audio-description",
        "video-description",
    ):
        assert name in TASKS and TASKS[name].instructions


def test_prompt_template_over_row_fields(manifest: Path, tmp_path: Path) -> None:
    template = "Caption the photo titled '{{ title }}' ({{ id }})."
    recs = run(manifest, tmp_path / "out", prompt=template)
    assert recs[("p1", "caption")]["prompt"] == "Caption the photo titled 'Title 1' (p1)."
    assert recs[("p1", "caption")]["text"].startswith("fake")
    missing = recs[("p3", "caption")]  # the row has no title: an error for that row only
    assert missing["error_kind"] == "bad_prompt" and "title" in missing["error"]
    assert missing["prompt"] == template  # recorded as written


def test_template_sandbox_and_syntax(manifest: Path, tmp_path: Path) -> None:
    recs = run(manifest, tmp_path / "a", prompt="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    assert all(r["error_kind"] == "bad_prompt" for r in recs.values())
    with pytest.raises(UsageError, match="template"):
        run(manifest, tmp_path / "b", prompt="{{ title ")


def test_choices_give_data_and_multi_task_shares_decode(manifest: Path, tmp_path: Path) -> None:
    eng = FakeEngine()
    recs = run(manifest, tmp_path / "out", eng, tasks=["caption", "alt-text"], choices=["indoor", "outdoor"])
    assert len(recs) == 8 and {t for _, t in recs} == {"caption", "alt-text"}
    assert all(r["data"] in ("indoor", "outdoor") and r["text"] == r["data"] for r in recs.values())
    assert eng.added == 8
    # rerun: both tasks of every item are done
    eng2 = FakeEngine()
    run(manifest, tmp_path / "out", eng2, tasks=["caption", "alt-text"], choices=["indoor", "outdoor"])
    assert eng2.added == 0


def test_a_rows_own_task_is_run_planned_and_counted_done(tmp_path: Path) -> None:
    """A manifest row's `task` replaces the job's for that row: the run, the plan and
    `status --count-pending` agree on it."""
    from typer.testing import CliRunner

    from gemma4u_batch.cli.app import app
    from gemma4u_batch.plan.plan import plan

    for i in range(3):
        Image.new("RGB", (40, 30), (i * 50, 10, 10)).save(tmp_path / f"p{i}.png")
    rows = [{"path": "p0.png", "id": "p0", "task": "tags"}, {"path": "p1.png", "id": "p1"}]
    man = tmp_path / "m.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = run(man, tmp_path / "out", tasks=["caption", "alt-text"])
    assert set(recs) == {("p0", "tags"), ("p1", "caption"), ("p1", "alt-text")}
    p = plan(JobConfig(input=man, output=tmp_path / "o", model="fake-model", workers=0, tasks=["caption", "alt-text"]))
    assert p.modalities["image"].requests == 3
    man.write_text(man.read_text() + json.dumps({"path": "p2.png", "id": "p2"}) + "\n")
    r = CliRunner().invoke(app, ["status", str(tmp_path / "out"), "--json", "--count-pending"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["pending"] == 1


def test_json_schema_valid_and_unparsable(manifest: Path, tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(TASKS["tags"].json_schema))
    recs = run(manifest, tmp_path / "a", json_schema=schema)
    assert all(isinstance(r["data"], dict) and r["data"]["tags"] for r in recs.values())
    bad = FakeEngine(text_for=lambda req, text: '{"tags": ' if "p2" in req.payload[0].decoded.item.id else text)
    recs = run(manifest, tmp_path / "b", bad, task="tags")
    assert recs[("p2", "tags")]["error_kind"] == "unparsable" and recs[("p2", "tags")]["text"] == '{"tags": '
    assert recs[("p1", "tags")]["data"]["tags"]
    with pytest.raises(UsageError, match="not a valid JSON schema"):
        run(manifest, tmp_path / "c", json_schema={"type": 12})


def test_quality_flags_and_retry(manifest: Path, tmp_path: Path) -> None:
    assert quality_flags("", "stop") == ["empty"]
    assert quality_flags("a fine caption", "length") == ["token_cap"]
    assert repetitive("the cat " * 30) and not repetitive("A dog runs across a sunny field near the river bank.")
    seen: list[float] = []

    def loop_unless_retried(req, text):
        seen.append(req.sampling.temperature)
        return text if req.sampling.temperature > 0 else "ha " * 40

    recs = run(
        manifest,
        tmp_path / "out",
        FakeEngine(text_for=loop_unless_retried),
        retry_flagged=SamplingConfig(temperature=0.8, seed=1),
    )
    assert all(r["retried"] and r["flags"] == [] for r in recs.values())
    assert seen.count(0.0) == 4 and seen.count(0.8) == 4
    recs = run(manifest, tmp_path / "noretry", FakeEngine(text_for=loop_unless_retried))
    assert all(r["flags"] == ["repetition"] and not r["retried"] for r in recs.values())


def test_parse_structured_choice() -> None:
    assert parse_structured(" yes ", {"choice": ["yes", "no"]}) == "yes"
    with pytest.raises(Exception, match="not one of"):
        parse_structured("maybe", {"choice": ["yes", "no"]})


# ---------------------------------------------------------------- tasks and modalities


def _mixed_media(root: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copy(EXAMPLES / "images" / "shapes.png", root / "shapes.png")
    shutil.copy(EXAMPLES / "audio" / "hello.wav", root / "hello.wav")
    return root


def test_task_without_an_instruction_for_the_modality_is_an_item_error(tmp_path: Path) -> None:
    """`--task ocr` on audio used to send the image instruction; now that item is an error
    record of its own kind and the rest of the job goes on."""
    inp = _mixed_media(tmp_path / "in")
    summary = run_fake(inp, tmp_path / "out", task="ocr")
    recs = records_by_task(tmp_path / "out")
    audio, image = recs[("hello.wav", "ocr")], recs[("shapes.png", "ocr")]
    assert audio["error_kind"] == "unsupported_modality" and audio["text"] is None
    assert "task 'ocr' has no instruction for audio" in audio["error"]
    assert "image" not in (audio["prompt"] or "")  # nothing about reading text in an image was sent
    assert image["error"] is None and image["text"] and "visible in this image" in image["prompt"]
    assert summary.errors == 1 and summary.done == 2
    # A rerun skips it like any other record (same key); a prompt makes the task usable on audio.
    assert run_fake(inp, tmp_path / "out", task="ocr").already_complete
    run_fake(inp, tmp_path / "p", task="ocr", prompt="Any words?")
    assert records_by_task(tmp_path / "p")[("hello.wav", "ocr")]["error"] is None


# ------------------------------------------------------------------------ media flags


def test_captioning_long_audio_flags_the_truncation(tmp_path: Path) -> None:
    """Captioning sends the first 30 s of audio: the record says so (`audio_truncated`); speech
    tasks window the whole file's speech and short files are whole, so neither is flagged. A steady
    tone holds no speech: its transcription sends nothing and says so (`no_speech`)."""
    inp = tmp_path / "in"
    inp.mkdir()
    lecture, sr = sf.read(EXAMPLES / "audio" / "lecture_95s.flac", dtype="float32")
    sf.write(inp / "long.wav", lecture[: 35 * sr], sr)
    sf.write(inp / "short.wav", tone(5.0, amp=0.2), SR)
    run_fake(inp, tmp_path / "cap", tasks=["caption", "transcribe"])
    recs = records_by_task(tmp_path / "cap")
    assert "audio_truncated" in recs[("long.wav", "caption")]["flags"]
    assert "audio_truncated" not in recs[("long.wav", "transcribe")]["flags"]
    assert len(recs[("long.wav", "transcribe")]["segments"]) == 2
    assert "audio_truncated" not in recs[("short.wav", "caption")]["flags"]
    silent = recs[("short.wav", "transcribe")]
    assert (silent["text"], silent["segments"], silent["error"]) == ("", [], None)
    assert silent["flags"] == ["no_speech"]


def test_video_soundtrack_past_30s_is_flagged(tmp_path: Path) -> None:
    from gemma4u_batch.decode.item import DecodedItem, VideoFrames
    from gemma4u_batch.prompting.units import media_flags
    from gemma4u_batch.records import Modality, WorkItem

    item = WorkItem(id="v.mp4", source="v.mp4", modality=Modality.VIDEO)
    video = VideoFrames(frames=[], timestamps=[], indices=[], fps=1.0, duration=40.0, total_frames=40)
    cut = DecodedItem(item, video=video, audio=np.zeros(480000, np.float32), info={"audio": {"truncated": True}})
    whole = DecodedItem(item, video=video, audio=np.zeros(16000, np.float32), info={"audio": {"truncated": False}})
    assert media_flags(cut, windowed_audio=False) == ["audio_truncated"]
    assert media_flags(whole, windowed_audio=False) == []

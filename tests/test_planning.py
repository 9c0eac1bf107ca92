"""Before a run (plan/): `--dry-run`'s plan (plan.py) over the one streamed pass of the input
(scan.py), and `--estimate N` (estimate.py), which runs a sample for real.

A plan counts what a run would send without loading the model: its engine requests must be the
ones a run of the same items makes, and its `pending` the items a run would generate — the quick
check's rule, which `status --count-pending` and `--estimate` report too."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from rich.console import Console
from typer.testing import CliRunner

from gemma4u_batch.cli.app import app
from gemma4u_batch.config.job import JobConfig
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.errors import UsageError
from gemma4u_batch.job.job import JobSummary
from gemma4u_batch.plan.estimate import estimate, print_estimate
from gemma4u_batch.plan.plan import TEMPLATE_TOKENS, ApproxRenderer, plan, print_plan
from gemma4u_batch.plan.recipes import load_recipe
from gemma4u_batch.records import Modality
from gemma4u_batch.sources import open_source

from .helpers import (
    EXAMPLES,
    REPO,
    SR,
    aged,
    fake_config,
    gemma4u,
    jpeg_bytes,
    photo,
    run_fake,
    three_utterances,
)

AUDIO = EXAMPLES / "audio"


# ------------------------------------------------------------------ what a plan counts


def test_plan_counts_per_modality_and_maps_speech_videos(tmp_path: Path) -> None:
    both = tmp_path / "in"
    shutil.copytree(EXAMPLES / "audio", both / "audio")
    shutil.copytree(EXAMPLES / "video", both / "video")
    shutil.copytree(EXAMPLES / "images", both / "images")
    p = plan(JobConfig(input=both, output=tmp_path / "out", workers=0), sample=2)
    assert p.found == {"audio": 2, "image": 5, "video": 1} and p.items == 8
    assert {k: v.items for k, v in p.modalities.items()} == {"audio": 2, "image": 5, "video": 1}
    assert p.modalities["image"].sampled == 2 and p.modalities["image"].decoded == 2
    assert p.modalities["image"].estimated_prompt_tokens > 0
    assert any("deterministic sample" in n for n in p.notes)
    speech = plan(
        JobConfig(input=both, output=tmp_path / "out", task="transcribe", workers=0, modalities=["audio", "video"]),
        sample=4,
    )
    assert set(speech.modalities) == {"audio"} and speech.modalities["audio"].items == 3
    assert any("soundtrack" in n for n in speech.notes)
    # the 95 s lecture is cut into windows: more than one request per audio item
    assert speech.modalities["audio"].requests > speech.modalities["audio"].decoded


def test_plan_is_deterministic(tmp_path: Path) -> None:
    c = JobConfig(input=EXAMPLES / "images", output=tmp_path / "o", workers=0)
    a, b = plan(c, sample=2).to_dict(), plan(c, sample=2).to_dict()
    assert a == b


def test_plan_counts_one_request_per_task(tmp_path: Path) -> None:
    one = plan(JobConfig(input=EXAMPLES / "images", output=tmp_path / "o", workers=0), sample=2)
    two = plan(
        JobConfig(input=EXAMPLES / "images", output=tmp_path / "o", workers=0, tasks=["caption", "tags"]), sample=2
    )
    assert two.tasks == ["caption", "tags"]
    assert two.modalities["image"].requests == 2 * two.modalities["image"].decoded
    assert two.prompt_tokens > 1.8 * one.prompt_tokens


def test_the_plan_counts_the_identification_requests(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    x, _ = three_utterances()
    sf.write(inp / "three.wav", x, SR)
    sf.write(inp / "silence.flac", np.zeros(SR * 5, dtype=np.float32), SR)
    counts = {}
    for given in (None, "fr"):
        config = JobConfig(input=inp, output=tmp_path / "o", task="transcribe", workers=0, language=given)
        counts[given] = plan(config, sample=4).modalities["audio"]
    assert counts["fr"].requests == 3  # three.wav's windows; the silent file sends nothing
    assert counts[None].requests == 2 * counts["fr"].requests
    assert counts[None].media_tokens == 2 * counts["fr"].media_tokens


def _speech_folder(root: Path, video: bool = True) -> Path:
    """espeak-ng speech (the examples'): the 95 s lecture (several VAD windows), hello.wav and,
    with `video`, the example video (its soundtrack, under speech tasks)."""
    root.mkdir()
    shutil.copy(AUDIO / "lecture_95s.flac", root / "lecture.flac")
    shutil.copy(AUDIO / "hello.wav", root / "hello.wav")
    if video:
        shutil.copy(EXAMPLES / "video" / "moving_square.mp4", root / "square.mp4")
    return root


def _image_folder(root: Path) -> Path:
    """The example images and two real photos (scikit-image)."""
    shutil.copytree(EXAMPLES / "images", root)
    (root / "astronaut.jpg").write_bytes(jpeg_bytes(photo("astronaut")))
    (root / "coffee.jpg").write_bytes(jpeg_bytes(photo("coffee")))
    return root


@pytest.mark.parametrize(
    ("media", "settings"),
    [
        ("speech", {"task": "transcribe"}),  # --language auto: one identification request per window
        ("speech", {"task": "transcribe", "language": "en"}),
        ("audio", {"tasks": ["caption", "transcribe"]}),  # two tasks, one of them windowed
        ("images", {"tasks": ["caption", "tags"]}),
        ("images", {"task": "alt-text", "system_prompt": "Be brief."}),
    ],
    ids=["transcribe-auto", "transcribe-en", "caption+transcribe", "two-image-tasks", "system-prompt"],
)
def test_the_plan_counts_the_requests_a_run_makes(tmp_path: Path, media: str, settings: dict) -> None:
    """Every item sampled: the plan's requests for the modality are exactly the requests a run
    of the same items sends the engine (VAD windows, language identification, tasks)."""
    if media == "images":
        inp, modality = _image_folder(tmp_path / "in"), "image"
    else:
        inp, modality = _speech_folder(tmp_path / "in", video=media == "speech"), "audio"
    config = fake_config(inp, tmp_path / "out", **settings)
    p = plan(config, sample=16)
    assert set(p.modalities) == {modality}
    row = p.modalities[modality]
    assert row.sampled == row.items == row.decoded  # the whole input, every item decoded
    engine = FakeEngine()
    summary = run_fake(config, engine=engine)
    assert summary.errors == 0
    assert row.requests == engine.added
    per_item = len(config.task_list())
    if media == "images":
        assert engine.added == per_item * row.items
    else:  # speech windows (and their identification) are requests of their own
        assert engine.added > per_item * row.items


# --------------------------------------------------------------------- text tokens


def _messages(*texts: str, media: str | None = None) -> list[dict]:
    """A system message per text but the last, then the user's (the media, then the last text)."""
    msgs: list[dict] = [{"role": "system", "content": [{"type": "text", "text": t}]} for t in texts[:-1]]
    content: list[dict] = [{"type": media}] if media else []
    msgs.append({"role": "user", "content": [*content, {"type": "text", "text": texts[-1]}]})
    return msgs


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (("Describe.",), 3 + TEMPLATE_TOKENS),  # ceil(9 / 4)
        (("x" * 8,), 2 + TEMPLATE_TOKENS),  # exact multiples round no further
        (("",), TEMPLATE_TOKENS),
        (("Be brief.", "Describe this image."), 3 + 5 + 5 + TEMPLATE_TOKENS),  # ceil(9/4), 5 per extra message
        (("a", "bb", "x" * 13), 1 + 1 + 4 + 2 * 5 + TEMPLATE_TOKENS),
    ],
    ids=["one-message", "exact-multiple", "empty", "system-and-user", "three-messages"],
)
def test_approx_renderer_counts_a_quarter_token_per_char_per_message(texts: tuple[str, ...], expected: int) -> None:
    r = ApproxRenderer(max_model_len=None)
    for media in (None, "image", "audio"):  # media parts carry no text: they count nothing here
        assert r.count_tokens(r.render_prompt(_messages(*texts, media=media))) == expected


def test_approx_renderer_joins_a_messages_text_parts() -> None:
    """Two text parts of one message are one text (no separator between them)."""
    r = ApproxRenderer(max_model_len=None)
    msg = [
        {"role": "user", "content": [{"type": "text", "text": "ab"}, {"type": "image"}, {"type": "text", "text": "c"}]}
    ]
    assert r.count_tokens(r.render_prompt(msg)) == math.ceil(3 / 4) + TEMPLATE_TOKENS


def test_plan_text_tokens_follow_the_instruction(tmp_path: Path) -> None:
    """A plan's text tokens per request are its prompt's: ceil(chars / 4), 5 more per system
    message, TEMPLATE_TOKENS around the request; one request per task."""
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(EXAMPLES / "images" / "shapes.png", inp / "shapes.png")
    prompt = "Name every shape and its colour."  # 32 characters: 8 tokens
    base = fake_config(inp, tmp_path / "out", prompt=prompt)
    assert plan(base).modalities["image"].text_tokens == 8 + TEMPLATE_TOKENS
    system = base.model_copy(update={"system_prompt": "You label images."})  # 17 characters: 5 tokens
    assert plan(system).modalities["image"].text_tokens == 8 + 5 + 5 + TEMPLATE_TOKENS
    two = fake_config(inp, tmp_path / "out", prompt=prompt, tasks=["caption", "tags"])
    assert plan(two).modalities["image"].text_tokens == 2 * (8 + TEMPLATE_TOKENS)


# --------------------------------------------------------------------------- pending


def _status_pending(out: Path) -> int | None:
    """`gemma4u status OUT --count-pending --json`'s "pending", from the command in this process."""
    r = CliRunner().invoke(app, ["status", str(out), "--count-pending", "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["pending"]


def _pending(config: JobConfig) -> int | None:
    """The plan's pending items, checked against what `status --count-pending` says of OUT (which
    reads the job's settings from OUT's run manifest: the last run's)."""
    pending = plan(config, sample=1).pending
    assert _status_pending(config.output) == pending, "status --count-pending and the plan disagree"
    return pending


@pytest.fixture
def done_folder(tmp_path: Path, tiny_model: Path) -> JobConfig:
    """Real images (one of them a broken file: an error record) run on the FakeEngine into OUT,
    with the tiny checkpoint's tokenizer to render prompts OUT has not seen. Files are an hour
    old, so their stat may be trusted."""
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("shapes.png", "sunset.jpg", "banner.webp"):
        shutil.copy(EXAMPLES / "images" / name, inp / name)
    (inp / "broken.png").write_text("not a png\n")
    aged(inp)
    config = fake_config(inp, tmp_path / "out", model=str(tiny_model))
    summary = run_fake(config)
    assert (summary.done, summary.errors) == (4, 1)
    return config


def test_pending_is_zero_after_a_run_and_counts_a_new_file(done_folder: JobConfig) -> None:
    config = done_folder
    assert _pending(config) == 0
    shutil.copy(EXAMPLES / "images" / "transparent.png", config.input / "transparent.png")
    assert _pending(config) == 1
    est = estimate(config, 1, engine=FakeEngine())
    assert est.pending_items == 1  # --estimate counts it the same way
    assert run_fake(config).done == 1
    assert _pending(config) == 0
    r = gemma4u("status", str(config.output), "--count-pending", "--json", timeout=120)  # the real CLI, once
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pending"] == 0


def test_pending_counts_a_file_whose_bytes_changed(done_folder: JobConfig) -> None:
    """Same name, other content (and a new mtime): the file is pending until a run redoes it."""
    config = done_folder
    (config.input / "sunset.jpg").write_bytes(jpeg_bytes(photo("coffee")))
    assert _pending(config) == 1
    assert run_fake(config).done == 1
    assert _pending(config) == 0


def test_a_rewrite_with_the_same_bytes_is_hashed_not_counted(done_folder: JobConfig) -> None:
    """A file rewritten just now with identical bytes: its stat no longer matches OUT's cache, so
    the plan hashes it (nothing decoded) and finds it done."""
    config = done_folder
    shapes = config.input / "shapes.png"
    shapes.write_bytes(shapes.read_bytes())
    now = time.time_ns()
    os.utime(shapes, ns=(now, now))
    assert _pending(config) == 0


def test_a_racy_file_is_hashed_not_trusted(tmp_path: Path, tiny_model: Path) -> None:
    """A file written within the racy window of the run that read it (mtime ≈ read time): a
    later change that keeps its size and mtime is caught only by hashing it, and a file left as
    it was is still found done."""
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("shapes.png", "sunset.jpg"):
        shutil.copy(EXAMPLES / "images" / name, inp / name)
    aged(inp)
    racy = inp / "shapes.png"
    now = time.time_ns()
    os.utime(racy, ns=(now, now))  # written just before the run read it
    config = fake_config(inp, tmp_path / "out", model=str(tiny_model))
    run_fake(config)
    assert _pending(config) == 0  # hashed: the same bytes
    st = racy.stat()
    data = bytearray(racy.read_bytes())
    data[-20] ^= 0xFF  # same size, same inode, and the mtime put back: only a hash can tell
    with open(racy, "r+b") as fh:
        fh.write(bytes(data))
    os.utime(racy, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert racy.stat().st_size == st.st_size and racy.stat().st_ino == st.st_ino
    assert _pending(config) == 1


def test_pending_counts_errors_under_retry_errors(done_folder: JobConfig) -> None:
    """broken.png's record is an error: done for a plain run, pending under --retry-errors."""
    config = done_folder
    retry = config.model_copy(update={"retry_errors": True})
    assert plan(retry, sample=1).pending == 1 and plan(config, sample=1).pending == 0
    summary = run_fake(retry)  # still broken: an error record again, and still pending for the next retry
    assert (summary.done, summary.errors) == (1, 1)
    assert _pending(retry) == 1  # OUT's last run retried errors: status counts with its settings


def test_pending_counts_a_manifest_row_whose_prompt_changed(tmp_path: Path, tiny_model: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    names = ["shapes.png", "sunset.jpg", "banner.webp"]
    for name in names:
        shutil.copy(EXAMPLES / "images" / name, inp / name)
    rows = [{"path": name, "id": name.split(".")[0], "prompt": f"Describe {name}."} for name in names]
    man = inp / "m.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    aged(inp)
    config = fake_config(man, tmp_path / "out", model=str(tiny_model))
    run_fake(config)
    assert _pending(config) == 0
    rows[1]["prompt"] = "Describe the sky."
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _pending(config) == 1
    assert run_fake(config).done == 1
    assert _pending(config) == 0


def test_a_changed_prompt_is_refused_with_nothing_pending(done_folder: JobConfig) -> None:
    """Another prompt for the whole job: a run would be refused, so nothing is pending — the
    plan says why instead of a count (None), and --overwrite would redo every item."""
    changed = done_folder.model_copy(update={"prompt": "Something else."})
    p = plan(changed, sample=1)
    assert p.refused is not None and "different prompt" in p.refused and p.pending is None
    with pytest.raises(UsageError) as refusal:
        run_fake(changed)
    assert str(refusal.value) == p.refused
    over = plan(changed.model_copy(update={"overwrite": True}), sample=1)
    assert over.refused is None and over.pending is None and over.items == 4


def test_plan_reads_an_existing_out_incrementally(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("sunset.jpg", "shapes.png"):
        shutil.copy(EXAMPLES / "images" / name, inp / name)
    config = JobConfig(input=inp, output=tmp_path / "out", model="fake-model", workers=0)
    run_fake(config)
    p = plan(config, sample=2)
    assert p.existing is not None and p.existing["records"] == 2 and p.existing["complete"]
    assert p.pending == 0 and p.refused is None
    shutil.copy(EXAMPLES / "images" / "banner.webp", inp / "banner.webp")
    assert plan(config, sample=1).pending == 1
    changed = config.model_copy(update={"prompt": "Something else."})
    refused = plan(changed, sample=1).refused
    assert refused is not None and "different prompt" in refused
    assert plan(changed.model_copy(update={"overwrite": True}), sample=1).refused is None
    console = Console(file=io.StringIO(), width=120)
    print_plan(plan(config, sample=1), console)
    assert "2 records" in console.file.getvalue()  # type: ignore[attr-defined]


# ------------------------------------------------------------------- sources and notes


def test_plan_of_a_manifest_and_a_saved_dataset(tmp_path: Path) -> None:
    p = plan(JobConfig(input=EXAMPLES / "manifest.jsonl", output=tmp_path / "o", workers=0), sample=4)
    assert p.found == {"image": 2, "audio": 1, "video": 1} and p.source.startswith("manifest ")
    d = plan(JobConfig(input=EXAMPLES / "dataset", output=tmp_path / "o", workers=0), sample=4)
    assert d.found == {"image": 3} and d.modalities["image"].decoded == 3


def test_plan_counts_bad_rows_and_empty_input_is_refused(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "images" / "shapes.png", tmp_path / "shapes.png")
    (tmp_path / "m.jsonl").write_text('{"path": "shapes.png"}\n{"nopath": 1}\nnot json\n')
    p = plan(JobConfig(input=tmp_path / "m.jsonl", output=tmp_path / "o", workers=0))
    assert p.items == 3 and p.bad_rows == 2 and any("unusable" in n for n in p.notes)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no media files found"):
        plan(JobConfig(input=tmp_path / "empty", output=tmp_path / "o"))


def test_plan_flags_items_over_max_model_len(tmp_path: Path) -> None:
    c = JobConfig(
        input=EXAMPLES / "images", output=tmp_path / "o", workers=0, image_tokens=1120, engine={"max_model_len": 512}
    )
    p = plan(c, sample=2)
    assert p.modalities["image"].over_limit == 2
    assert any("max_model_len=512" in n for n in p.notes)


def test_plan_says_which_items_a_task_cannot_serve(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(EXAMPLES / "images" / "shapes.png", inp / "shapes.png")
    shutil.copy(EXAMPLES / "audio" / "hello.wav", inp / "hello.wav")
    p = plan(JobConfig(input=inp, output=tmp_path / "out", task="ocr", workers=0), sample=1)
    assert any("task 'ocr' has no instruction for audio" in n for n in p.notes), p.notes


def test_plan_refuses_what_a_run_refuses(tmp_path: Path) -> None:
    """--dry-run names the same refusal the run would stop with (OUT is a file; --overwrite with --shard)."""
    a_file = tmp_path / "out.txt"
    a_file.write_text("not a folder")
    base = JobConfig(input=EXAMPLES / "images", output=tmp_path / "out", model="fake-model", workers=0)
    for config in (
        base.model_copy(update={"output": a_file}),
        base.model_copy(update={"overwrite": True, "shard": "0/2"}),
    ):
        refused = plan(config, sample=1).refused
        with pytest.raises(UsageError) as run_refusal:
            run_fake(config)
        assert refused is not None and refused == str(run_refusal.value)


# -------------------------------------------------------------------------- estimate


def test_estimate_sends_sampled_items_as_found(tmp_path: Path) -> None:
    """Sampled manifest rows and dataset rows reach the engine with their ids, prompts,
    tasks and fields (inline bytes included), as in a real run."""
    for src in (EXAMPLES / "manifest.jsonl", EXAMPLES / "dataset"):
        items = {i.id: i for i in open_source(src) if i.error is None}
        seen: list = []
        engine = FakeEngine(text_for=lambda req, text, seen=seen: seen.append(req.payload[0].decoded) or text)
        config = JobConfig(input=src, output=tmp_path / src.stem, model="fake-model", workers=0)
        est = estimate(config, 3, engine=engine)
        assert est.records == 3 and len(seen) >= 3
        for d in seen:
            want = items[d.item.id]
            assert (d.item.prompt, d.item.task, d.item.fields) == (want.prompt, want.task, want.fields)
            assert d.error is None and d.content_sha256 is not None


def test_estimate_runs_a_sample_and_projects(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = JobConfig(input=EXAMPLES, output=out, model="fake-model", workers=0)
    est = estimate(config, 3, engine=FakeEngine())
    assert est.sampled == 3 and est.records == 3 and est.total_items == 8
    assert est.projected_s >= est.startup_s and est.per_item_s >= 0
    assert not out.exists()  # the sample ran into a temporary folder
    assert any("uniformly" in a for a in est.assumptions)
    console = Console(file=io.StringIO(), width=120)
    print_estimate(est, console)
    assert "projected: whole job" in console.file.getvalue()  # type: ignore[attr-defined]
    with pytest.raises(UsageError):
        estimate(config, 0, engine=FakeEngine())


def test_estimate_projects_every_task_of_an_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two tasks an item is two records: the projection counts both (it used to count one)."""
    from gemma4u_batch.plan import estimate as estimating

    def sample_run(config, items, engine, reporter):
        # every sampled item made one record per task; 10 s of work, no start-up
        return JobSummary(done=2 * len(items), elapsed_s=10.0), 0.0

    monkeypatch.setattr(estimating, "_run_sample", sample_run)
    config = JobConfig(
        input=EXAMPLES / "images", output=tmp_path / "out", model="fake-model", tasks=["caption", "tags"], workers=0
    )
    est = estimating.estimate(config, 2)
    assert est.records == 4 and est.records_per_item == 2
    assert est.per_record_s == pytest.approx(2.5)
    assert est.per_item_s == pytest.approx(5.0)  # 10 s for 2 items, whatever the number of records
    assert est.projected_s == pytest.approx(5.0 * est.total_items)
    console = Console(file=io.StringIO(), width=140)
    estimating.print_estimate(est, console)
    assert "2 records per item" in console.file.getvalue()  # type: ignore[attr-defined]


def test_estimate_names_the_modalities_its_sample_missed(tmp_path: Path) -> None:
    """Modalities as sent: under speech tasks a video is audio, so a sample of audio misses nothing."""
    config = JobConfig(input=EXAMPLES, output=tmp_path / "out", model="fake-model", workers=0)
    est = estimate(config, 1, engine=FakeEngine())
    (missed,) = [a for a in est.assumptions if "was sampled" in a]
    assert {"image", "audio", "video"} - set(est.sample_modalities) == {
        m for m in ("image", "audio", "video") if m in missed
    }
    speech_config = config.model_copy(update={"task": "transcribe", "modalities": [Modality.AUDIO, Modality.VIDEO]})
    speech = estimate(speech_config, 1, engine=FakeEngine())
    assert set(speech.sample_modalities) == {"audio"}
    assert not [a for a in speech.assumptions if "was sampled" in a]


@pytest.mark.engine
def test_estimate_on_the_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    config = load_recipe(
        REPO / "recipes" / "image_captions.yaml",
        [
            f"output={tmp_path / 'out'}",
            "engine.dtype=float32",
            "engine.max_model_len=4096",
            "engine.max_num_seqs=8",
            "sampling.max_tokens=8",
            "workers=1",
        ],
        model=str(tiny_model),
    )
    est = estimate(config, 2)
    assert est.records == 2 and est.errors == 0 and est.total_items == 5
    assert est.startup_s > 0 and est.per_item_s > 0
    assert est.projected_s == pytest.approx(est.startup_s + 5 * est.per_item_s)

"""Every modality from every source kind on the real engine (tiny model: meaningless text)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pysubs2
import pytest
import soundfile as sf

from gemma4u_batch.config.job import JobConfig, SamplingConfig
from gemma4u_batch.config.languages import DETECT_CODES
from gemma4u_batch.console import Reporter
from gemma4u_batch.job.job import run_job
from gemma4u_batch.store.subtitles import clean_text

from .helpers import EXAMPLES, gemma4u, jpeg_bytes, photo, records_by_id, tiny_args

pytestmark = pytest.mark.engine


def _run(shared_engine, tiny_model: Path, inp: Path | None, out: Path, **kw) -> dict[str, dict]:
    config = JobConfig(
        input=inp,
        output=out,
        model=str(tiny_model),
        workers=kw.pop("workers", 2),
        sampling=SamplingConfig(max_tokens=kw.pop("max_tokens", 8)),
        **kw,
    )
    run_job(config, shared_engine, reporter=Reporter("quiet"))
    return records_by_id(out)


def _encode_av(path: Path, container: str, vcodec: str | None, acodec: str | None, seconds: float = 2.0) -> None:
    import av
    from PIL import Image

    with av.open(str(path), "w", format=container) as c:
        v = a = None
        if vcodec:
            v = c.add_stream(vcodec, rate=10)
            v.width, v.height, v.pix_fmt = 160, 96, "yuv420p"
        if acodec:
            a = c.add_stream(acodec, rate=48_000 if acodec in ("libopus", "aac") else 44_100)
            a.layout = "mono"
        if v is not None:
            for i in range(int(10 * seconds)):
                img = Image.new("RGB", (160, 96), (i * 10 % 255, 80, 160))
                for p in v.encode(av.VideoFrame.from_image(img)):
                    c.mux(p)
            for p in v.encode():
                c.mux(p)
        if a is not None:
            rate = a.rate
            t = np.arange(int(rate * seconds)) / rate
            pcm = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
            step = 960 if acodec == "libopus" else 1024
            for s in range(0, pcm.size - step + 1, step):
                fr = av.AudioFrame.from_ndarray(pcm[s : s + step].reshape(1, -1), format="fltp", layout="mono")
                fr.sample_rate = rate
                for p in a.encode(fr):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("mixed") / "in"
    (root / "img").mkdir(parents=True)
    (root / "aud").mkdir()
    (root / "vid").mkdir()
    exp: dict[str, str] = {}
    (root / "img" / "astronaut.jpg").write_bytes(jpeg_bytes(photo("astronaut")))
    exp["img/astronaut.jpg"] = "ok"
    shutil.copy(EXAMPLES / "audio" / "hello.wav", root / "aud" / "hello.wav")
    exp["aud/hello.wav"] = "ok"
    x, sr = sf.read(EXAMPLES / "audio" / "hello.wav", dtype="float32")
    sf.write(
        root / "aud" / "hello_44k.flac", np.interp(np.arange(0, x.size, sr / 44_100), np.arange(x.size), x), 44_100
    )
    exp["aud/hello_44k.flac"] = "ok"
    _encode_av(root / "aud" / "tone.mp3", "mp3", None, "libmp3lame")
    exp["aud/tone.mp3"] = "ok"
    _encode_av(root / "aud" / "tone.m4a", "mp4", None, "aac")
    exp["aud/tone.m4a"] = "ok"
    shutil.copy(EXAMPLES / "video" / "moving_square.mp4", root / "vid" / "square.mp4")
    exp["vid/square.mp4"] = "ok"
    _encode_av(root / "vid" / "clip.webm", "webm", "libvpx", None)
    exp["vid/clip.webm"] = "ok"
    _encode_av(root / "vid" / "clip.mkv", "matroska", "mpeg4", "aac")
    exp["vid/clip.mkv"] = "ok"
    # bad files of each modality
    (root / "aud" / "zero.wav").write_bytes(b"")
    exp["aud/zero.wav"] = "empty"
    (root / "aud" / "text.mp3").write_text("not audio at all\n" * 20)
    exp["aud/text.mp3"] = "not_audio"
    data = (EXAMPLES / "video" / "moving_square.mp4").read_bytes()
    (root / "vid" / "text.mp4").write_text("not a video\n")
    exp["vid/text.mp4"] = "not_video"
    (root / "vid" / "zero.mkv").write_bytes(b"")
    exp["vid/zero.mkv"] = "empty"
    (root / "vid" / "truncated.mp4").write_bytes(data[: len(data) // 3])
    exp["vid/truncated.mp4"] = "bad"
    (root / "img" / "truncated.jpg").write_bytes(jpeg_bytes(photo("coffee"))[:3000])
    exp["img/truncated.jpg"] = "corrupt"
    return root, exp


def test_every_modality_from_a_folder(mixed, tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    root, exp = mixed
    recs = _run(shared_engine, tiny_model, root, tmp_path / "out", with_audio=True)
    assert sorted(recs) == sorted(exp)
    for rid, kind in exp.items():
        r = recs[rid]
        if kind == "ok":
            assert r["error"] is None and r["text"], r
            assert r["num_prompt_tokens"] > 20
        elif kind == "bad":
            assert r["error"] and r["text"] is None
        else:
            assert r["error_kind"] == kind, r
    assert recs["vid/square.mp4"]["modality"] == "video"
    assert recs["aud/tone.mp3"]["modality"] == "audio"
    # The video prompt carries one mm:ss stamp and 70-token budget per frame (8 frames).
    assert recs["vid/square.mp4"]["num_prompt_tokens"] > 8 * 40


def test_manifest_source(tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    man = tmp_path / "data"
    shutil.copytree(EXAMPLES, man, ignore=shutil.ignore_patterns("dataset", "*.py"))
    lines = (man / "manifest.jsonl").read_text().splitlines()
    lines.insert(2, '{"path": "images/missing.png", "id": "missing"}')
    lines.insert(3, "{not json")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.png").write_bytes((man / "images" / "shapes.png").read_bytes())
    lines.append(json.dumps({"path": str(tmp_path / "elsewhere" / "secret.png"), "id": "outside"}))
    (man / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    recs = _run(shared_engine, tiny_model, man / "manifest.jsonl", tmp_path / "out")
    assert {"sunset", "shapes", "hello", "square", "missing", "outside"} <= recs.keys()
    assert len(recs) == 7
    assert recs["sunset"]["fields"]["title"] == "Evening over the bay" and recs["sunset"]["text"]
    assert recs["shapes"]["prompt"] == "List the shapes you see."
    assert recs["hello"]["task"] == "transcribe" and recs["hello"]["segments"]
    assert recs["square"]["modality"] == "video" and recs["square"]["text"]
    assert recs["missing"]["error_kind"] == "not_found"
    assert "outside the allowed roots" in recs["outside"]["error"]
    bad = [r for r in recs.values() if "line 4" in (r["error"] or "")]
    assert len(bad) == 1 and "invalid JSON" in bad[0]["error"]


def test_saved_dataset_source(tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    recs = _run(shared_engine, tiny_model, EXAMPLES / "dataset", tmp_path / "out")
    assert sorted(recs) == ["banner", "shapes", "sunset"]
    assert all(r["text"] and r["error"] is None for r in recs.values())
    assert recs["banner"]["fields"]["title"] == "A wide banner"


def test_transcribe_95s_file_cli(tmp_path: Path, tiny_model: Path) -> None:
    inp = tmp_path / "talks"
    inp.mkdir()
    shutil.copy(EXAMPLES / "audio" / "lecture_95s.flac", inp / "lecture.flac")
    shutil.copy(EXAMPLES / "video" / "moving_square.mp4", inp / "with_sound.mp4")
    out = tmp_path / "out"
    proc = gemma4u(
        "transcribe",
        str(inp),
        "-o",
        str(out),
        *tiny_args(tiny_model, max_tokens=8),
        "--format",
        "jsonl,srt,vtt,txt,tsv,json",
        "--max-cue-seconds",
        "5",
        "--max-lines",
        "1",
        "--progress",
        "quiet",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = {r["id"]: r for p in out.glob("*.jsonl") for r in map(json.loads, p.read_text().splitlines())}
    assert sorted(recs) == ["lecture.flac", "with_sound.mp4"]
    lec = recs["lecture.flac"]
    segs = lec["segments"]
    assert len(segs) >= 4 and segs[0]["start"] == 0.0 and abs(segs[-1]["end"] - 95.0) < 0.05
    assert all(0 < s["end"] - s["start"] <= 30.0 for s in segs)
    # Windows are the VAD's speech stretches: in time order, the pauses between them not sent.
    assert all(a["end"] < b["start"] for a, b in itertools.pairwise(segs))
    assert lec["task"] == "transcribe" and lec["text"]
    assert recs["with_sound.mp4"]["segments"] and recs["with_sound.mp4"]["error"] is None
    srt = (out / "__transcripts__" / "lecture.flac.srt").read_text()
    assert srt.startswith("1\n00:00:00,000 --> ") and "\n\n4\n" in srt
    assert (out / "__transcripts__" / "lecture.flac.vtt").read_text().startswith("WEBVTT")
    assert (out / "__transcripts__" / "lecture.flac.txt").read_text().strip()
    for fmt in ("srt", "vtt"):  # a third-party parser reads them; the cue limits hold
        subs = pysubs2.load(str(out / "__transcripts__" / f"lecture.flac.{fmt}"))
        assert len(subs) >= 4 and all(ev.end - ev.start <= 5000 for ev in subs)
        assert all("\n" not in ev.plaintext and len(ev.plaintext) <= 42 for ev in subs)
    tsv = (out / "__transcripts__" / "lecture.flac.tsv").read_text().splitlines()
    assert tsv[0] == "start\tend\ttext" and len(tsv) == 1 + sum(1 for s in segs if clean_text(s["text"]))
    doc = json.loads((out / "__transcripts__" / "lecture.flac.json").read_text())
    assert len(doc["segments"]) == len(segs)
    # --language auto (the default): each window's language identified, one of the allowed codes
    assert lec["language"] in DETECT_CODES and doc["language"] == lec["language"] == segs[0]["language"]
    assert all(s["language"] in DETECT_CODES for s in segs) and recs["with_sound.mp4"]["language"] in DETECT_CODES

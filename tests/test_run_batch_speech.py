"""Transcription and translation lines in `gemma4u run-batch` on FakeEngine: every response
format validated by vLLM's own response models, translation, speech windows of long audio,
language identification, the `prompt` as context, and the error lines (bad file_url, a file
outside --allowed-local-media-path, a file that is not audio, unknown model)."""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gemma4u_batch.batch.media import MediaPolicy
from gemma4u_batch.batch.run import BatchRun, BatchSettings
from gemma4u_batch.config.languages import DETECT_CODES
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.prompting.builder import LANGUAGE_INSTRUCTION
from gemma4u_batch.prompting.units import EngineRequest

from .helpers import (
    SR,
    TRANSCRIBE,
    TRANSLATE,
    audio_data_uri,
    batch_outputs,
    long_speech,
    photo,
    png_bytes,
    quiet,
    short_speech,
    speech_line,
    wav_bytes,
    write_lines,
)

MODEL = "gemma-speech"


short_audio, long_audio, data_uri = short_speech, long_speech, audio_data_uri
outputs = batch_outputs


def run(tmp_path: Path, lines: list[Any], engine: FakeEngine | None = None, **kw: Any) -> list[dict[str, Any]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    inp = write_lines(tmp_path / "in.jsonl", lines)
    # decoded inline (workers=0): the decode workers are the engine test's
    settings = BatchSettings(input=inp, output=tmp_path / "out.jsonl", model=MODEL, **{"workers": 0, **kw})
    BatchRun(settings).run(engine or FakeEngine())
    return outputs(tmp_path / "out.jsonl")  # each line validated by vLLM's BatchRequestOutput


def recording() -> tuple[FakeEngine, list[EngineRequest]]:
    sent: list[EngineRequest] = []

    def note(req: EngineRequest, text: str) -> str:
        sent.append(req)
        return text

    return FakeEngine(text_for=note), sent


def _models() -> dict[str, Any]:
    from vllm.entrypoints.speech_to_text.transcription.protocol import (
        TranscriptionResponse,
        TranscriptionResponseVerbose,
    )
    from vllm.entrypoints.speech_to_text.translation.protocol import TranslationResponse, TranslationResponseVerbose

    return {
        "transcription": TranscriptionResponse,
        "transcription_verbose": TranscriptionResponseVerbose,
        "translation": TranslationResponse,
        "translation_verbose": TranslationResponseVerbose,
    }


def body_of(out: dict[str, Any]) -> dict[str, Any]:
    assert out["error"] is None and out["response"]["status_code"] == 200, out
    body = out["response"]["body"]
    assert isinstance(body, dict)
    return body


SRT_CUE = re.compile(r"^(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n.+", re.S)


def _seconds(stamp: str) -> float:
    h, m, s = stamp.replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_every_response_format_is_vllms_shape(tmp_path: Path) -> None:
    m = _models()
    uri = data_uri(short_audio())
    duration = len(short_audio()) / SR
    fmts = ["json", "text", "srt", "vtt", "verbose_json"]
    outs = run(tmp_path, [speech_line(f, uri, response_format=f, language="en") for f in fmts])
    by = {o["custom_id"]: body_of(o) for o in outs}
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    # json and text: vLLM's serving answers both with TranscriptionResponse (text + audio usage)
    for fmt in ("json", "text"):
        resp = m["transcription"].model_validate(by[fmt])
        assert resp.text.startswith("fake ") and by[fmt]["usage"] == usage
    assert by["json"] == by["text"]
    # srt / vtt: the same body, its text the subtitle document (vLLM's serving refuses these formats)
    srt = m["transcription"].model_validate(by["srt"]).text
    blocks = srt.strip().split("\n\n")
    assert blocks and all(SRT_CUE.match(b) for b in blocks), srt
    for b in blocks:
        start, end = (_seconds(t) for t in SRT_CUE.match(b).groups()[1:])  # type: ignore[union-attr]
        assert 0 <= start < end <= duration
    vtt = m["transcription"].model_validate(by["vtt"]).text
    assert vtt.startswith("WEBVTT\n\n") and " --> " in vtt and by["vtt"]["usage"] == usage
    # verbose_json: segments from the speech windows, the audio's duration, the given language
    verbose = m["transcription_verbose"].model_validate(by["verbose_json"])
    assert verbose.language == "en" and verbose.duration == pytest.approx(duration)
    assert verbose.segments and verbose.text == " ".join(s.text for s in verbose.segments)
    for i, seg in enumerate(verbose.segments):
        assert seg.id == i and 0 <= seg.start < seg.end <= duration and seg.seek == int(seg.start)
        assert seg.avg_logprob <= 0 and seg.compression_ratio > 0 and seg.temperature == 0.0
    assert "usage" not in by["verbose_json"]  # vLLM's verbose model has no usage


def test_translation_lines(tmp_path: Path) -> None:
    m = _models()
    engine, sent = recording()
    uri = data_uri(short_audio())
    lines = [
        speech_line("plain", uri, url=TRANSLATE),
        speech_line("fr", uri, url=TRANSLATE, to_language="fr", language="en", response_format="verbose_json"),
        speech_line("srt", uri, url=TRANSLATE, response_format="srt"),
    ]
    by = {o["custom_id"]: body_of(o) for o in run(tmp_path, lines, engine)}
    plain = m["translation"].model_validate(by["plain"])
    assert plain.text.startswith("fake ") and set(by["plain"]) == {"text"}  # vLLM reports no usage for translations
    verbose = m["translation_verbose"].model_validate(by["fr"])
    assert verbose.language == "en" and verbose.segments and verbose.duration == pytest.approx(len(short_audio()) / SR)
    assert m["translation"].model_validate(by["srt"]).text.startswith("1\n00:00:")
    prompts = {r.prompt for r in sent}
    assert any("into French." in p for p in prompts) and any("into English." in p for p in prompts)
    assert all("Transcribe" not in p for p in prompts)


def test_long_audio_is_windows_of_speech_stitched(tmp_path: Path) -> None:
    m = _models()
    x, truth = long_audio()
    duration = len(x) / SR
    engine, sent = recording()
    lines = [
        speech_line("verbose", data_uri(x), response_format="verbose_json", language="en"),
        speech_line("json", data_uri(x)),
    ]
    by = {o["custom_id"]: body_of(o) for o in run(tmp_path, lines, engine)}
    verbose = m["transcription_verbose"].model_validate(by["verbose"])
    assert 94 <= verbose.duration <= 96
    segs = verbose.segments or []
    assert len(segs) >= 4, "≤30 s windows of 95 s of speech"
    for a, b in itertools.pairwise(segs):
        assert a.end <= b.start, "segments in time order, not overlapping"
    for s in segs:
        assert 0 <= s.start < s.end <= duration and s.end - s.start <= 30.0 + 1e-6
    # every utterance lies within a segment (the VAD's regions, with their margins)
    for t0, t1 in truth:
        assert any(s.start <= t0 + 0.3 and t1 - 0.3 <= s.end for s in segs), (t0, t1)
    assert verbose.text == " ".join(s.text for s in segs)
    # json: the same windows' texts stitched into one, usage the whole audio's seconds
    plain = m["transcription"].model_validate(by["json"])
    assert plain.text.count("fake ") == len(segs) and by["json"]["usage"]["seconds"] == math.ceil(duration)
    windows = [r for r in sent if r.multi_modal_data and r.prompt.count(LANGUAGE_INSTRUCTION) == 0]
    assert len(windows) == 2 * len(segs)  # one request per window per line; no identification for json


def test_language_identified_only_when_reported(tmp_path: Path) -> None:
    m = _models()
    engine, sent = recording()
    uri = data_uri(short_audio())
    lines = [speech_line("auto-verbose", uri, response_format="verbose_json"), speech_line("auto-json", uri)]
    by = {o["custom_id"]: body_of(o) for o in run(tmp_path, lines, engine)}
    verbose = m["transcription_verbose"].model_validate(by["auto-verbose"])
    assert verbose.language in DETECT_CODES
    identify = [r for r in sent if r.structured and "choice" in r.structured]
    assert identify and all(r.payload.answer.line.custom_id == "auto-verbose" for r in identify)
    assert all(r.params is None for r in identify)  # greedy, constrained: not the line's sampling


def test_body_sampling_and_prompt_reach_the_engine(tmp_path: Path) -> None:
    engine, sent = recording()
    prompt = "Names: Zoë, {{ not a template }}."
    line = speech_line(
        "s", data_uri(short_audio()), prompt=prompt, temperature=0.4, seed=7, max_completion_tokens=33, language="de"
    )
    body_of(run(tmp_path, [line], engine)[0])
    (req,) = sent
    assert prompt in req.prompt and "The speech is in German." in req.prompt
    assert req.params.temperature == 0.4 and req.params.seed == 7 and req.params.max_tokens == 33


def test_file_urls_under_the_allowed_path(tmp_path: Path) -> None:
    m = _models()
    media = tmp_path / "media"
    media.mkdir()
    (media / "speech.wav").write_bytes(wav_bytes(short_audio()))
    (media / "photo.png").write_bytes(png_bytes(photo()))
    outside = tmp_path / "outside.wav"
    outside.write_bytes(wav_bytes(short_audio()))
    lines = [
        speech_line("ok", (media / "speech.wav").as_uri()),
        speech_line("outside", outside.as_uri()),
        speech_line("traversal", f"file://{media}/../outside.wav"),
        speech_line("missing", (media / "none.wav").as_uri()),
        speech_line("not-audio", (media / "photo.png").as_uri()),
    ]
    outs = {o["custom_id"]: o for o in run(tmp_path, lines, media=MediaPolicy(allowed_local_media_path=media))}
    assert m["transcription"].model_validate(body_of(outs["ok"])).usage.seconds == math.ceil(len(short_audio()) / SR)
    for cid in ("outside", "traversal", "missing", "not-audio"):
        o = outs[cid]
        assert o["response"]["status_code"] == 400 and o["response"]["body"] is None, cid
        assert o["error"]["error"]["type"] == "BadRequestError" and o["error"]["error"]["code"] == 400, cid
    assert "outside --allowed-local-media-path" in outs["outside"]["error"]["error"]["message"]
    assert "outside --allowed-local-media-path" in outs["traversal"]["error"]["error"]["message"]
    assert outs["missing"]["error"]["error"]["message"].startswith("not_found:")


def test_error_lines(tmp_path: Path) -> None:
    uri = data_uri(short_audio())
    png = "data:image/png;base64," + base64.b64encode(png_bytes(photo())).decode()
    lines = [
        speech_line("unknown-model", uri, model="NonExistModel"),
        speech_line("not-base64", "data:audio/wav,hello"),
        speech_line("bad-base64", "data:audio/wav;base64,@@@"),
        speech_line("ftp", "ftp://example.com/a.wav"),
        speech_line("http-off", "https://example.com/a.wav"),
        speech_line("file-off", "file:///tmp/a.wav"),
        speech_line("png", png),
        speech_line("stream", uri, stream=True),
        speech_line("diarized", uri, response_format="diarized_json"),
        speech_line("bad-format", uri, url=TRANSLATE, response_format="diarized_json"),
        speech_line("language", uri, language="klingonish"),
        {"custom_id": "file-field", "method": "POST", "url": TRANSCRIBE, "body": {"file": "x", "file_url": uri}},
        {"custom_id": "no-file-url", "method": "POST", "url": TRANSCRIBE, "body": {"model": MODEL}},
    ]
    engine, sent = recording()
    outs = {o["custom_id"]: o for o in run(tmp_path, lines, engine)}
    assert sent == []
    o = outs["unknown-model"]
    assert o["response"]["status_code"] == 404 and o["error"]["error"]["type"] == "NotFoundError"
    assert o["error"]["error"]["message"] == f"The model `NonExistModel` does not exist. Valid aliases: {MODEL}."
    for cid, says in [
        ("not-base64", "bad_media_url: a data: URI must be base64"),
        ("bad-base64", "bad_media_url: invalid base64"),
        ("ftp", "bad_media_url: unsupported media URL scheme 'ftp'"),
        ("http-off", "network_media: https media is off"),
        ("file-off", "bad_media_url: file:// media needs --allowed-local-media-path"),
        ("png", "not_audio: no audio stream found"),
        ("diarized", f"Currently do not support diarized_json for {MODEL}"),
        ("language", "unknown language 'klingonish'"),
    ]:
        o = outs[cid]
        assert o["response"]["status_code"] == 400 and o["error"]["error"]["type"] == "BadRequestError", cid
        assert says in o["error"]["error"]["message"], (cid, o["error"])
    assert outs["stream"]["error"] == "Request must not be sent in stream mode"
    assert outs["bad-format"]["error"].startswith("invalid body: response_format")
    assert "The 'file' field is not supported in batch requests" in outs["file-field"]["error"]
    assert outs["no-file-url"]["error"] == "invalid body: file_url: Field required"


def test_no_speech_is_an_empty_transcript(tmp_path: Path) -> None:
    m = _models()
    engine, sent = recording()
    silence = quiet(4.0, np.random.default_rng(3))
    lines = [
        speech_line("json", data_uri(silence)),
        speech_line("verbose", data_uri(silence), response_format="verbose_json"),
    ]
    by = {o["custom_id"]: body_of(o) for o in run(tmp_path, lines, engine)}
    assert sent == []
    assert m["transcription"].model_validate(by["json"]).text == "" and by["json"]["usage"]["seconds"] == 4
    verbose = m["transcription_verbose"].model_validate(by["verbose"])
    assert verbose.segments == [] and verbose.language == "und" and verbose.duration == pytest.approx(4.0)


def test_engine_errors_and_resume(tmp_path: Path) -> None:
    x, _ = long_audio()
    calls = {"n": 0}

    def third_window_fails(req: EngineRequest) -> str | None:
        calls["n"] += 1
        return "too many tokens" if calls["n"] == 3 else None

    lines = [speech_line("long", data_uri(x)), speech_line("short", data_uri(short_audio()))]
    outs = {o["custom_id"]: o for o in run(tmp_path, lines, FakeEngine(fail_if=third_window_fails))}
    assert outs["long"]["response"]["status_code"] == 400
    assert "too many tokens" in outs["long"]["error"]["error"]["message"]
    body_of(outs["short"])
    # a rerun of the finished file does nothing; the checkpoint holds one answer per line
    inp = tmp_path / "in.jsonl"
    summary = BatchRun(BatchSettings(input=inp, output=tmp_path / "out.jsonl", model=MODEL)).run(None)
    assert summary.already_complete and summary.errors == 1
    assert len((tmp_path / ".out.jsonl.gemma4u" / "done.jsonl").read_text().splitlines()) == 2


def test_vllm_answers_these_lines_model_does_not_support_endpoint() -> None:
    """What `vllm run-batch` answers for the same lines with this model: its Gemma 4 Unified
    class is no SupportsTranscription, so the engine has no "transcription" task, no speech
    serving is made, and run-batch writes "Model does not support endpoint: URL" (status 400)."""
    from vllm.model_executor.models.gemma4_unified import Gemma4UnifiedForConditionalGeneration
    from vllm.model_executor.models.interfaces import supports_transcription

    assert not supports_transcription(Gemma4UnifiedForConditionalGeneration)


def test_body_json_round_trips(tmp_path: Path) -> None:
    """Each output line re-reads as vLLM's BatchRequestOutput with the body's own model."""
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput
    from vllm.entrypoints.speech_to_text.transcription.protocol import TranscriptionResponseVerbose

    run(tmp_path, [speech_line("v", data_uri(short_audio()), response_format="verbose_json", language="en")])
    line = (tmp_path / "out.jsonl").read_text().splitlines()[0]
    out = BatchRequestOutput.model_validate_json(line)
    assert out.response is not None and isinstance(out.response.body, TranscriptionResponseVerbose)
    assert json.loads(line)["response"]["body"]["segments"][0]["tokens"] == []


def test_http_file_urls(tmp_path: Path) -> None:
    """http(s) with --allow-network-media, fetched by gemma4u's client: private addresses are
    refused unless the decode options allow them (here, for the server on 127.0.0.1)."""
    from gemma4u_batch.decode import DecodeOptions

    from .http_servers import Reply, WebServer

    m = _models()
    with WebServer() as web:
        web.routes["/a.wav"] = [Reply(body=wav_bytes(short_audio()))]
        web.routes["/big.wav"] = [Reply(body=b"\0" * 5000)]
        lines = [speech_line("ok", web.url("/a.wav")), speech_line("big", web.url("/big.wav"))]
        private = MediaPolicy(allow_network=True, max_bytes=4096 * 1024, decode=DecodeOptions(allow_private_urls=True))
        small = MediaPolicy(allow_network=True, max_bytes=4096, decode=DecodeOptions(allow_private_urls=True))
        ok = run(tmp_path / "ok", [lines[0]], media=private)[0]
        big = run(tmp_path / "big", [lines[1]], media=small)[0]
        refused = run(tmp_path / "refused", [lines[0]], media=MediaPolicy(allow_network=True))[0]
    assert m["transcription"].model_validate(body_of(ok)).text.startswith("fake ")
    assert big["response"]["status_code"] == 400 and big["error"]["error"]["message"].startswith("too_large:")
    assert refused["response"]["status_code"] == 400
    assert refused["error"]["error"]["message"].startswith("private_address: refused:")

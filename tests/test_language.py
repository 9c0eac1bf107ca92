"""The spoken language of speech tasks (#16): `--language` normalised to one ISO code and
recorded per record and per segment; `auto` asks the model per speech window, with the answer
constrained to a list of codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gemma4u_batch.config.job import JobConfig
from gemma4u_batch.config.languages import DETECT_CODES, language_name, normalise_language
from gemma4u_batch.console import Reporter
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.errors import UsageError
from gemma4u_batch.job.job import run_job
from gemma4u_batch.prompting.units import EngineRequest

from .helpers import AUDIO, SR, aged, documented_code, gemma4u, records_by_id, run_fake, three_utterances


@pytest.mark.parametrize("value", ["fr", "FR", "fra", "fre", "French", "french", " French "])
def test_codes_and_names_normalise_to_one_code(value: str) -> None:
    assert normalise_language(value) == "fr"
    assert JobConfig(input=Path("."), output=Path("o"), language=value).language == "fr"


def test_639_3_only_languages_keep_their_639_3_code_and_auto_is_none() -> None:
    assert normalise_language("yue") == normalise_language("Yue Chinese") == "yue"
    assert normalise_language("en") == "en"  # a code, although 'En' is also a language's name
    assert normalise_language("Modern Greek") == "el" and language_name("el") == "Modern Greek"
    assert normalise_language("auto") is None and normalise_language(None) is None
    assert all(normalise_language(c) == c for c in DETECT_CODES)


def test_an_unknown_language_is_bad_usage_before_any_engine(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = gemma4u(
        "transcribe", str(AUDIO), "-o", str(out), "--language", "klingonx", "--model", "/nonexistent", timeout=120
    )
    assert r.returncode == documented_code("USAGE"), r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown language 'klingonx'" in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()


def _three(tmp_path: Path) -> Path:
    inp = tmp_path / "in"
    inp.mkdir()
    x, _ = three_utterances()
    sf.write(inp / "three.wav", x, SR)
    sf.write(inp / "silence.flac", np.zeros(SR * 5, dtype=np.float32), SR)
    return inp


def _transcribe(inp: Path, out: Path, engine: FakeEngine, **settings) -> object:
    return run_fake(inp, out, engine=engine, task="transcribe", **settings)


def test_auto_identifies_each_window_and_records_where_they_disagree(tmp_path: Path) -> None:
    """Windows 0 and 2 answer en, window 1 fr: the record says en (the first speech window's),
    each segment its own; the identification requests are short, greedy, constrained to the
    codes, and leave the transcript text and the transcription prompt as without them."""
    sent: list[EngineRequest] = []
    answers = {0: "en", 1: "fr", 2: "en"}

    def text_for(req: EngineRequest, text: str) -> str:
        sent.append(req)
        unit, i = req.payload
        detects = unit.parts[i].detects
        return answers[detects] if detects is not None else f"words {unit.parts[i].start:.0f}"

    inp, out = _three(tmp_path), tmp_path / "out"
    _transcribe(inp, out, FakeEngine(text_for=text_for), subtitles=["json"])
    rec = records_by_id(out)["three.wav"]
    assert rec["language"] == "en"
    assert [s["language"] for s in rec["segments"]] == ["en", "fr", "en"]
    assert rec["text"] == " ".join(s["text"] for s in rec["segments"]) and "fr" not in rec["text"].split()
    ident = [r for r in sent if r.structured == {"choice": list(DETECT_CODES)}]
    speech = [r for r in sent if r not in ident]
    assert len(ident) == len(speech) == 3
    assert all(r.sampling.max_tokens <= 8 and r.sampling.temperature == 0.0 for r in ident)
    assert all("The speech is in" not in r.prompt and "language" not in r.prompt for r in speech)
    doc = json.loads((out / "__transcripts__" / "three.wav.json").read_text())
    assert doc["language"] == "en" and [s["language"] for s in doc["segments"]] == ["en", "fr", "en"]
    silent = records_by_id(out)["silence.flac"]
    assert silent["flags"] == ["no_speech"] and silent["language"] is None  # nothing to identify


def test_auto_answers_are_allowed_codes_and_a_rerun_costs_nothing(tmp_path: Path, reads: list[str]) -> None:
    """Rerun with the same setting: the quick check finds every record done without opening a
    file or sending a request."""
    inp, out = _three(tmp_path), tmp_path / "out"
    aged(inp)
    engine = FakeEngine()
    _transcribe(inp, out, engine)
    rec = records_by_id(out)["three.wav"]
    assert rec["language"] in DETECT_CODES and all(s["language"] in DETECT_CODES for s in rec["segments"])
    reads.clear()
    sent = engine.steps
    again = _transcribe(inp, out, engine)
    assert again.done == 0 and again.skipped == 2 and reads == [] and engine.steps == sent  # type: ignore[attr-defined]


@pytest.mark.parametrize("given", ["fr", "French", "fra"])
def test_a_given_language_is_recorded_as_its_code_and_sent_by_name(tmp_path: Path, given: str) -> None:
    sent: list[EngineRequest] = []
    inp, out = _three(tmp_path), tmp_path / "out"
    _transcribe(inp, out, FakeEngine(text_for=lambda req, text: sent.append(req) or text), language=given)
    recs = records_by_id(out)
    rec = recs["three.wav"]
    assert rec["language"] == "fr" and [s["language"] for s in rec["segments"]] == ["fr"] * 3
    assert recs["silence.flac"]["language"] == "fr"
    assert len(sent) == 3 and all(r.structured is None for r in sent)  # no identification requests
    assert all("The speech is in French." in r.prompt for r in sent)
    assert "The speech is in French." in rec["prompt"]


def test_the_language_setting_is_part_of_the_key_and_guarded(tmp_path: Path) -> None:
    """auto and fr give other keys; `French` into an OUT made with `fr` is the same setting
    (nothing redone); `de` into it is refused; captions carry no language."""
    inp = _three(tmp_path)
    keys = {}
    for given in (None, "fr"):
        out = tmp_path / f"out-{given}"
        _transcribe(inp, out, FakeEngine(), language=given)
        keys[given] = records_by_id(out)["three.wav"]["key"]
    assert keys[None] != keys["fr"]
    assert _transcribe(inp, tmp_path / "out-fr", FakeEngine(), language="French").done == 0  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="different language"):
        _transcribe(inp, tmp_path / "out-fr", FakeEngine(), language="de")
    out = tmp_path / "captions"
    run_fake(inp, out, task="caption")
    assert all(r["language"] is None for r in records_by_id(out).values())


@pytest.mark.engine
def test_the_real_model_identifies_from_the_allowed_codes(tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    """On the tiny random checkpoint the answer is arbitrary but must be one of the codes;
    a given language is recorded as its code."""
    inp = tmp_path / "in"
    inp.mkdir()
    lecture, sr = sf.read(AUDIO / "lecture_95s.flac", dtype="float32")
    sf.write(inp / "lecture.flac", lecture[: 45 * sr], sr)
    for given, out in ((None, tmp_path / "auto"), ("French", tmp_path / "fr")):
        config = JobConfig(
            input=inp,
            output=out,
            model=str(tiny_model),
            task="transcribe",
            language=given,
            workers=0,
            sampling={"max_tokens": 8},
            engine={"dtype": "float32", "max_model_len": 4096, "max_num_seqs": 8},
        )
        run_job(config, shared_engine, reporter=Reporter("quiet"))
        rec = records_by_id(out)["lecture.flac"]
        assert rec["error"] is None and len(rec["segments"]) >= 2
        if given is None:
            assert rec["language"] in DETECT_CODES and all(s["language"] in DETECT_CODES for s in rec["segments"])
            assert rec["language"] == rec["segments"][0]["language"]
        else:
            assert rec["language"] == "fr" and {s["language"] for s in rec["segments"]} == {"fr"}

"""Voice activity detection (#16): only speech is sent, segment times are speech times."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from gemma4u_batch.config.job import JobConfig
from gemma4u_batch.decode import DecodeOptions, decode_item
from gemma4u_batch.decode.options import decode_options
from gemma4u_batch.decode.vad import speech_probabilities, speech_regions, speech_windows
from gemma4u_batch.records import Modality, WorkItem
from gemma4u_batch.store.layout import OutLayout

from .helpers import AUDIO, SR, hello, quiet, records_by_id, run_fake, three_utterances, tone, wav_bytes


def _regions_seconds(x: np.ndarray) -> list[tuple[float, float]]:
    return [(s / SR, e / SR) for s, e in speech_regions(speech_probabilities(x), len(x))]


def test_utterances_between_silence_and_tone_are_found_and_nothing_else() -> None:
    x, truth = three_utterances()
    found = _regions_seconds(x)
    assert len(found) == 3, found
    for (s, e), (ts, te) in zip(found, truth, strict=True):
        assert abs(s - ts) <= 1.5 and abs(e - te) <= 1.5, (found, truth)


def test_silence_and_tone_hold_no_speech() -> None:
    rng = np.random.default_rng(1)
    assert _regions_seconds(np.zeros(60 * SR, np.float32)) == []
    assert _regions_seconds(quiet(60, rng)) == []
    assert _regions_seconds(tone(20)) == []


def test_parallel_streams_agree_with_one_stream() -> None:
    """The batched analysis (many streams, each warmed up) finds the regions one sequential
    pass finds, to within two frames."""
    import gemma4u_batch.decode.vad as vad

    x, _ = sf.read(AUDIO / "lecture_95s.flac", dtype="float32")
    batched = speech_regions(speech_probabilities(x), len(x))
    saved = vad._MAX_STREAMS
    vad._MAX_STREAMS = 1
    try:
        single = speech_regions(speech_probabilities(x), len(x))
    finally:
        vad._MAX_STREAMS = saved
    assert len(batched) == len(single)
    for (a, b), (c, d) in zip(batched, single, strict=True):
        assert abs(a - c) <= 2 * vad.FRAME and abs(b - d) <= 2 * vad.FRAME


def test_windows_cover_speech_split_at_the_longest_pause() -> None:
    x = np.zeros(200 * SR, np.float32)
    s = SR
    # Speech 0-10, 11.5-20, 21.8-29, 29.5-40 (longest pause 20-21.8): the 40 s stretch splits there.
    regions = [(0, 10 * s), (int(11.5 * s), 20 * s), (int(21.8 * s), 29 * s), (int(29.5 * s), 40 * s)]
    assert speech_windows(x, regions) == [(0, 20 * s), (int(21.8 * s), 40 * s)]
    # Neighbouring groups are joined while they fit in 30 s; a pause of 2 s or more always splits.
    assert speech_windows(x, [(0, 5 * s), (6 * s, 12 * s), (13 * s, 20 * s)]) == [(0, 20 * s)]
    assert speech_windows(x, [(0, 5 * s), (7 * s, 12 * s)]) == [(0, 5 * s), (7 * s, 12 * s)]
    # A single region longer than 30 s (continuous speech) is cut inside it, ≤ 30 s each.
    rng = np.random.default_rng(2)
    x[100 * s : 170 * s] = rng.standard_normal(70 * s).astype(np.float32) * 0.1
    wins = speech_windows(x, [(100 * s, 170 * s)])
    assert wins[0][0] == 100 * s and wins[-1][1] == 170 * s
    assert all(e - b <= 30 * s for b, e in wins) and len(wins) == 3
    assert speech_windows(x, []) == []


def test_decode_workers_attach_speech_regions_for_speech_tasks() -> None:
    x, _ = three_utterances()
    item = WorkItem(id="a.wav", source="a.wav", modality=Modality.AUDIO, data=wav_bytes(x))
    assert "speech" not in decode_item(item, DecodeOptions()).info
    d = decode_item(item, DecodeOptions(vad=True))
    assert d.error is None and len(d.info["speech"]) == 3
    assert decode_options(JobConfig(input=Path("."), output=Path("o"), task="transcribe")).vad
    assert not decode_options(JobConfig(input=Path("."), output=Path("o"), task="caption")).vad


def test_transcription_sends_only_speech(tmp_path: Path) -> None:
    """Segments are the utterances' times (within 1.5 s), none holds only silence or tone,
    10 minutes of near-silence gives an empty record flagged `no_speech`, and subtitle files
    are written for both."""
    inp = tmp_path / "in"
    inp.mkdir()
    x, truth = three_utterances()
    sf.write(inp / "three.wav", x, SR)
    sf.write(inp / "silence.flac", quiet(600, np.random.default_rng(3)), SR)
    out = tmp_path / "out"
    run_fake(inp, out, task="transcribe", subtitles=["srt"])
    recs = records_by_id(out)
    three = recs["three.wav"]
    assert three["error"] is None and three["text"]
    segs = three["segments"]
    assert len(segs) == 3, segs
    for seg, (ts, te) in zip(segs, truth, strict=True):
        assert abs(seg["start"] - ts) <= 1.5 and abs(seg["end"] - te) <= 1.5, (segs, truth)
    silent = recs["silence.flac"]
    assert silent["text"] == "" and silent["segments"] == [] and silent["flags"] == ["no_speech"]
    assert silent["error"] is None and silent["num_output_tokens"] is None
    assert (out / "__transcripts__" / "silence.flac.srt").read_text() == ""
    assert json.dumps(three)  # plain JSON


def _two_hours_with_three_utterances(path: Path) -> list[tuple[float, float]]:
    """A 2-hour 16 kHz FLAC, silent but for `hello.wav` at 5 min, 1 h and 1 h 59 min, written
    block by block; where each utterance is (seconds)."""
    speech = hello()
    at = [300.0, 3600.0, 7140.0]
    block = np.zeros(60 * SR, dtype=np.float32)
    with sf.SoundFile(path, "w", samplerate=SR, channels=1, format="FLAC") as fh:
        for minute in range(120):
            block[:] = 0.0
            for t in at:
                if int(t // 60) == minute:
                    s = int((t - minute * 60) * SR)
                    block[s : s + len(speech)] = speech
            fh.write(block)
    return [(t, t + len(speech) / SR) for t in at]


def test_a_two_hour_file_is_transcribed_in_windows_of_its_speech(tmp_path: Path) -> None:
    """The 2-hour case, through a decode worker process: only the three utterances are sent,
    each in its own ≤30 s window at its true time, with its language identified."""
    from gemma4u_batch.config.languages import DETECT_CODES

    inp = tmp_path / "in"
    inp.mkdir()
    truth = _two_hours_with_three_utterances(inp / "two_hours.flac")
    out = tmp_path / "out"
    run_fake(inp, out, task="transcribe", workers=1, decode_timeout=600, subtitles=["tsv"])
    rec = records_by_id(out)["two_hours.flac"]
    assert rec["error"] is None and rec["flags"] == [] and rec["text"]
    segs = rec["segments"]
    assert len(segs) == 3, segs
    for seg, (ts, te) in zip(segs, truth, strict=True):
        assert abs(seg["start"] - ts) <= 1.5 and abs(seg["end"] - te) <= 1.5, (segs, truth)
        assert 0 < seg["end"] - seg["start"] <= 30.0 and seg["language"] in DETECT_CODES
    assert rec["language"] == segs[0]["language"]
    assert len((out / "__transcripts__" / "two_hours.flac.tsv").read_text().splitlines()) == 4
    assert not list(OutLayout(out).tmp.rglob("*.f32"))  # its 460 MB spill file went with the item

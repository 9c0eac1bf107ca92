"""Subtitle-grade transcript files (#16): cues within the limits, files a third-party parser reads."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pysubs2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma4u_batch.store.objects import LocalFiles
from gemma4u_batch.store.subtitles import (
    CueLimits,
    clean_text,
    cues,
    to_json,
    to_srt,
    to_tsv,
    to_vtt,
    write_transcripts,
)

LONG = (
    "Batch captioning turns a folder of media into labelled records. Every input gets exactly one "
    "record, errors included; a crash never costs finished work, and never produces duplicates. "
    "Rerunning the same command resumes where the last run stopped."
)
SEGMENTS = [
    {"start": 0.5, "end": 28.0, "text": LONG},
    {"start": 31.0, "end": 33.2, "text": "Short one."},
    {"start": 40.0, "end": 41.0, "text": ""},
]


def _check(subs: pysubs2.SSAFile, limits: CueLimits) -> None:
    for ev in subs:
        assert 0 < ev.end - ev.start <= limits.max_seconds * 1000 + 1
        lines = ev.plaintext.split("\n")
        assert 1 <= len(lines) <= limits.lines and all(0 < len(x) <= limits.line_width for x in lines), lines
    starts = [ev.start for ev in subs]
    assert starts == sorted(starts)


@pytest.mark.parametrize("limits", [CueLimits(), CueLimits(max_seconds=3.0, line_width=20, lines=1)])
def test_srt_and_vtt_parse_and_respect_the_cue_limits(limits: CueLimits) -> None:
    for text, fmt in ((to_srt(SEGMENTS, limits), "srt"), (to_vtt(SEGMENTS, limits), "vtt")):
        subs = pysubs2.SSAFile.from_string(text, format_=fmt)
        _check(subs, limits)
        words = " ".join(ev.plaintext.replace("\n", " ") for ev in subs).split()
        assert words == (LONG + " Short one.").split()  # every word once, in order
        assert subs[-1].start == 31_000 and subs[-1].end == 33_200  # a short segment is one cue, its times


def test_long_segment_splits_at_punctuation_with_time_by_character_share() -> None:
    cs = cues([{"start": 0.5, "end": 16.5, "text": LONG}])  # 14 characters a second
    assert len(cs) >= 3
    assert all(" ".join(c["lines"])[-1] in ".,;" for c in cs)  # cut after punctuation
    assert cs[0]["start"] == 0.5 and abs(cs[-1]["end"] - 16.5) < 1e-6
    share = [len(" ".join(c["lines"])) for c in cs]
    span = 16.0 / sum(share)
    for c, n in zip(cs, share, strict=True):
        assert abs((c["end"] - c["start"]) - n * span) < 1e-6


def test_cue_text_is_cleaned() -> None:
    dirty = "first\n\nline --> next\x00\x07 \u200b\ttabbed\r\nend ---> x"
    assert clean_text(dirty) == "first line -> next tabbed end -> x"
    srt = to_srt([{"start": 0.0, "end": 2.0, "text": dirty}])
    assert "\n\n" not in srt.strip() and srt.count("-->") == 1
    assert pysubs2.SSAFile.from_string(srt, format_="srt")[0].plaintext.replace("\n", " ") == clean_text(dirty)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 100, allow_nan=False), st.floats(0, 60, allow_nan=False), st.text(max_size=400)),
        max_size=5,
    )
)
def test_any_text_gives_files_that_parse_within_the_limits(rows: list[tuple[float, float, str]]) -> None:
    t, segs = 0.0, []
    for gap, dur, text in rows:
        segs.append({"start": t + gap, "end": t + gap + dur, "text": text})
        t += gap + dur
    limits = CueLimits()
    srt = to_srt(segs, limits)
    subs = pysubs2.SSAFile.from_string(srt, format_="srt") if srt.strip() else pysubs2.SSAFile()
    expected = [c for c in cues(segs, limits) if round(c["end"] * 1000) > round(c["start"] * 1000)]
    assert len(subs) >= len(expected)
    for ev in subs:
        assert ev.end - ev.start <= limits.max_seconds * 1000 + 1
        lines = ev.plaintext.split("\n")
        assert len(lines) <= limits.lines and all(len(x) <= limits.line_width for x in lines)
    pysubs2.SSAFile.from_string(to_vtt(segs, limits), format_="vtt")
    rows_back = list(csv.reader(io.StringIO(to_tsv(segs)), delimiter="\t", quoting=csv.QUOTE_NONE))
    assert rows_back[0] == ["start", "end", "text"] and all(len(r) == 3 for r in rows_back)
    json.loads(to_json(segs))


def test_tsv_and_json_follow_whisper(tmp_path: Path) -> None:
    write_transcripts(LocalFiles(tmp_path), "a/b.wav", SEGMENTS, ("tsv", "json", "srt"))
    tmp_path = tmp_path / "__transcripts__"
    tsv = (tmp_path / "a" / "b.wav.tsv").read_text().splitlines()
    assert tsv[0] == "start\tend\ttext" and tsv[2] == "31000\t33200\tShort one." and len(tsv) == 3
    doc = json.loads((tmp_path / "a" / "b.wav.json").read_text())
    assert doc["text"] == LONG + " Short one."
    assert [s["id"] for s in doc["segments"]] == [0, 1, 2] and doc["segments"][1]["start"] == 31.0
    assert (tmp_path / "a" / "b.wav.srt").read_text().startswith("1\n00:00:00,500 --> ")

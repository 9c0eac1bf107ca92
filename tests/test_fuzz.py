"""Property tests (hypothesis) over the parsers that read other people's files: manifest
readers, image/audio/video decoders, and the audio window splitter.

Each property runs briefly and deterministically by default (CI). For a longer, random
run: GEMMA4U_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py. Every crash found becomes a
regression test at the bottom of this file.
"""

from __future__ import annotations

import atexit
import io
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from gemma4u_batch.decode import DecodeOptions, decode_item
from gemma4u_batch.decode.audio import decode_audio, split_windows
from gemma4u_batch.decode.image import decode_image
from gemma4u_batch.decode.video import decode_video
from gemma4u_batch.errors import ItemError, UsageError
from gemma4u_batch.records import Modality, WorkItem
from gemma4u_batch.sources.manifest import ManifestSource

_LONG = int(os.environ.get("GEMMA4U_FUZZ_EXAMPLES", "0"))


def fuzz(default: int) -> settings:
    """`default` examples, derandomized, unless GEMMA4U_FUZZ_EXAMPLES asks for a long random run."""
    return settings(
        max_examples=_LONG or default,
        deadline=None,
        derandomize=not _LONG,
        database=None if not _LONG else settings.default.database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


pytestmark = pytest.mark.timeout(1800 if _LONG else 300)

# Small limits keep each example fast; the code paths are the same as at full size.
OPTS = DecodeOptions(max_image_pixels=4_000_000, max_audio_seconds=120.0, max_video_seconds=60.0)


# ---------------------------------------------------------------------------- seeds


def _img(fmt: str, mode: str = "RGB", size: tuple[int, int] = (40, 30), **kw) -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gif() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("P", (20, 10), i) for i in range(3)]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, transparency=0)
    return buf.getvalue()


def _jpeg_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _img("JPEG", exif=exif)


IMAGE_SEEDS = {
    "png": _img("PNG"),
    "png_rgba": _img("PNG", "RGBA"),
    "png_palette": _img("PNG", "P"),
    "jpeg": _img("JPEG"),
    "jpeg_progressive": _img("JPEG", progressive=True),
    "jpeg_exif": _jpeg_exif(),
    "gif": _gif(),
    "webp": _img("WEBP"),
    "bmp": _img("BMP"),
    "tiff": _img("TIFF", compression="tiff_lzw"),
}


def _audio(fmt: str, subtype: str | None, sr: int = 8000, seconds: float = 0.5, channels: int = 1) -> bytes:
    t = np.arange(int(sr * seconds)) / sr
    y = (0.4 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    if channels > 1:
        y = np.stack([y] * channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, y, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def _av_audio(fmt: str, codec: str, sr: int = 8000) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=sr)
        s.layout = "mono"
        t = np.arange(sr // 2) / sr
        samples = (0.4 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
        frame_size = s.codec_context.frame_size or 1024
        for i in range(0, len(samples), frame_size):
            chunk = samples[i : i + frame_size]
            if len(chunk) < frame_size:
                chunk = np.pad(chunk, (0, frame_size - len(chunk)))
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate = sr
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


AUDIO_SEEDS = {
    "wav16": _audio("WAV", "PCM_16"),
    "wav_float_stereo": _audio("WAV", "FLOAT", channels=2),
    "wav_u8": _audio("WAV", "PCM_U8"),
    "flac": _audio("FLAC", "PCM_16"),
    "flac_24_stereo": _audio("FLAC", "PCM_24", channels=2),
    "ogg_vorbis": _audio("OGG", "VORBIS"),
    "aiff": _audio("AIFF", "PCM_16"),
    "mp3": _av_audio("mp3", "libmp3lame"),
}


def _video() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=10, options={"preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for _ in range(10):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


VIDEO_SEED = _video()


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    """A seed file with a few bytes overwritten, a span cut out or duplicated, and/or truncated:
    the shapes of damage real files have (bit rot, partial writes, bad copies)."""
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["set", "set", "cut", "dup", "header"]))
        n = len(data)
        if n == 0:
            break
        pos = draw(st.integers(0, n - 1))
        if kind == "set":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "header":  # headers hold lengths and sizes: hit them more often
            pos = draw(st.integers(0, min(n, 64) - 1))
            data[pos : pos + 4] = draw(st.binary(min_size=4, max_size=4))
        elif kind == "cut":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:
            span = bytes(data[pos : pos + draw(st.integers(1, 64))])
            data[pos:pos] = span
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


# ------------------------------------------------------------------------- decoders


def _check_image(data: bytes) -> None:
    try:
        img, info = decode_image(data, OPTS)
    except ItemError as exc:
        assert exc.kind in {"empty", "not_an_image", "too_large", "corrupt"}, exc.kind
        return
    assert img.mode == "RGB"
    assert list(img.size) == info["size"] and img.width % 48 == 0 and img.height % 48 == 0


@fuzz(150)
@given(mutated(IMAGE_SEEDS))
def test_image_decoder_mutated_files(data: bytes) -> None:
    _check_image(data)


def magic_then_noise(seeds: dict[str, bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes, or a real file's first bytes (so the format is recognised) then noise."""
    heads = st.sampled_from(sorted({s[:n] for s in seeds.values() for n in (4, 16, 48)}))
    return st.binary(max_size=2048) | st.builds(bytes.__add__, heads, st.binary(max_size=2048))


@fuzz(100)
@given(magic_then_noise(IMAGE_SEEDS))
def test_image_decoder_random_bytes(data: bytes) -> None:
    _check_image(data)


def _check_audio(data: bytes) -> None:
    try:
        y, info = decode_audio(data, OPTS)
    except ItemError as exc:
        assert exc.kind in {"empty", "not_audio", "too_long", "corrupt"}, exc.kind
        return
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) > 0
    assert np.isfinite(y).all() and float(np.abs(y).max()) <= 1.0
    assert len(y) <= OPTS.max_audio_seconds * OPTS.sample_rate + 4096
    assert info["num_samples"] == len(y)


@fuzz(150)
@given(mutated(AUDIO_SEEDS))
def test_audio_decoder_mutated_files(data: bytes) -> None:
    _check_audio(data)


@fuzz(100)
@given(magic_then_noise(AUDIO_SEEDS))
def test_audio_decoder_random_bytes(data: bytes) -> None:
    _check_audio(data)


@fuzz(40)
@given(mutated({"mp4": VIDEO_SEED}))
def test_video_decoder_mutated_files(data: bytes) -> None:
    try:
        video, _, info = decode_video(data, OPTS)
    except ItemError as exc:
        assert exc.kind in {"empty", "not_video", "no_frames", "too_long", "too_large", "corrupt"}, exc.kind
        return
    assert 1 <= len(video.frames) <= OPTS.max_video_frames
    assert len(video.frames) == len(video.timestamps) == len(info["indices"])
    assert all(f.mode == "RGB" for f in video.frames)


@fuzz(60)
@given(st.sampled_from(list(Modality)), mutated({**IMAGE_SEEDS, **AUDIO_SEEDS}))
def test_decode_item_never_raises(modality: Modality, data: bytes) -> None:
    d = decode_item(WorkItem(id="x", source="x", modality=modality, data=data), OPTS)
    assert (d.error is None) == (d.error_kind is None)
    assert d.error_kind != "decode_error", d.error  # an unexpected exception is a bug to fix


# ------------------------------------------------------------------------ manifests

_KEYS = ["path", "file", "image", "audio", "video", "id", "prompt", "task", "modality", "caption", "n", ""]
_PATHS = [
    "a.png",
    "sub/b.wav",
    "c.mp4",
    "../out.png",
    "/etc/passwd",
    "x.xyz",
    "",
    " ",
    "a\x00.png",
    "noext",
    "link.png",
]
_json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
_json_value = st.recursive(
    _json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=10
)
_row = st.dictionaries(
    st.sampled_from(_KEYS) | st.text(max_size=5),
    st.sampled_from(_PATHS) | st.sampled_from(["image", "audio", "video", "IMAGE", "hologram"]) | _json_value,
    max_size=6,
)
_jsonl_line = _row.map(json.dumps) | st.text(max_size=40) | st.just("") | st.just('{"path": "a.png", "id": "a"}')
_csv_cell = st.sampled_from(_PATHS) | st.text(max_size=12) | st.just('"q,uoted"') | st.just('"open')
_csv_line = st.lists(_csv_cell, min_size=0, max_size=5).map(",".join)
_header = st.lists(st.sampled_from(_KEYS), min_size=1, max_size=5, unique=True).map(",".join)

_DIR = Path(tempfile.mkdtemp(prefix="gemma4u-fuzz-"))
atexit.register(shutil.rmtree, _DIR, True)
(_DIR / "a.png").write_bytes(b"x")
(_DIR / "sub").mkdir()
(_DIR / "sub" / "b.wav").write_bytes(b"x")
(_DIR / "link.png").symlink_to("/etc/hostname")


def _check_manifest(name: str, raw: bytes) -> None:
    path = _DIR / name
    path.write_bytes(raw)
    try:
        source = ManifestSource(path)
    except UsageError as exc:
        assert "\n" not in str(exc)
        return
    ids = []
    for item in source:
        assert isinstance(item, WorkItem)
        ids.append(item.id)
        if item.error is None:
            assert item.path is not None and item.modality is not None
            real = os.path.realpath(item.path)
            assert os.path.commonpath([real, os.path.realpath(_DIR)]) == os.path.realpath(_DIR), real
            json.dumps(item.fields)  # the writers must be able to serialise the fields
        else:
            assert "\n" not in item.error.split(": ", 1)[0]
    assert len(ids) == len(set(ids)), ids


@fuzz(150)
@given(st.lists(_jsonl_line, max_size=12), st.sampled_from(["\n", "\r\n"]))
@example(['{"path": "a.png", "id": ' + "9" * 5000 + "}"], "\n")
@example(['{"path": "a.png", "x": ' + "[" * 200 + "]" * 200 + "}"], "\n")
def test_jsonl_manifest_structured(lines: list[str], eol: str) -> None:
    _check_manifest("m.jsonl", eol.join(lines).encode("utf-8", "surrogatepass"))


@fuzz(100)
@given(st.binary(max_size=512))
def test_jsonl_manifest_random_bytes(raw: bytes) -> None:
    _check_manifest("r.jsonl", raw)


@fuzz(150)
@given(_header, st.lists(_csv_line, max_size=10), st.sampled_from(["csv", "tsv"]))
def test_csv_manifest_structured(header: str, lines: list[str], kind: str) -> None:
    text = "\n".join([header, *lines]) + "\n"
    if kind == "tsv":
        text = text.replace(",", "\t")
    _check_manifest(f"m.{kind}", text.encode("utf-8", "surrogatepass"))


@fuzz(100)
@given(st.binary(max_size=512), st.sampled_from(["csv", "tsv"]))
def test_csv_manifest_random_bytes(raw: bytes, kind: str) -> None:
    _check_manifest(f"r.{kind}", b"path,id\n" + raw)


# --------------------------------------------------------------------- split_windows


@st.composite
def signals(draw: st.DrawFn) -> tuple[np.ndarray, int, float, float, float]:
    sr = draw(st.sampled_from([50, 100, 160]))
    max_s = draw(st.floats(0.1, 40.0))
    min_s = draw(st.floats(0.0, 40.0))
    n = draw(st.integers(0, int(sr * max_s * 6) + 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(0, 0.3, n).astype(np.float32)
    for _ in range(draw(st.integers(0, 5))):  # silences of random length
        if n:
            a = draw(st.integers(0, n - 1))
            x[a : a + draw(st.integers(1, max(1, n // 4)))] = 0.0
    eff_min = min(int(min_s * sr), int(max_s * sr))
    overlap = draw(st.floats(0.0, 10.0)) if draw(st.booleans()) else 0.0
    if not 0 <= int(overlap * sr) < max(eff_min, 1):
        overlap = 0.0
    return x, sr, max_s, min_s, overlap


@fuzz(200)
@given(signals())
def test_split_windows_cover_everything_within_max(sig: tuple[np.ndarray, int, float, float, float]) -> None:
    x, sr, max_s, min_s, overlap_s = sig
    n, max_len, overlap = len(x), int(max_s * sr), int(overlap_s * sr)
    if max_len <= 0:
        with pytest.raises(ValueError):
            split_windows(x, sr, max_s, min_s, overlap_s)
        return
    windows = split_windows(x, sr, max_s, min_s, overlap_s)
    assert windows[0][0] == 0 and windows[-1][1] == n
    for (s0, e0), (s1, _) in itertools.pairwise(windows):
        assert s1 == e0 - overlap  # contiguous (or overlapping by exactly `overlap`)
        assert e0 > s0
    assert all(0 <= s < e <= n or (s == e == n == 0) for s, e in windows)
    assert all(e - s <= max_len for s, e in windows)
    assert len(windows) <= max(1, n) + 1


# ------------------------------------------------------------------------ regressions
# Crashes the properties above found, pinned so they stay fixed.


def _items(tmp_path: Path, name: str, raw: bytes) -> list[WorkItem]:
    path = tmp_path / name
    path.write_bytes(raw)
    (tmp_path / "a.png").write_bytes(b"x")
    return list(ManifestSource(path))


def test_regression_jsonl_huge_integer_is_a_bad_row(tmp_path: Path) -> None:
    """json.loads raises ValueError (not JSONDecodeError) past Python's 4300-digit limit:
    it escaped the reader and would have ended the run."""
    rows = _items(tmp_path, "m.jsonl", b'{"path": "a.png", "id": ' + b"9" * 5000 + b'}\n{"path": "a.png"}\n')
    assert [i.error is None for i in rows] == [False, True]
    assert rows[0].error.startswith("manifest line 1: invalid JSON: Exceeds the limit")


def test_regression_deeply_nested_field_is_a_bad_row(tmp_path: Path) -> None:
    """A field nested a few hundred levels deep overflowed the stack in json_safe
    (RecursionError out of the reader); the output writers recurse on fields too."""
    deep = b"[" * 900 + b"]" * 900
    rows = _items(tmp_path, "m.jsonl", b'{"path": "a.png", "id": "d", "x": ' + deep + b'}\n{"path": "a.png"}\n')
    assert rows[0].id == "d" and "nested deeper than 64 levels" in rows[0].error
    assert rows[1].error is None


def test_regression_csv_bad_utf8_after_header_is_one_bad_row(tmp_path: Path) -> None:
    """Found by test_csv_manifest_random_bytes: a non-UTF-8 byte after the header raised
    UsageError mid-iteration, ending a run that had already done work."""
    rows = _items(tmp_path, "m.csv", b"path,id\na.png,1\n\xc2,2\na.png,3\n")
    assert [(i.id, i.error) for i in rows] == [
        ("1", None),
        ("m.csv:line3", "manifest line 3: not valid UTF-8"),
        ("3", None),
    ]


def test_regression_line_without_newline_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest line is read whole: one without a newline could fill memory."""
    import gemma4u_batch.sources.manifest as manifest_mod

    monkeypatch.setattr(manifest_mod, "MAX_LINE_BYTES", 100)
    long = b"z" * 1000
    rows = _items(tmp_path, "m.jsonl", b'{"path": "a.png"}\n{"path": "' + long + b'"}\n{"path": "a.png", "id": 3}\n')
    assert [i.error for i in rows][1] == "manifest line 2: line is longer than 100 bytes"
    assert rows[2].id == "3" and rows[2].error is None
    rows = _items(tmp_path, "m.csv", b"path,id\na.png,1\n" + long + b",2\na.png,3\n")
    assert [(i.id, i.error) for i in rows] == [
        ("1", None),
        ("m.csv:line3", "manifest line 3: line is longer than 100 bytes"),
        ("3", None),
    ]


def test_regression_csv_header_with_quoted_newline_gives_one_line_usage_error(tmp_path: Path) -> None:
    """Found by test_csv_manifest_structured: a quoted header cell holding a newline made
    the 'no path column' UsageError span two lines (the CLI prints exactly one)."""
    path = tmp_path / "m.csv"
    path.write_text('"open\na.png"\n')
    with pytest.raises(UsageError) as e:
        ManifestSource(path)
    assert "\n" not in str(e.value) and "'open\\na.png'" in str(e.value)
    path.write_text(",".join(f"c{i}" for i in range(500)) + "\n")
    with pytest.raises(UsageError) as e:
        ManifestSource(path)
    assert "(500 columns)" in str(e.value) and len(str(e.value)) < 600

"""Audio decoding: real files in every common format, damaged/lying inputs, limits, and the
padding/windowing helpers."""

from __future__ import annotations

import dataclasses
import itertools
import struct
import tracemalloc

import av
import numpy as np
import pytest
import soundfile as sf

from gemma4u_batch.decode.audio import (
    decode_audio,
    decode_audio_track,
    num_audio_tokens,
    pad_to_token_multiple,
    split_windows,
)
from gemma4u_batch.decode.options import DecodeOptions
from gemma4u_batch.errors import ItemError

OPTS = DecodeOptions()


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.argmax(spec)) * sr / len(y)


def _rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


def _write_sf(path, frames: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    sf.write(str(path), frames, sr, format=fmt, subtype=subtype)
    return path.read_bytes()


def _encode_av(path, container_fmt: str, codec: str, planar: np.ndarray, sr: int, options=None) -> bytes:
    """Encode (channels, n) float audio with PyAV into a real compressed file."""
    layout = "stereo" if planar.shape[0] == 2 else "mono"
    with av.open(str(path), "w", format=container_fmt, options=options or {}) as c:
        s = c.add_stream(codec, rate=sr)
        s.layout = layout
        for i in range(0, planar.shape[1], 1000):
            chunk = np.ascontiguousarray(planar[:, i : i + 1000], dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = sr
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path.read_bytes()


def _kind(data: bytes, opts: DecodeOptions = OPTS) -> str:
    with pytest.raises(ItemError) as err:
        decode_audio(data, opts)
    return err.value.kind


# --- lossless / libsndfile formats ---------------------------------------------------------


def test_wav_16bit_stereo_44k_becomes_mono_16k(tmp_path):
    x = _sine(440, 44100, 2.0)
    data = _write_sf(tmp_path / "a.wav", np.stack([x, x], axis=1), 44100, "WAV", "PCM_16")
    y, info = decode_audio(data, OPTS)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 32000) <= 1
    assert abs(_peak_hz(y, 16000) - 440) < 1.0
    assert abs(_rms(y) - 0.5 / np.sqrt(2)) < 0.01
    assert float(np.max(np.abs(y))) <= 1.0
    assert info["format"] == "wav"
    assert info["source_sample_rate"] == 44100 and info["source_channels"] == 2
    assert info["duration"] == pytest.approx(2.0) and info["num_samples"] == len(y)


def test_mixdown_is_mean_of_channels(tmp_path):
    x = _sine(1000, 16000, 1.0)
    half = decode_audio(_write_sf(tmp_path / "l.wav", np.stack([x, 0 * x], 1), 16000, "WAV", "FLOAT"), OPTS)[0]
    assert _rms(half) == pytest.approx(_rms(x) / 2, rel=1e-3)
    cancel = decode_audio(_write_sf(tmp_path / "c.wav", np.stack([x, -x], 1), 16000, "WAV", "FLOAT"), OPTS)[0]
    assert float(np.max(np.abs(cancel))) < 1e-6


def test_16k_mono_is_passed_through_unresampled(tmp_path):
    x = _sine(300, 16000, 1.0)
    y, _ = decode_audio(_write_sf(tmp_path / "m.wav", x, 16000, "WAV", "FLOAT"), OPTS)
    np.testing.assert_array_equal(y, x)


def test_float_wav_over_full_scale_is_clipped(tmp_path):
    x = _sine(440, 16000, 0.5, amp=1.5)
    y, _ = decode_audio(_write_sf(tmp_path / "loud.wav", x, 16000, "WAV", "FLOAT"), OPTS)
    assert float(np.max(y)) == pytest.approx(1.0) and float(np.min(y)) == pytest.approx(-1.0)


def test_flac_24bit_48k(tmp_path):
    x = _sine(440, 48000, 2.0)
    y, info = decode_audio(_write_sf(tmp_path / "a.flac", np.stack([x, x], 1), 48000, "FLAC", "PCM_24"), OPTS)
    assert info["format"] == "flac" and info["source_sample_rate"] == 48000
    assert abs(len(y) - 32000) <= 1
    assert abs(_peak_hz(y, 16000) - 440) < 1.0


@pytest.mark.skipif("VORBIS" not in sf.available_subtypes("OGG"), reason="libsndfile without Vorbis")
def test_ogg_vorbis(tmp_path):
    x = _sine(440, 22050, 2.0)
    y, info = decode_audio(_write_sf(tmp_path / "a.ogg", np.stack([x, x], 1), 22050, "OGG", "VORBIS"), OPTS)
    assert info["format"] == "ogg" and info["codec"] == "vorbis"
    assert abs(len(y) - 32000) <= 1
    assert abs(_peak_hz(y, 16000) - 440) < 1.0


# --- compressed formats through PyAV --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "container", "codec", "sr", "fmt"),
    [
        ("a.mp3", "mp3", "libmp3lame", 44100, "mp3"),
        ("a.m4a", "ipod", "aac", 44100, "mov"),
        ("a.opus", "ogg", "libopus", 48000, "ogg"),
        ("a.aac", "adts", "aac", 22050, "aac"),
    ],
)
def test_compressed_formats_via_pyav(tmp_path, name, container, codec, sr, fmt):
    x = _sine(440, sr, 2.0)
    data = _encode_av(tmp_path / name, container, codec, np.stack([x, x]), sr)
    y, info = decode_audio(data, OPTS)
    assert info["format"] == fmt
    assert info["source_sample_rate"] == sr and info["source_channels"] == 2
    # Lossy codecs add encoder delay/padding: tens of ms at most.
    assert abs(len(y) - 32000) < 0.1 * 16000
    assert abs(_peak_hz(y, 16000) - 440) < 2.0
    assert abs(_rms(y[4000:-4000]) - 0.5 / np.sqrt(2)) < 0.03


def test_audio_track_of_a_video_container(tmp_path):
    x = _sine(440, 44100, 1.0)
    data = _encode_av(tmp_path / "a.mkv", "matroska", "aac", np.stack([x, x]), 44100)
    y, info = decode_audio(data, OPTS)
    assert info["format"] == "matroska" and info["codec"] == "aac"
    assert abs(_peak_hz(y, 16000) - 440) < 2.0


def test_decode_audio_track_keeps_only_the_first_seconds(tmp_path):
    x = _sine(440, 44100, 3.0)
    data = _encode_av(tmp_path / "a.m4a", "ipod", "aac", np.stack([x, x]), 44100)
    y, info = decode_audio_track(data, OPTS, max_seconds=1.0)
    assert len(y) == 16000
    assert info["truncated"] is True and info["duration"] == pytest.approx(1.0)


# --- damaged, wrong and empty inputs ---------------------------------------------------------


def test_zero_bytes_is_empty():
    assert _kind(b"") == "empty"


def test_text_with_audio_extension_is_not_audio(tmp_path):
    p = tmp_path / "notes.mp3"
    p.write_text("these are meeting notes, not an mp3\n" * 50)
    with pytest.raises(ItemError) as err:
        decode_audio(p.read_bytes(), OPTS)
    assert err.value.kind == "not_audio" and "not a recognised audio format" in err.value.message


def test_video_without_audio_stream_is_not_audio(tmp_path):
    with av.open(str(tmp_path / "v.mp4"), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            f = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    with pytest.raises(ItemError) as err:
        decode_audio((tmp_path / "v.mp4").read_bytes(), OPTS)
    assert err.value.kind == "not_audio" and err.value.message == "no audio stream found"


def test_wav_with_no_samples_is_empty(tmp_path):
    assert _kind(_write_sf(tmp_path / "e.wav", np.zeros((0, 1), np.float32), 16000, "WAV", "PCM_16")) == "empty"


def test_truncated_files_are_corrupt(tmp_path):
    x = _sine(440, 44100, 2.0)
    st = np.stack([x, x], 1)
    wav = _write_sf(tmp_path / "a.wav", st, 44100, "WAV", "PCM_16")
    flac = _write_sf(tmp_path / "a.flac", st, 44100, "FLAC")
    m4a = _encode_av(tmp_path / "a.m4a", "ipod", "aac", st.T, 44100)  # moov atom at the end
    assert _kind(wav[: len(wav) // 2]) == "corrupt"
    assert _kind(wav[:44]) == "corrupt"
    assert _kind(flac[: len(flac) // 2]) == "corrupt"
    assert _kind(m4a[: len(m4a) // 2]) == "corrupt"


def _wav_header(data_size: int, sr: int = 44100, channels: int = 2, bits: int = 16) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, sr, sr * block, block, bits)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + (b"data" + struct.pack("<I", data_size))
    )


@pytest.mark.parametrize(("data_size", "kind"), [(0xFFFFFF00, "too_long"), (0x10000000, "corrupt")])
def test_wav_header_claiming_hours_is_refused_without_allocating(data_size, kind):
    data = _wav_header(data_size) + b"\x01\x02" * 64
    tracemalloc.start()
    try:
        with pytest.raises(ItemError) as err:
            decode_audio(data, OPTS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.kind == kind
    assert peak < 4 * 1024 * 1024


def test_streaming_wav_placeholder_size_still_decodes(tmp_path):
    wav = bytearray(_write_sf(tmp_path / "s.wav", _sine(440, 16000, 1.0), 16000, "WAV", "PCM_16"))
    assert wav[36:40] == b"data"
    wav[40:44] = b"\xff\xff\xff\xff"
    y, _ = decode_audio(bytes(wav), OPTS)
    assert len(y) == 16000


# --- limits -----------------------------------------------------------------------------------


def test_max_audio_seconds_from_header(tmp_path):
    data = _write_sf(tmp_path / "a.wav", _sine(440, 16000, 2.0), 16000, "WAV", "PCM_16")
    with pytest.raises(ItemError) as err:
        decode_audio(data, dataclasses.replace(OPTS, max_audio_seconds=1.5))
    assert err.value.kind == "too_long"
    assert err.value.message == "audio is 2.0 s long, over the max_audio_seconds limit of 1.5 s"
    assert len(decode_audio(data, dataclasses.replace(OPTS, max_audio_seconds=2.0))[0]) == 32000


def test_max_audio_seconds_for_compressed_audio(tmp_path):
    x = _sine(440, 44100, 2.0)
    data = _encode_av(tmp_path / "a.mp3", "mp3", "libmp3lame", np.stack([x, x]), 44100)
    assert _kind(data, dataclasses.replace(OPTS, max_audio_seconds=1.0)) == "too_long"


def test_max_audio_seconds_enforced_while_decoding_when_header_has_no_length(tmp_path):
    flac = bytearray(_write_sf(tmp_path / "a.flac", _sine(440, 44100, 2.0), 44100, "FLAC"))
    # Zero STREAMINFO's 36-bit total-samples field: "length unknown".
    flac[21] &= 0xF0
    flac[22:26] = b"\0\0\0\0"
    y, _ = decode_audio(bytes(flac), OPTS)
    assert abs(len(y) - 32000) <= 1
    with pytest.raises(ItemError) as err:
        decode_audio(bytes(flac), dataclasses.replace(OPTS, max_audio_seconds=1.0))
    assert err.value.kind == "too_long" and "max_audio_seconds" in err.value.message


# --- helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "padded"), [(16000, 16000), (16001, 16640), (16161, 16640), (480000, 480000)])
def test_pad_to_token_multiple(n, padded):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    y = pad_to_token_multiple(x)
    assert len(y) == padded and y.dtype == np.float32
    np.testing.assert_array_equal(y[:n], x)
    assert not np.any(y[n:])
    assert num_audio_tokens(n) == padded // 640


def test_pad_and_count_empty():
    assert len(pad_to_token_multiple(np.zeros(0, np.float32))) == 0
    assert num_audio_tokens(0) == 0 and num_audio_tokens(1) == 1 and num_audio_tokens(640) == 1


def _speech_with_gaps(sr: int, seconds: float, gaps: list[tuple[float, float]]) -> np.ndarray:
    x = 0.3 * np.random.default_rng(0).standard_normal(int(seconds * sr)).astype(np.float32)
    for a, b in gaps:
        x[int(a * sr) : int(b * sr)] = 0.0
    return x


def test_split_windows_cuts_in_silent_gaps():
    sr = 16000
    gaps = [(23.0, 24.0), (47.5, 48.5), (71.0, 72.0)]
    x = _speech_with_gaps(sr, 95.0, gaps)
    w = split_windows(x, sr)
    assert len(w) >= 4
    assert w[0][0] == 0 and w[-1][1] == len(x)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(w))
    assert all(0 < e - s <= 30 * sr for s, e in w)
    for (_, cut), (a, b) in zip(w[:-1], gaps, strict=True):
        assert a * sr < cut < b * sr
    assert split_windows(x, sr) == w


def test_split_windows_without_gaps_and_short_signals():
    sr = 16000
    x = _speech_with_gaps(sr, 95.0, [])
    w = split_windows(x, sr)
    assert w[0][0] == 0 and w[-1][1] == len(x)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(w))
    assert all(20 * sr <= e - s <= 30 * sr for s, e in w[:-1]) and w[-1][1] - w[-1][0] <= 30 * sr
    assert split_windows(x[: 30 * sr], sr) == [(0, 30 * sr)]
    assert split_windows(x[:100], sr) == [(0, 100)]


def test_split_windows_with_overlap():
    sr = 1000
    x = _speech_with_gaps(sr, 95.0, [])
    w = split_windows(x, sr, overlap_seconds=2.0)
    assert w[0][0] == 0 and w[-1][1] == len(x)
    assert all(c == b - 2 * sr for (_, b), (c, _) in itertools.pairwise(w))
    assert all(e - s <= 30 * sr for s, e in w)
    with pytest.raises(ValueError):
        split_windows(x, sr, overlap_seconds=25.0)

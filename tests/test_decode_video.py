"""Video decoding: real files in the common containers, exact frame sampling, rotation,
soundtrack, limits and broken inputs."""

from __future__ import annotations

import dataclasses
import itertools

import av
import numpy as np
import pytest
from PIL import Image

from gemma4u_batch.decode.options import DecodeOptions
from gemma4u_batch.decode.video import apply_rotation, decode_video, sample_indices
from gemma4u_batch.errors import ItemError

from .helpers import VIDEO_FPS, VIDEO_FRAMES, VIDEO_SIZE, gray_level, make_video

OPTS = DecodeOptions()
(W, H), N, FPS = VIDEO_SIZE, VIDEO_FRAMES, VIDEO_FPS
# 96x64 at 70 tokens per frame: transformers' formula gives 480x288 (60 tokens).
TARGET = (480, 288)


def _kind(data: bytes, opts: DecodeOptions = OPTS) -> ItemError:
    with pytest.raises(ItemError) as err:
        decode_video(data, opts)
    return err.value


CONTAINERS = [
    ("a.mp4", "mp4", "h264", "mov"),
    ("b.mp4", "mp4", "mpeg4", "mov"),
    ("a.webm", "webm", "libvpx", "matroska"),
    ("b.webm", "webm", "libvpx-vp9", "matroska"),
    ("a.mkv", "matroska", "h264", "matroska"),
    ("a.avi", "avi", "mpeg4", "avi"),
    ("a.mov", "mov", "h264", "mov"),
]


@pytest.mark.parametrize(("name", "fmt", "codec", "demuxer"), CONTAINERS)
def test_containers_sample_the_right_frames(tmp_path, name, fmt, codec, demuxer):
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not in this PyAV build")
    video, audio, info = decode_video(make_video(tmp_path / name, fmt, codec), OPTS)
    want = [int(i) for i in np.arange(8) * N // 8]
    assert want == [0, 3, 7, 11, 15, 18, 22, 26]
    assert video.indices == want and info["indices"] == want
    assert video.total_frames == N and video.fps == pytest.approx(FPS)
    assert video.duration == pytest.approx(N / FPS)
    assert video.timestamps == pytest.approx([i / FPS for i in want], abs=1e-6)
    assert all(b > a for a, b in itertools.pairwise(video.timestamps))
    assert audio is None
    assert info["format"] == demuxer and info["source_size"] == [W, H] and info["size"] == list(TARGET)
    assert info["rotation"] == 0
    for i, img in zip(want, video.frames, strict=True):
        assert img.mode == "RGB" and img.size == TARGET
        level = float(np.asarray(img, dtype=np.float64).mean())
        assert abs(level - gray_level(i)) < 3.0, (i, level)


def test_sample_indices_formula():
    assert sample_indices(100, 4.0, OPTS) == [0, 12, 25, 37, 50, 62, 75, 87]
    assert sample_indices(5, 0.2, OPTS) == [0, 1, 2, 3, 4]
    assert sample_indices(1000, 40.0, dataclasses.replace(OPTS, video_frames=100)) == [
        i * 1000 // 32 for i in range(32)
    ]
    assert sample_indices(250, 10.0, dataclasses.replace(OPTS, video_fps=1.0)) == [i * 25 for i in range(10)]
    assert sample_indices(250, 0.01, dataclasses.replace(OPTS, video_fps=1.0)) == [0]
    assert sample_indices(0, 0.0, OPTS) == []


def test_video_fps_option(tmp_path):
    data = make_video(tmp_path / "a.mp4", "mp4", "h264")
    video, _, _ = decode_video(data, dataclasses.replace(OPTS, video_fps=5.0))
    assert video.indices == [0, 5, 10, 15, 20, 25]  # 1.2 s * 5 fps = 6 frames
    for i, img in zip(video.indices, video.frames, strict=True):
        assert abs(float(np.asarray(img, dtype=np.float64).mean()) - gray_level(i)) < 3.0


def test_short_video_gives_every_frame(tmp_path):
    video, _, _ = decode_video(make_video(tmp_path / "a.webm", "webm", "libvpx", n=5), OPTS)
    assert video.indices == [0, 1, 2, 3, 4] and video.total_frames == 5 and len(video.frames) == 5


def test_max_video_frames_caps_the_count(tmp_path):
    data = make_video(tmp_path / "a.mkv", "matroska", "h264")
    video, _, _ = decode_video(data, dataclasses.replace(OPTS, video_frames=100, max_video_frames=12))
    assert video.indices == [int(i) for i in np.arange(12) * N // 12]
    assert len(video.frames) == 12


def test_rotation_metadata_makes_frames_upright(tmp_path):
    # A phone's portrait clip: stored landscape, display matrix says turn 90° clockwise
    # (PyAV reads it back as frame.rotation == -90, counter-clockwise).
    data = make_video(tmp_path / "r.mp4", "mp4", "h264", rotation=-90, marker=True)
    video, _, info = decode_video(data, OPTS)
    assert info["rotation"] == 90 and info["source_size"] == [W, H]
    img = video.frames[0]
    assert img.size == (TARGET[1], TARGET[0])  # portrait now
    arr = np.asarray(img)
    # Turning clockwise carries the top-left marker to the top-right corner.
    assert tuple(arr[5, -5]) > (200, 0, 0) and arr[5, -5, 1] < 60
    assert arr[5, 5, 0] < 100 and arr[-5, -5, 0] < 100


def test_rotation_180_in_matroska(tmp_path):
    data = make_video(tmp_path / "r.mkv", "matroska", "h264", rotation=180, marker=True)
    video, _, info = decode_video(data, OPTS)
    assert info["rotation"] == 180
    arr = np.asarray(video.frames[0])
    assert arr[-5, -5, 0] > 200 and arr[-5, -5, 1] < 60 and arr[5, 5, 0] < 100


def test_apply_rotation_is_clockwise():
    img = Image.new("RGB", (4, 2))
    img.putpixel((0, 0), (255, 0, 0))
    cw90 = apply_rotation(img, 90)
    assert cw90.size == (2, 4) and cw90.getpixel((1, 0)) == (255, 0, 0)
    assert apply_rotation(img, 180).getpixel((3, 1)) == (255, 0, 0)
    cw270 = apply_rotation(img, 270)
    assert cw270.size == (2, 4) and cw270.getpixel((0, 3)) == (255, 0, 0)
    assert apply_rotation(img, 0) is img


def test_with_audio_returns_16k_mono_soundtrack(tmp_path):
    data = make_video(tmp_path / "av.mp4", "mp4", "h264", n=50, audio="aac")
    video, audio, info = decode_video(data, dataclasses.replace(OPTS, with_audio=True))
    assert len(video.frames) == 8
    assert audio is not None and audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 2.0 * 16000) < 0.1 * 16000
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    assert abs(float(np.argmax(spec)) * 16000 / len(audio) - 440) < 2.0
    assert info["audio"]["source_sample_rate"] == 44100 and info["audio"]["source_channels"] == 2
    _, no_audio, _ = decode_video(data, OPTS)
    assert no_audio is None


def test_with_audio_on_a_silent_video_is_none(tmp_path):
    data = make_video(tmp_path / "v.mp4", "mp4", "h264")
    _, audio, info = decode_video(data, dataclasses.replace(OPTS, with_audio=True))
    assert audio is None and "audio_error" not in info


def test_max_video_seconds(tmp_path):
    data = make_video(tmp_path / "a.mp4", "mp4", "h264")
    err = _kind(data, dataclasses.replace(OPTS, max_video_seconds=1.0))
    assert err.kind == "too_long" and "max_video_seconds" in err.message


def test_empty_and_not_a_video(tmp_path):
    assert _kind(b"").kind == "empty"
    err = _kind(b"just some text pretending to be a video\n" * 40)
    assert err.kind == "not_video"


def test_audio_only_file_has_no_frames(tmp_path):
    path = tmp_path / "a.m4a"
    with av.open(str(path), "w", format="ipod") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        fr.sample_rate, fr.pts = 16000, 0
        for p in s.encode(fr):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    err = _kind(path.read_bytes())
    assert err.kind == "no_frames"
    assert err.message.startswith("video yielded no decodable frames") and "no video stream" in err.message


def test_truncated_mp4_moov_at_end(tmp_path):
    data = make_video(tmp_path / "a.mp4", "mp4", "h264")
    err = _kind(data[: len(data) // 2])
    assert err.kind == "corrupt"


def test_truncated_faststart_mp4(tmp_path):
    data = make_video(tmp_path / "a.mp4", "mp4", "h264", n=60, noise=True, options={"movflags": "faststart"})
    assert 0 < data.find(b"moov") < data.find(b"mdat")
    err = _kind(data[: len(data) // 2])
    assert err.kind == "corrupt" and "truncated" in err.message


def test_truncated_webm_keeps_what_is_there(tmp_path):
    data = make_video(tmp_path / "a.webm", "webm", "libvpx", n=60)
    try:
        video, _, _ = decode_video(data[: int(len(data) * 0.6)], OPTS)
    except ItemError as exc:
        assert exc.kind in ("corrupt", "no_frames")
    else:
        assert 0 < video.total_frames < 60
        assert video.indices == [int(i) for i in np.arange(8) * video.total_frames // 8]
        for i, img in zip(video.indices, video.frames, strict=True):
            assert abs(float(np.asarray(img, dtype=np.float64).mean()) - gray_level(i) % 256) < 3.0


def test_header_only_container_has_no_frames_or_is_corrupt(tmp_path):
    data = make_video(tmp_path / "a.webm", "webm", "libvpx")
    err = _kind(data[:200])
    assert err.kind in ("no_frames", "corrupt")

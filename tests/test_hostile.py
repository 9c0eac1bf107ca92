"""A folder and a manifest filled by someone else: each bad entry costs one error record
naming its cause, the job finishes quickly, and nothing outside the allowed roots is read.

Links that leave a folder's root (dev.wav -> /dev/zero, urandom.jpg -> /dev/urandom) are
deliberately skipped by FolderSource, so they have no record; a FIFO or a link to one
inside the root gets a `special_file` record. Reached through a manifest, the same link
is refused as outside the allowed roots.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from gemma4u_batch.decode import DecodeOptions, decode_item, read_input_bytes
from gemma4u_batch.decode.audio import decode_audio
from gemma4u_batch.decode.image import decode_image
from gemma4u_batch.decode.video import decode_video
from gemma4u_batch.errors import ItemError
from gemma4u_batch.records import Modality, WorkItem
from gemma4u_batch.sources import FolderSource
from gemma4u_batch.store.layout import OutLayout

from .helpers import fake_config, records_by_id, run_fake

pytestmark = pytest.mark.timeout(300)


# ------------------------------------------------------------------------ media makers


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(side: int = 30_000) -> bytes:
    """A valid 1-bit side×side all-black PNG: ~100 KB on disk, side² pixels decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def lying_wav(claimed_seconds: float = 37 * 3600.0) -> bytes:
    """16 kHz mono 16-bit WAV whose data chunk claims `claimed_seconds`; holds 1 s."""
    byte_rate = 32_000
    size = min(int(claimed_seconds * byte_rate), 0xFFFFFFF0)
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, 16_000, byte_rate, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", size + 36)
        + b"WAVE"
        + b"fmt "
        + fmt
        + b"data"
        + struct.pack("<I", size)
        + (b"\0" * byte_rate)
    )


def silent_flac(path: Path, hours: float = 10.0, sr: int = 8000) -> None:
    """A real `hours`-long silent FLAC (silence compresses: ~1 MB for 10 h, ~3 s to write)."""
    block = np.zeros(sr * 600, dtype=np.int16)
    blocks, rest = divmod(int(hours * 3600 * sr), len(block))
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(blocks):
            f.write(block)
        f.write(block[:rest])


def good_wav(seconds: float = 1.0, sr: int = 16_000) -> bytes:
    t = np.arange(int(sr * seconds)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def small_video(n: int = 50, w: int = 160, h: int = 120, fps: int = 25) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for _ in range(n):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def broken_video() -> bytes:
    """An MP4 whose middle third (the video stream's packets) is overwritten with junk."""
    data = bytearray(small_video())
    lo, hi = len(data) // 3, 2 * len(data) // 3
    data[lo:hi] = bytes((i * 7 + 13) & 255 for i in range(hi - lo))
    return bytes(data)


def _image_bytes(fmt: str, color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format=fmt)
    return buf.getvalue()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str | None, str]]]:
    """The hostile folder; returns (root, id -> (expected error_kind or None, needle in error))."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "in"
    root.mkdir()
    expected: dict[str, tuple[str | None, str]] = {}
    (root / "good.png").write_bytes(_image_bytes("PNG", (10, 120, 200)))
    (root / "good.jpg").write_bytes(_image_bytes("JPEG", (200, 120, 10)))
    (root / "good.wav").write_bytes(good_wav())
    expected.update({"good.png": (None, ""), "good.jpg": (None, ""), "good.wav": (None, "")})
    os.mkfifo(root / "x.wav")
    expected["x.wav"] = ("special_file", "FIFO")
    (root / "fifo_link.wav").symlink_to(root / "x.wav")  # a link inside the root to a FIFO
    expected["fifo_link.wav"] = ("special_file", "FIFO")
    (root / "dev.wav").symlink_to("/dev/zero")  # leaves the root: skipped, no record
    (root / "urandom.jpg").symlink_to("/dev/urandom")
    sock_path = root / "sock.wav"
    if len(str(sock_path)) < 100:  # AF_UNIX path limit
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(sock_path))
        expected["sock.wav"] = ("special_file", "socket")
    (root / "bomb.png").write_bytes(bomb_png())
    expected["bomb.png"] = ("too_large", "max_image_pixels")
    (root / "liar.wav").write_bytes(lying_wav())
    expected["liar.wav"] = ("too_long", "max_audio_seconds")
    silent_flac(root / "silent10h.flac")
    expected["silent10h.flac"] = ("too_long", "max_audio_seconds")
    (root / "broken.mp4").write_bytes(broken_video())
    expected["broken.mp4"] = ("corrupt", "video could not be decoded")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(_image_bytes("PNG", (1, 2, 3)))
    return root, expected


def _check(recs: dict[str, dict], expected: dict[str, tuple[str | None, str]]) -> None:
    assert sorted(recs) == sorted(expected)
    for rid, (kind, needle) in expected.items():
        rec = recs[rid]
        if kind is None:
            assert rec["error"] is None and rec["text"].startswith("fake "), (rid, rec["error"])
        else:
            assert rec["error_kind"] == kind, (rid, rec["error_kind"], rec["error"])
            assert needle in rec["error"], (rid, rec["error"])
            assert rec["text"] is None


# ------------------------------------------------------------------------------ tests


def test_hostile_folder_one_record_each_quickly(hostile, tmp_path: Path) -> None:
    root, expected = hostile
    ids = [i.id for i in FolderSource(root)]
    assert "dev.wav" not in ids and "urandom.jpg" not in ids  # links out of the root are skipped
    started = time.monotonic()
    summary = run_fake(root, tmp_path / "out", workers=2, decode_timeout=20.0)
    elapsed = time.monotonic() - started
    recs = records_by_id(tmp_path / "out")
    _check(recs, expected)
    assert summary.done == len(expected)
    assert summary.errors == sum(1 for k, _ in expected.values() if k)
    assert elapsed < 150, elapsed  # ~3 s on an idle 2-core machine
    limits = json.loads(OutLayout(tmp_path / "out").run_manifest.read_text())["config"]
    assert limits["max_image_pixels"] == 180_000_000 and limits["decode_timeout"] == 20.0


def test_hostile_manifest_stays_inside_allowed_roots(hostile, tmp_path: Path) -> None:
    root, _ = hostile
    mdir = tmp_path / "m"
    mdir.mkdir()
    rows = [
        ({"id": "png", "path": os.path.relpath(root / "good.png", mdir)}, (None, "")),  # relative to the manifest
        ({"id": "wav", "path": str(root / "good.wav")}, (None, "")),
        ({"id": "fifo", "path": str(root / "x.wav")}, ("special_file", "FIFO")),
        ({"id": "bomb", "path": str(root / "bomb.png")}, ("too_large", "max_image_pixels")),
        ({"id": "devlink", "path": str(root / "dev.wav")}, ("bad_input_row", "outside the allowed roots")),
        ({"id": "devzero", "path": "/dev/zero", "modality": "audio"}, ("bad_input_row", "outside the allowed roots")),
        ({"id": "passwd", "path": "/etc/passwd", "modality": "image"}, ("bad_input_row", "outside the allowed roots")),
        (
            {"id": "secret", "path": str(root.parent / "outside" / "secret.png")},
            ("bad_input_row", "outside the allowed roots"),
        ),
        (
            {"id": "dotdot", "path": str(root) + "/../outside/secret.png"},
            ("bad_input_row", "outside the allowed roots"),
        ),
    ]
    manifest = mdir / "list.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r, _ in rows))
    config = fake_config(manifest, tmp_path / "out", workers=2, decode_timeout=20.0, allow_roots=[root])
    started = time.monotonic()
    run_fake(config)
    assert time.monotonic() - started < 150
    _check(records_by_id(tmp_path / "out"), {r["id"]: exp for r, exp in rows})


def test_manifest_default_root_is_its_own_folder(hostile, tmp_path: Path) -> None:
    root, _ = hostile
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(json.dumps({"id": "elsewhere", "path": str(root / "good.png")}) + "\n")
    run_fake(manifest, tmp_path / "out")
    rec = records_by_id(tmp_path / "out")["elsewhere"]
    assert rec["error_kind"] == "bad_input_row" and "pass --allow-root" in rec["error"]


@pytest.mark.parametrize(("dev", "what"), [("/dev/zero", "character device"), ("/dev/urandom", "character device")])
def test_device_files_refused_without_reading(dev: str, what: str) -> None:
    d = decode_item(WorkItem(id="d", source=dev, modality=Modality.AUDIO, path=Path(dev)), DecodeOptions())
    assert d.error_kind == "special_file" and what in d.error
    assert d.decode_seconds < 1


def test_directory_and_missing_file(tmp_path: Path) -> None:
    d = decode_item(WorkItem(id="d", source="x", modality=Modality.IMAGE, path=tmp_path), DecodeOptions())
    assert d.error_kind == "special_file" and "directory" in d.error
    d = decode_item(WorkItem(id="m", source="x", modality=Modality.IMAGE, path=tmp_path / "no.png"), DecodeOptions())
    assert d.error_kind == "not_found"


def test_path_swapped_for_fifo_after_stat_does_not_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race: stat saw a regular file, open finds a FIFO. O_NONBLOCK + fstat refuse it."""
    import gemma4u_batch.decode as decode_mod

    fifo = tmp_path / "race.wav"
    os.mkfifo(fifo)
    regular = tmp_path / "regular.wav"
    regular.write_bytes(b"RIFF")
    real_stat = os.stat

    def fake_stat(path, *a, **kw):
        return real_stat(regular if str(path) == str(fifo) else path, *a, **kw)

    def unblock() -> None:  # if the read ever blocks again, fail instead of hanging the suite
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    monkeypatch.setattr(decode_mod.os, "stat", fake_stat)
    started = time.monotonic()
    timer = threading.Timer(5.0, unblock)
    timer.start()
    try:
        with pytest.raises(ItemError) as e:
            read_input_bytes(WorkItem(id="r", source="r", modality=Modality.AUDIO, path=fifo), DecodeOptions())
    finally:
        timer.cancel()
    assert e.value.kind == "special_file" and "FIFO" in e.value.message
    assert time.monotonic() - started < 2


def test_byte_limit_names_option_and_value(tmp_path: Path) -> None:
    f = tmp_path / "big.png"
    f.write_bytes(b"\0" * 1001)
    opts = DecodeOptions(max_input_bytes=1000)
    for item in (
        WorkItem(id="p", source="p", modality=Modality.IMAGE, path=f),
        WorkItem(id="d", source="d", modality=Modality.IMAGE, data=b"\0" * 1001),
    ):
        d = decode_item(item, opts)
        assert d.error_kind == "too_large" and "max_input_bytes limit of 1000" in d.error
    f.write_bytes(b"\0" * 1000)
    data = read_input_bytes(WorkItem(id="p", source="p", modality=Modality.IMAGE, path=f), opts)
    assert len(data) == 1000


def test_pixel_limit_names_option_and_value() -> None:
    png = bomb_png(2000)  # 4 Mpx
    # Just over the limit: our header check. Far over: Pillow's bomb check. Both name the limit.
    for limit in (3_000_000, 1_000_000):
        with pytest.raises(ItemError) as e:
            decode_image(png, DecodeOptions(max_image_pixels=limit))
        assert e.value.kind == "too_large" and f"max_image_pixels limit of {limit}" in e.value.message
    img, _ = decode_image(png, DecodeOptions(max_image_pixels=4_000_000))
    assert img.mode == "RGB"


def test_audio_duration_limit_names_option_and_value() -> None:
    with pytest.raises(ItemError) as e:
        decode_audio(good_wav(3.0), DecodeOptions(max_audio_seconds=1.5))
    assert e.value.kind == "too_long" and "max_audio_seconds limit of 1.5 s" in e.value.message


def test_silent_flac_refused_by_declared_length_fast(tmp_path: Path) -> None:
    path = tmp_path / "s.flac"
    silent_flac(path, hours=5.0, sr=4000)
    started = time.monotonic()
    with pytest.raises(ItemError) as e:
        decode_audio(path.read_bytes(), DecodeOptions())
    assert time.monotonic() - started < 1
    assert e.value.kind == "too_long" and "18000.0 s" in e.value.message and "max_audio_seconds" in e.value.message


def test_video_limits_name_option_and_value() -> None:
    data = small_video(n=50)  # 2 s at 25 fps
    with pytest.raises(ItemError) as e:
        decode_video(data, DecodeOptions(max_video_seconds=1.0))
    assert e.value.kind == "too_long" and "max_video_seconds limit of 1 s" in e.value.message
    with pytest.raises(ItemError) as e:
        decode_video(data, DecodeOptions(max_decoded_frames=10))
    assert e.value.kind == "too_large" and "max_decoded_frames limit of 10" in e.value.message
    with pytest.raises(ItemError) as e:
        decode_video(data, DecodeOptions(max_image_pixels=160 * 120 - 1))
    assert e.value.kind == "too_large" and f"max_image_pixels limit of {160 * 120 - 1}" in e.value.message
    video, _, _ = decode_video(data, DecodeOptions(max_decoded_frames=50))
    assert len(video.frames) == 8


def test_broken_video_is_corrupt() -> None:
    with pytest.raises(ItemError) as e:
        decode_video(broken_video(), DecodeOptions())
    assert e.value.kind == "corrupt"


def test_containers_cannot_open_other_files_or_sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FFmpeg's concat demuxer would read a file named inside the input (relative to the
    worker's cwd), and the sdp demuxer would listen on a UDP port until it timed out."""
    (tmp_path / "secret.mp4").write_bytes(small_video(n=10))
    monkeypatch.chdir(tmp_path)
    playlist = b"ffconcat version 1.0\nfile secret.mp4\n"
    sdp = (
        b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=video 5004 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    )
    for data in (playlist, sdp):
        started = time.monotonic()
        with pytest.raises(ItemError) as e:
            decode_video(data, DecodeOptions())
        assert e.value.kind in ("not_video", "corrupt")
        with pytest.raises(ItemError):
            decode_audio(data, DecodeOptions())
        assert time.monotonic() - started < 5

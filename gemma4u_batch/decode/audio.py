"""Audio decoding: any common audio file (or a video's audio track) to float32 mono 16 kHz,
the form the Gemma 4 Unified audio tower takes, plus the padding/windowing helpers the
request builder uses. Long inputs are decoded and resampled in a stream so a multi-hour
file never exists at its source rate in memory all at once."""

from __future__ import annotations

import io
import math
import os
import struct
from typing import BinaryIO, cast

import av
import numpy as np
import soundfile as sf
import soxr

from ..errors import ItemError
from .options import DecodeOptions
from .spill import SpillWriter, Waveform

__all__ = [
    "decode_audio",
    "decode_audio_track",
    "looks_like_media",
    "num_audio_tokens",
    "open_container",
    "pad_to_token_multiple",
    "split_windows",
]

# libsndfile's MP3 length is an estimate and its decoder is stricter than FFmpeg's:
# leave MP3 to PyAV like every other compressed format.
_SOUNDFILE_SKIP = {"MP3", "RAW"}
# libsndfile reports "unknown length" as a huge count.
_UNKNOWN_FRAMES = 2**62


# Demuxers such as concat and sdp open further inputs named inside the file (local paths,
# network sockets): an input could then read files outside the allowed roots or stall on
# a socket. The bytes we were given are the only input, so no protocol is allowed.
_AV_OPEN_OPTIONS = {"protocol_whitelist": "none"}


def open_container(data: bytes | BinaryIO) -> av.container.InputContainer:
    """PyAV container over in-memory bytes (or an open file) that cannot reach any other file or URL."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    return av.open(source, mode="r", metadata_errors="ignore", options=dict(_AV_OPEN_OPTIONS))


def looks_like_media(data: bytes) -> bool:
    """Whether the bytes start like a known audio/video container, so a failure to open
    them means a damaged file (`corrupt`) rather than the wrong kind of file."""
    head = data[:16]
    if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"FORM", b".snd", b"caff", b"wvpk", b"MAC "):
        return True
    if head[:3] in (b"ID3", b"FLV") or head[:5] == b"#!AMR" or head[:4] == b"\x1aE\xdf\xa3":
        return True
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return True
    if head[:8] == b"0&\xb2u\x8ef\xcf\x11" or head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return True
    if len(data) > 188 and data[0] == 0x47 and data[188] == 0x47:  # MPEG-TS
        return True
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0  # MPEG audio / ADTS sync


def _too_long(seconds: float, limit: float) -> ItemError:
    return ItemError("too_long", f"audio is {seconds:.1f} s long, over the max_audio_seconds limit of {limit:g} s")


class _Spill:
    """Where and past which length a decode writes its samples to a spill file (spill.py);
    remembers the file so a failed decode can remove it."""

    def __init__(self, folder: str, seconds: float) -> None:
        self.folder, self.seconds = folder, seconds
        self.writer: SpillWriter | None = None

    def open(self) -> SpillWriter:
        self.writer = SpillWriter(self.folder)
        return self.writer

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.discard()
            self.writer = None


class _MonoSink:
    """Takes mono float chunks at any source rate, resamples them with soxr (HQ, streamed:
    identical to one-shot `soxr.resample`) into one growing float32 buffer and enforces the
    length limit on what was actually decoded, since headers can lie."""

    def __init__(
        self,
        out_rate: int,
        limit_seconds: float,
        truncate: bool,
        expected_seconds: float = 0.0,
        spill: _Spill | None = None,
    ) -> None:
        self.out_rate = out_rate
        self.limit = limit_seconds
        self.truncate = truncate
        self._done_seconds = 0.0  # decoded at earlier sample rates (rate changes mid-stream)
        self._cur_samples = 0  # decoded at the current rate
        self.full = False
        self._rate: int | None = None
        self._stream: soxr.ResampleStream | None = None
        # With a spill folder, past `spill_seconds` of output the samples go to a file
        # instead (spill.py): the buffer never holds more than that.
        self._spill_plan = spill
        self._spill_at = int(spill.seconds * out_rate) if spill else 0
        self._writer: SpillWriter | None = None
        in_memory = min(limit_seconds, spill.seconds) if spill else limit_seconds
        # A header's length is only a hint (it can lie): start at most 10 min, then grow.
        cap_seconds = min(expected_seconds, in_memory, 600.0) if expected_seconds > 0 else 10.0
        self._buf = np.empty(int(cap_seconds * out_rate) + 4096, dtype=np.float32)
        self._n = 0
        # Once the first 10 min are real, grow straight to the declared length: one copy of
        # 10 min instead of doubling (whose last step held 1.5-2× the waveform), and no
        # trimming copy at the end. Pages a lying header reserves are never touched, so they
        # cost address space, not memory.
        self._declared = int(min(expected_seconds, in_memory) * out_rate) + 4096 if expected_seconds > 0 else 0
        self._max = self._spill_at + 4096 if spill else 0

    @property
    def source_seconds(self) -> float:
        return self._done_seconds + (self._cur_samples / self._rate if self._rate else 0.0)

    def _append(self, y: np.ndarray) -> None:
        if not len(y):
            return
        if self._writer is None and self._spill_plan is not None and self._n + len(y) > self._spill_at:
            self._writer = self._spill_plan.open()
            self._spill(self._buf[: self._n])
            self._buf, self._n = np.empty(0, dtype=np.float32), 0
        if self._writer is not None:
            self._spill(y)
            return
        need = self._n + len(y)
        if need > len(self._buf):
            size = self._declared if self._declared >= need else max(need, 2 * len(self._buf))
            size = max(min(size, self._max), need) if self._max else size  # spilling: never past its length
            grown = np.empty(size, dtype=np.float32)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : need] = y
        self._n = need

    def _flush(self) -> None:
        if self._stream is not None:
            self._append(self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        self._stream = None

    def add(self, mono: np.ndarray, rate: int) -> bool:
        """Add one chunk; False once the limit is reached in truncate mode (stop decoding)."""
        if rate <= 0:
            raise ItemError("corrupt", f"audio could not be decoded: invalid sample rate {rate}")
        if rate != self._rate:
            self._flush()
            self._done_seconds, self._cur_samples = self.source_seconds, 0
            self._rate = rate
            if rate != self.out_rate:
                self._stream = soxr.ResampleStream(rate, self.out_rate, 1, dtype="float32", quality="HQ")
        room = int(math.floor((self.limit - self.source_seconds) * rate + 1e-6))
        if len(mono) > room:
            if not self.truncate:
                raise ItemError(
                    "too_long",
                    f"audio runs past {self.limit:g} s (its header understated the length), "
                    f"over the max_audio_seconds limit of {self.limit:g} s",
                )
            mono = mono[: max(room, 0)]
            self.full = True
        self._cur_samples += len(mono)
        mono = np.nan_to_num(np.asarray(mono, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
        np.clip(mono, -1.0, 1.0, out=mono)
        if self._stream is None:
            self._append(mono)
        elif len(mono):
            self._append(self._stream.resample_chunk(mono, last=False))
        return not self.full

    def _spill(self, y: np.ndarray) -> None:
        assert self._writer is not None
        # Clipped as finish() clips the in-memory buffer; in place (y is this sink's own array).
        self._writer.write(np.clip(y, -1.0, 1.0, out=y if y.flags.writeable else None))

    def finish(self) -> Waveform:
        self._flush()
        if self._writer is not None:
            return self._writer.finish()
        out = self._buf[: self._n]
        if len(self._buf) > self._n + self._n // 4 + 65536:
            out = out.copy()  # don't keep a mostly empty buffer alive
        self._buf = np.empty(0, dtype=np.float32)
        np.clip(out, -1.0, 1.0, out=out)  # soxr can overshoot slightly near full scale
        return out


class _SeekSafeBytesIO(io.BytesIO):
    """libsndfile seeks before the start of some damaged files; BytesIO raises there, which
    soundfile's C callback can only print. Stay put instead: the read then fails cleanly."""

    def seek(self, offset: int, whence: int = 0) -> int:
        try:
            return super().seek(offset, whence)
        except ValueError:
            return self.tell()


class _SeekSafeFileIO(io.FileIO):
    """The same for an open file (long input, decoded without reading it into memory)."""

    def seek(self, offset: int, whence: int = 0) -> int:
        try:
            return super().seek(offset, whence)
        except (OSError, ValueError):
            return self.tell()


class AudioInput:
    """An audio file's bytes: in memory, or an open regular file that is read as it is
    decoded (decode_item passes a large file this way, so the worker never holds it whole)."""

    def __init__(self, data: bytes | BinaryIO) -> None:
        self._data = data if isinstance(data, bytes) else None
        self._fd = -1 if isinstance(data, bytes) else data.fileno()
        self.size = len(data) if isinstance(data, bytes) else os.fstat(self._fd).st_size

    def read_at(self, pos: int, n: int) -> bytes:
        if self._data is not None:
            return self._data[pos : pos + n]
        return os.pread(self._fd, n, pos)

    def open(self) -> BinaryIO:
        """A fresh seekable reader from the start (closing it leaves the file open)."""
        if self._data is not None:
            return _SeekSafeBytesIO(self._data)
        f = _SeekSafeFileIO(self._fd, "rb", closefd=False)
        f.seek(0)  # the fd's offset is shared: hashing left it at the end
        return cast(BinaryIO, f)


def _riff_truncation(src: AudioInput) -> tuple[float, float] | None:
    """(declared, present) seconds of a RIFF/WAVE `data` chunk whose size field claims more
    bytes than the file holds. libsndfile silently trusts the file length instead, which
    would turn a cut-off or lying WAV into a short "valid" one."""
    head = src.read_at(0, 12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate, block_align = 12, 0, 1
    while pos + 8 <= src.size:
        chunk = src.read_at(pos, 22)
        cid, size = chunk[:4], struct.unpack("<I", chunk[4:8])[0]
        body = pos + 8
        if cid == b"fmt " and size >= 16 and body + 16 <= src.size:
            byte_rate, block_align = struct.unpack("<IH", chunk[16:22])
        elif cid == b"data":
            present = src.size - body
            if size in (0, 0xFFFFFFFF) or byte_rate <= 0 or size <= present + max(block_align, 1):
                return None  # streaming placeholder, or complete
            return size / byte_rate, present / byte_rate
        pos = body + size + (size & 1)
    return None


def _mono_from_frame(frame: av.AudioFrame) -> np.ndarray:
    """One PyAV frame of any sample format to mono float32 (mean of channels)."""
    arr = frame.to_ndarray()
    channels = max(frame.layout.nb_channels, 1)
    if not frame.format.is_planar:
        arr = arr.reshape(-1, channels).T
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
    elif arr.dtype.kind == "u":
        arr = (arr.astype(np.float32) - 128.0) / 128.0
    else:
        arr = arr.astype(np.float32) / float(2 ** (arr.dtype.itemsize * 8 - 1))
    return arr.mean(axis=0, dtype=np.float32) if arr.shape[0] > 1 else arr[0]


def _decode_soundfile(src: AudioInput, opts: DecodeOptions, spill: _Spill | None) -> tuple[Waveform, dict] | None:
    """WAV/FLAC/OGG/AIFF... through libsndfile; None when it can't open the bytes."""
    limit = opts.max_audio_seconds
    trunc = _riff_truncation(src)
    if trunc is not None:
        declared, present = trunc
        if declared > limit:
            raise _too_long(declared, limit)
        raise ItemError(
            "corrupt",
            f"audio could not be decoded: truncated WAV (header declares {declared:.1f} s, file holds {present:.1f} s)",
        )
    try:
        f = sf.SoundFile(src.open())
    except Exception:
        return None
    with f:
        fmt, subtype = f.format, f.subtype
        if fmt in _SOUNDFILE_SKIP:
            return None
        sr, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
        if sr <= 0 or channels <= 0:
            raise ItemError("corrupt", f"audio could not be decoded: invalid header ({sr} Hz, {channels} channels)")
        if not 0 < frames < _UNKNOWN_FRAMES:
            # Unknown length (cut-off Ogg, FLAC without a sample count): libsndfile reads
            # nothing or fails to seek there, FFmpeg decodes what is present.
            return None
        if frames / sr > limit:
            raise _too_long(frames / sr, limit)
        sink = _MonoSink(opts.sample_rate, limit, truncate=False, expected_seconds=frames / sr, spill=spill)
        block = max(4096, 2**20 // channels)
        got = 0
        while True:
            try:
                x = f.read(block, dtype="float32", always_2d=True)
            except Exception as exc:
                raise ItemError("corrupt", f"audio could not be decoded: {exc}") from exc
            if not len(x):
                break
            got += len(x)
            sink.add(x.mean(axis=1, dtype=np.float32) if channels > 1 else x[:, 0], sr)
        if got < frames:
            raise ItemError(
                "corrupt", f"audio could not be decoded: truncated (header declares {frames} frames, decoded {got})"
            )
    out = sink.finish()
    info = {
        "format": fmt.lower(),
        "codec": subtype.lower(),
        "source_sample_rate": sr,
        "source_channels": channels,
        "duration": sink.source_seconds,
        "num_samples": len(out),
    }
    return out, info


def _decode_av(
    src: AudioInput, opts: DecodeOptions, limit: float, truncate: bool, spill: _Spill | None = None
) -> tuple[Waveform, dict]:
    """Compressed audio and audio tracks of video containers through FFmpeg (PyAV).

    With `truncate`, keep the first `limit` seconds instead of refusing longer input."""
    try:
        container = open_container(src.open())
    except av.FFmpegError as exc:
        if looks_like_media(src.read_at(0, 189)):
            raise ItemError("corrupt", f"audio could not be decoded: {exc}") from exc
        raise ItemError("not_audio", "not a recognised audio format") from exc
    with container:
        if not container.streams.audio:
            raise ItemError("not_audio", "no audio stream found")
        best = container.streams.best("audio")
        stream = next((s for s in container.streams.audio if best is not None and s.index == best.index), None)
        stream = stream or container.streams.audio[0]
        declared = 0.0
        if stream.duration and stream.time_base:
            declared = float(stream.duration * stream.time_base)
        elif container.duration:
            declared = container.duration / av.time_base
        if declared > limit and not truncate:
            raise _too_long(declared, limit)
        ctx = stream.codec_context
        if ctx is None:
            raise ItemError("corrupt", "audio could not be decoded: no decoder for this audio codec")
        sink = _MonoSink(opts.sample_rate, limit, truncate, expected_seconds=declared, spill=spill)
        first_rate = 0
        try:
            for frame in container.decode(stream):
                if not isinstance(frame, av.AudioFrame) or not frame.samples:
                    continue
                first_rate = first_rate or int(frame.sample_rate)
                if not sink.add(_mono_from_frame(frame), int(frame.sample_rate)):
                    break
        except av.FFmpegError as exc:
            raise ItemError("corrupt", f"audio could not be decoded: {exc}") from exc
        info = {
            "format": (container.format.name or "").split(",")[0],
            "codec": ctx.name,
            "source_sample_rate": first_rate or int(ctx.sample_rate or 0),
            "source_channels": int(ctx.channels or 0),
        }
    out = sink.finish()
    info.update(duration=sink.source_seconds, num_samples=len(out))
    if truncate:
        info["truncated"] = sink.full
    return out, info


def decode_audio(data: bytes | BinaryIO, opts: DecodeOptions) -> tuple[Waveform, dict]:
    """Decode bytes to the full float32 mono signal at opts.sample_rate (not padded): an
    array, or with `opts.spill_dir` and more than `opts.spill_seconds` of it, a SpilledAudio
    (written to a file there while decoding; removed again if decoding fails).

    `data` may be an open regular file (AudioInput), read as it is decoded.
    Raises ItemError: `empty`, `not_audio`, `too_long`, `corrupt`, `disk_full`, `spill_failed`."""
    src = AudioInput(data)
    if not src.size:
        raise ItemError("empty", "file is empty (0 bytes)")
    spill = _Spill(opts.spill_dir, opts.spill_seconds) if opts.spill_dir else None
    try:
        result = _decode_soundfile(src, opts, spill)
        if result is None:
            result = _decode_av(src, opts, opts.max_audio_seconds, truncate=False, spill=spill)
    except BaseException:
        if spill is not None:
            spill.discard()
        raise
    out, info = result
    if not len(out):
        raise ItemError("empty", "audio has no samples")
    return out, info


def decode_audio_track(data: bytes, opts: DecodeOptions, max_seconds: float) -> tuple[np.ndarray, dict]:
    """The first `max_seconds` of a container's audio track (a video's soundtrack), mono at
    opts.sample_rate. Same errors as decode_audio, except longer input is cut, not refused."""
    if not data:
        raise ItemError("empty", "file is empty (0 bytes)")
    out, info = _decode_av(AudioInput(data), opts, max_seconds, truncate=True)
    assert isinstance(out, np.ndarray)  # never spilled: at most the first 30 s are kept
    if not len(out):
        raise ItemError("empty", "audio has no samples")
    return out, info


def num_audio_tokens(num_samples: int, samples_per_token: int = 640) -> int:
    """Soft tokens the audio tower emits for this many 16 kHz samples."""
    return -(-int(num_samples) // samples_per_token)


def pad_to_token_multiple(x: np.ndarray, samples_per_token: int = 640) -> np.ndarray:
    """Zero-pad at the end to a whole number of tokens: vLLM 0.32 miscounts the audio
    placeholder tokens for a ragged last token. An empty array stays empty."""
    rem = len(x) % samples_per_token
    if rem == 0:
        return x
    return np.concatenate([x, np.zeros(samples_per_token - rem, dtype=x.dtype)])


def split_windows(
    x: Waveform, sr: int, max_seconds: float = 30.0, min_seconds: float = 20.0, overlap_seconds: float = 0.0
) -> list[tuple[int, int]]:
    """(start, end) sample ranges of at most max_seconds covering the whole signal, for a
    model that takes at most 30 s per request. Each cut goes at the quietest point between
    start+min_seconds and start+max_seconds (middle of the quietest stretch, measured as
    the mean power over ~80 ms around each 20-ms step) so words are not split.
    With overlap, each window after the first starts overlap_seconds before the last cut.
    Reads about 10 s of the signal at a time (spilled long audio is never read whole)."""
    n = len(x)
    if sr <= 0:
        raise ValueError("sr must be positive")
    max_len = int(max_seconds * sr)
    min_len = min(int(min_seconds * sr), max_len)
    overlap = int(overlap_seconds * sr)
    if max_len <= 0:
        raise ValueError("max_seconds must be positive")
    if overlap < 0 or overlap >= max(min_len, 1):
        raise ValueError("overlap_seconds must be >= 0 and smaller than min_seconds")
    if n <= max_len:
        return [(0, n)]
    hop = max(1, int(round(0.02 * sr)))
    half = 2 * hop
    windows: list[tuple[int, int]] = []
    start = 0
    while n - start > max_len:
        lo, hi = start + max(min_len, 1), start + max_len
        cands = np.arange(lo, hi + 1, hop)
        seg_lo, seg_hi = max(cands[0] - half, 0), min(cands[-1] + half, n)
        seg = np.asarray(x[seg_lo:seg_hi], dtype=np.float64)
        if seg.ndim > 1:
            seg = seg.mean(axis=1)
        csum = np.concatenate([[0.0], np.cumsum(seg * seg)])
        a = np.clip(cands - half - seg_lo, 0, len(seg))
        b = np.clip(cands + half - seg_lo, 0, len(seg))
        power = (csum[b] - csum[a]) / np.maximum(b - a, 1)
        best = int(np.argmin(power))
        near = power <= power[best] * 1.05 + 1e-12
        left = right = best
        while left > 0 and near[left - 1]:
            left -= 1
        while right + 1 < len(near) and near[right + 1]:
            right += 1
        cut = int(cands[(left + right) // 2])
        windows.append((start, cut))
        start = cut - overlap
    windows.append((start, n))
    return windows

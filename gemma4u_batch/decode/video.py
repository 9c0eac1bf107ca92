"""Video decoding: sample frames exactly where the Gemma 4 Unified video processor would,
upright and already at the per-frame target size, so the engine never sees full-size
video; optionally the first 30 s of the soundtrack for audio+video prompts."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any

import av
import numpy as np
from PIL import Image

from ..errors import ItemError
from .audio import decode_audio_track, looks_like_media, open_container
from .image import num_image_tokens, target_size
from .item import VideoFrames
from .options import DecodeOptions

__all__ = ["apply_rotation", "decode_video", "sample_indices"]

_NO_FRAMES = "video yielded no decodable frames"
# Undecodable packets tolerated (FFmpeg's CLI skips them too) before the file counts as corrupt.
_MAX_BAD_PACKETS = 50


def frame_options(opts: DecodeOptions) -> DecodeOptions:
    """A video frame is an image at the video budget (`video_tokens_per_frame` soft tokens)."""
    return dataclasses.replace(opts, image_tokens=opts.video_tokens_per_frame)


def frame_tokens(frame: Any, opts: DecodeOptions) -> int:
    """Soft tokens of one sampled frame (a PIL image or the workers' patches: both have `size`)."""
    width, height = frame.size
    return num_image_tokens(width, height, frame_options(opts))


def sample_indices(total: int, duration: float, opts: DecodeOptions) -> list[int]:
    """Frame indices to keep, with transformers' uniform formula `arange(n) * total // n`
    (n fixed, or duration * video_fps when a rate is asked for), capped at max_video_frames."""
    if total <= 0:
        return []
    if opts.video_fps:
        n = min(opts.max_video_frames, max(1, round(duration * opts.video_fps)))
    else:
        n = min(opts.video_frames, opts.max_video_frames)
    n = max(1, min(n, total))
    return [int(i) for i in (np.arange(n, dtype=np.int64) * total // n)]


def display_rotation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> int:
    """Clockwise degrees (0/90/180/270) to turn the stored frame to display it upright.

    PyAV's frame.rotation is the display matrix's counter-clockwise angle (a phone's
    portrait clip reads -90, i.e. turn 90° clockwise); old files only carry the legacy
    `rotate` tag, which is already clockwise."""
    ccw = frame.rotation
    if ccw:
        cw = -float(ccw)
    else:
        try:
            cw = float(stream.metadata.get("rotate", 0) or 0)
        except (TypeError, ValueError):
            cw = 0.0
    return int(round(cw / 90.0)) * 90 % 360


def apply_rotation(img: Image.Image, clockwise_degrees: int) -> Image.Image:
    """Turn an image clockwise by a multiple of 90° (PIL's transposes are counter-clockwise)."""
    op = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}
    t = op.get(clockwise_degrees % 360)
    return img.transpose(t) if t is not None else img


def _open(data: bytes) -> av.container.InputContainer:
    try:
        return open_container(data)
    except av.FFmpegError as exc:
        if looks_like_media(data):
            raise ItemError("corrupt", f"video could not be decoded: {exc}") from exc
        raise ItemError("not_video", "not a recognised video container") from exc


def _video_stream(container: av.container.InputContainer):
    """The first real video stream; cover art (attached pictures) doesn't count."""
    for s in container.streams.video:
        if not (s.disposition & av.stream.Disposition.attached_pic):
            return s
    return None


def _count_packets(data: bytes, stream_index: int, cap: int) -> int:
    """Exact frame count for containers without one in the header (WebM/MKV): demux
    without decoding, which is cheap. Stops counting past `cap`."""
    n = 0
    with _open(data) as container:
        try:
            for packet in container.demux(container.streams[stream_index]):
                if packet.size and not packet.is_discard:
                    n += 1
                    if n > cap:
                        break
        except av.FFmpegError:
            pass  # damaged tail: count what is there
    return n


def _too_many_frames(detail: str, opts: DecodeOptions) -> ItemError:
    return ItemError("too_large", f"{detail}, over the max_decoded_frames limit of {opts.max_decoded_frames}")


@dataclasses.dataclass
class _Pass:
    frames: dict[int, tuple[Image.Image, float, int]]
    decoded: int
    eof: bool
    error: str | None


@dataclasses.dataclass(frozen=True)
class _Clock:
    """The stream's time base and start, so frame times count from the first frame and a
    frame without a timestamp still gets one from its index."""

    time_base: Fraction | None
    start: float
    fps: float

    @classmethod
    def of(cls, stream: av.video.stream.VideoStream, fps: float) -> _Clock:
        tb = stream.time_base
        start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
        return cls(tb, start, fps)

    def seconds(self, frame: av.VideoFrame, index: int) -> float:
        ftb = frame.time_base or self.time_base
        ts = max(float(frame.pts * ftb) - self.start, 0.0) if frame.pts is not None and ftb else None
        if ts is None:
            ts = index / self.fps if self.fps > 0 else 0.0
        return ts


def _checked_time(frame: av.VideoFrame, index: int, clock: _Clock, opts: DecodeOptions) -> float:
    """The frame's time, after the limits a lying header could have slipped past the
    up-front checks (frame count, frame size, length)."""
    if index + 1 > opts.max_decoded_frames:
        raise _too_many_frames(f"video holds more than {index} frames", opts)
    if frame.width * frame.height > opts.max_image_pixels:
        raise ItemError(
            "too_large",
            f"video frame is {frame.width}x{frame.height}, over the max_image_pixels limit of {opts.max_image_pixels}",
        )
    ts = clock.seconds(frame, index)
    if ts > opts.max_video_seconds:
        raise ItemError(
            "too_long",
            f"video runs past {opts.max_video_seconds:g} s (its header understated the length), "
            f"over the max_video_seconds limit of {opts.max_video_seconds:g} s",
        )
    return ts


def _kept_frame(
    frame: av.VideoFrame, stream: av.video.stream.VideoStream, vopts: DecodeOptions
) -> tuple[Image.Image, int]:
    """(upright image at the per-frame target size, rotation): resized here so a kept
    frame never holds its full-size pixels for the rest of the pass."""
    rot = display_rotation(frame, stream)
    img = apply_rotation(frame.to_image(), rot)
    tw, th = target_size(img.width, img.height, vopts)
    if img.size != (tw, th):
        img = img.resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return img, rot


def _decode_pass(data: bytes, stream_index: int, wanted: list[int], opts: DecodeOptions, fps: float) -> _Pass:
    """Decode sequentially, keeping only the wanted frame indices (presentation order) and
    stopping after the last one. Sequential decoding is exact where seeking is not."""
    want = set(wanted)
    last = wanted[-1]
    vopts = frame_options(opts)
    out: dict[int, tuple[Image.Image, float, int]] = {}
    decoded, bad, error = 0, 0, None
    with _open(data) as container:
        stream = next(s for s in container.streams.video if s.index == stream_index)
        stream.thread_type = "AUTO"
        clock = _Clock.of(stream, fps)
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return _Pass(out, decoded, True, error)
            except av.FFmpegError as exc:  # damaged container: the stream ends here
                return _Pass(out, decoded, True, error or str(exc))
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                bad += 1
                error = error or str(exc)
                if bad > _MAX_BAD_PACKETS:
                    if not decoded:
                        return _Pass(out, decoded, True, error)
                    raise ItemError("corrupt", f"video could not be decoded: {bad} damaged packets ({error})") from exc
                continue
            for frame in frames:
                if not isinstance(frame, av.VideoFrame):
                    continue
                i = decoded
                decoded += 1
                ts = _checked_time(frame, i, clock, opts)
                if i in want:
                    img, rot = _kept_frame(frame, stream, vopts)
                    out[i] = (img, ts, rot)
                if i >= last:
                    return _Pass(out, decoded, False, error)


@dataclasses.dataclass(frozen=True)
class _Header:
    """What the container says about the video before any frame is decoded."""

    index: int
    codec: str
    fmt: str
    has_audio: bool
    fps: float
    duration: float
    total: int
    src_w: int
    src_h: int


def _read_header(data: bytes) -> _Header:
    """The header facts, read in one open so the limits can refuse a file before decoding."""
    with _open(data) as container:
        stream = _video_stream(container)
        if stream is None:
            raise ItemError("no_frames", f"{_NO_FRAMES}: no video stream")
        ctx = stream.codec_context
        if ctx is None:
            raise ItemError("no_frames", f"{_NO_FRAMES}: no decoder for this video codec")
        index, codec = stream.index, ctx.name
        fmt = (container.format.name or "").split(",")[0]
        has_audio = bool(container.streams.audio)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        duration = 0.0
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        header_total = int(stream.frames or 0)
        src_w, src_h = int(ctx.width or 0), int(ctx.height or 0)
    return _Header(index, codec, fmt, has_audio, fps, duration, header_total, src_w, src_h)


def _check_duration(duration: float, opts: DecodeOptions) -> None:
    if duration > opts.max_video_seconds:
        raise ItemError(
            "too_long",
            f"video is {duration:.1f} s long, over the max_video_seconds limit of {opts.max_video_seconds:g} s",
        )


def _timeline(data: bytes, head: _Header, opts: DecodeOptions) -> tuple[int, float, float]:
    """(total frames, fps, duration), each filled in from the others where the header
    leaves it out, and checked against the limits before anything is decoded."""
    _check_duration(head.duration, opts)
    if head.src_w * head.src_h > opts.max_image_pixels:
        raise ItemError(
            "too_large",
            f"video frames are {head.src_w}x{head.src_h}, over the max_image_pixels limit of {opts.max_image_pixels}",
        )
    total = head.total if head.total > 0 else _count_packets(data, head.index, opts.max_decoded_frames)
    if total <= 0:
        raise ItemError("no_frames", f"{_NO_FRAMES}: the video stream holds no frames")
    fps, duration = head.fps, head.duration
    if fps <= 0 and duration > 0:
        fps = total / duration
    if duration <= 0 and fps > 0:
        duration = total / fps
    _check_duration(duration, opts)
    return total, fps, duration


def _check_shortfall(run: _Pass, head: _Header) -> None:
    """Refuse a stream that decoded to nothing, or to clearly less than its header
    declares (truncated); a small shortfall is only a header that overcounts."""
    if run.decoded == 0:
        detail = run.error or (f"no decoder output for codec {head.codec}" if head.codec else "empty stream")
        raise ItemError("no_frames", f"{_NO_FRAMES}: {detail}")
    if head.total > 0 and run.decoded < 0.9 * head.total - 2:
        raise ItemError(
            "corrupt",
            f"video could not be decoded: truncated (header declares {head.total} frames, "
            f"only {run.decoded} decodable{': ' + run.error if run.error else ''})",
        )


def _sampled_frames(
    data: bytes, head: _Header, total: int, fps: float, duration: float, opts: DecodeOptions
) -> tuple[_Pass, list[int], int, float]:
    """(decode pass, sampled indices, total, duration). When the stream holds fewer
    decodable frames than counted, sample again over the frames really there, so the
    result is what the processor would pick from the file as it decodes."""
    wanted = sample_indices(total, duration, opts)
    if wanted[-1] + 1 > opts.max_decoded_frames:
        # Sampling decodes sequentially up to the last kept frame: refuse before decoding.
        raise _too_many_frames(f"sampling this video means decoding {wanted[-1] + 1} frames", opts)
    run = _decode_pass(data, head.index, wanted, opts, fps)
    if not (run.eof and run.decoded <= wanted[-1]):
        return run, wanted, total, duration
    # Fewer decodable frames than the header/packet count said.
    _check_shortfall(run, head)
    total = run.decoded
    if duration <= 0 and fps > 0:
        duration = total / fps
    wanted = sample_indices(total, duration, opts)
    if any(i not in run.frames for i in wanted):
        run = _decode_pass(data, head.index, wanted, opts, fps)
    if any(i not in run.frames for i in wanted):
        raise ItemError("corrupt", "video could not be decoded: frames vanished between two decodes")
    return run, wanted, total, duration


def _soundtrack(data: bytes, opts: DecodeOptions, info: dict) -> np.ndarray | None:
    """The first stretch of audio that fits the audio token budget; a broken soundtrack
    is noted in `info` and leaves the frames usable."""
    max_seconds = opts.max_audio_tokens * opts.samples_per_token / opts.sample_rate
    try:
        audio, info["audio"] = decode_audio_track(data, opts, max_seconds)
    except ItemError as exc:
        info["audio_error"] = f"{exc.kind}: {exc.message}"
        return None
    return audio


def decode_video(data: bytes, opts: DecodeOptions) -> tuple[VideoFrames, np.ndarray | None, dict]:
    """Decode bytes to sampled, upright, resized RGB frames (+ soundtrack if asked).

    Raises ItemError: `empty`, `not_video`, `no_frames`, `too_long`, `too_large`, `corrupt`."""
    if not data:
        raise ItemError("empty", "file is empty (0 bytes)")
    head = _read_header(data)
    total, fps, duration = _timeline(data, head, opts)
    run, wanted, total, duration = _sampled_frames(data, head, total, fps, duration, opts)

    kept = [run.frames[i] for i in wanted]
    frames = [k[0] for k in kept]
    timestamps = [k[1] for k in kept]
    rotation = kept[0][2]
    info: dict = {
        "format": head.fmt,
        "codec": head.codec,
        "fps": fps,
        "total_frames": total,
        "duration": duration,
        "indices": list(wanted),
        "timestamps": timestamps,
        "size": list(frames[0].size),
        "source_size": [head.src_w, head.src_h],
        "rotation": rotation,
    }
    audio = _soundtrack(data, opts, info) if opts.with_audio and head.has_audio else None
    video = VideoFrames(frames, timestamps, list(wanted), fps, total, duration)
    return video, audio, info

"""The sampled items' media, shrunk to embed in the report page.

Images and video frames become small WebP thumbnails (a few KB each), audio a waveform
PNG and the first seconds as a mono Opus clip, so a 500-item page stays a few MB. The
media is decoded with the run's own decoders (EXIF rotation, CMYK, 16-bit, rotated video
all handled as the model saw them). A file that is gone, changed or unreadable gets a
placeholder that says why: one bad file never stops the report.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..decode import read_input
from ..decode.options import DecodeOptions
from ..errors import ItemError
from ..records import WorkItem

log = logging.getLogger(__name__)

THUMB_PX = 200
STRIP_FRAMES = 6
STRIP_PX = 64
WAVE_SECONDS = 30.0
CLIP_SECONDS = 5.0
CLIP_BITRATE = 16_000
MAX_PREVIEW_BYTES = 512 * 2**20  # read whole into memory, as the decoders take bytes
# Small decodes: ~70 soft tokens' worth of pixels is still larger than a thumbnail.
_OPTS = DecodeOptions(image_tokens=70, video_frames=STRIP_FRAMES, max_video_frames=STRIP_FRAMES)
_LIMITS = ("max_image_pixels", "max_input_bytes", "max_audio_seconds", "max_video_seconds", "max_decoded_frames")


def preview_options(limits: dict[str, Any]) -> DecodeOptions:
    """The small-decode options under the run's own per-item limits (run.json `limits`)."""
    kept = {k: limits[k] for k in _LIMITS if isinstance(limits.get(k), int | float)}
    return replace(_OPTS, **kept)


@dataclass
class MediaView:
    """What the grid shows for one item: data URIs, or a note saying why there is none."""

    thumb: str | None = None  # image, or a video's poster frame
    strip: str | None = None  # a video's frames side by side
    waveform: str | None = None
    clip: str | None = None  # the first seconds of audio
    note: str | None = None


def data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def webp(img: Any, box: tuple[int, int], quality: int = 60) -> str:
    """A downscaled WebP data URI of a PIL image."""
    small = img.convert("RGB")
    small.thumbnail(box)
    buf = io.BytesIO()
    small.save(buf, format="WEBP", quality=quality, method=4)
    return data_uri("image/webp", buf.getvalue())


def image_view(data: bytes, opts: DecodeOptions) -> MediaView:
    from ..decode.image import decode_image

    img, _info = decode_image(data, opts)
    return MediaView(thumb=webp(img, (THUMB_PX, THUMB_PX)))


def video_view(data: bytes, opts: DecodeOptions) -> MediaView:
    """The first sampled frame as the poster, and the sampled frames as a strip."""
    from PIL import Image

    from ..decode.video import decode_video

    frames, _audio, _info = decode_video(data, opts)
    tiles = [f.copy() for f in frames.frames[:STRIP_FRAMES]]
    for t in tiles:
        t.thumbnail((STRIP_PX * 2, STRIP_PX))
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 2 * (len(tiles) - 1), STRIP_PX), (255, 255, 255))
    x = 0
    for t in tiles:
        strip.paste(t.convert("RGB"), (x, (STRIP_PX - t.height) // 2))
        x += t.width + 2
    return MediaView(thumb=webp(frames.frames[0], (THUMB_PX, THUMB_PX)), strip=webp(strip, (strip.width, STRIP_PX)))


def waveform_png(x: np.ndarray, width: int = THUMB_PX, height: int = 48) -> str:
    """Min/max envelope per pixel column, drawn with Pillow."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (246, 246, 250))
    draw = ImageDraw.Draw(img)
    cols = np.array_split(x, width) if len(x) >= width else [x]
    mid = (height - 1) / 2
    for i, col in enumerate(cols):
        if not len(col):
            continue
        lo, hi = float(np.clip(col.min(), -1, 1)), float(np.clip(col.max(), -1, 1))
        draw.line([(i, mid - hi * mid), (i, mid - lo * mid)], fill=(60, 90, 170))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return data_uri("image/png", buf.getvalue())


def opus_clip(x: np.ndarray, rate: int) -> str:
    """Mono Ogg Opus at a low bitrate: ~10 KB for five seconds of speech."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=rate)
        stream.bit_rate = CLIP_BITRATE
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x, np.float32)[None, :], format="flt", layout="mono")
        frame.rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return data_uri("audio/ogg", buf.getvalue())


def audio_view(data: bytes, opts: DecodeOptions) -> MediaView:
    from ..decode.audio import decode_audio_track

    x, _info = decode_audio_track(data, opts, WAVE_SECONDS)
    clip = x[: int(CLIP_SECONDS * opts.sample_rate)]
    return MediaView(waveform=waveform_png(x), clip=opus_clip(clip, opts.sample_rate))


_VIEWS = {"image": image_view, "video": video_view, "audio": audio_view}


def _read(item: WorkItem, limit: int) -> tuple[bytes | None, str | None]:
    """The item's bytes (a file, a dataset row's, a URL's), or why there are none."""
    try:
        return read_input(item, DecodeOptions(max_input_bytes=limit))[0], None
    except ItemError as exc:
        if exc.kind == "too_large":
            return None, f"no preview: the file is over {limit // 2**20} MB"
        return None, f"cannot read the media file {item.path or item.source}: {exc.message}"


def media_view(rec: dict[str, Any], found: WorkItem | None, opts: DecodeOptions) -> MediaView:
    """The view of one record's media; a placeholder naming the reason when there is none.

    Only media the run decoded without error, and unchanged since (same sha256), is decoded
    again: a file that failed (too large, a decoder crash or hang) or was swapped since is
    never fed to a decoder in this process."""
    make = _VIEWS.get(rec.get("modality") or "")
    if rec.get("error") is not None:
        return MediaView()
    if make is None:
        return MediaView(note="no media (modality unknown)")
    if found is None:
        return MediaView(note="media not found: the item is no longer in the run's input")
    data, why = _read(found, min(MAX_PREVIEW_BYTES, opts.max_input_bytes))
    if not data:
        return MediaView(note=why or "media file is empty")
    sha = rec.get("content_sha256")
    if sha and hashlib.sha256(data).hexdigest() != sha:
        return MediaView(note="no preview: the file changed since this record was made")
    try:
        return make(data, opts)
    except Exception as exc:  # odd files: the reason goes on the page, the report goes on
        log.debug("report: no preview for %s", rec.get("id"), exc_info=True)
        return MediaView(note=f"no preview: {type(exc).__name__}: {str(exc)[:200]}")


def _folder_items(folder: Path, ids: set[str]) -> dict[str, WorkItem]:
    """A folder input's items by id (their path under the folder), never outside it."""
    top = folder.resolve()
    found: dict[str, WorkItem] = {}
    for i in ids:
        path = (folder / i).resolve()
        if path.is_relative_to(top) and path.is_file():
            found[i] = WorkItem(id=i, source=str(path), modality=None, path=str(path))
    return found


def locate_media(manifest: dict[str, Any], root: Path | str, ids: Iterable[str]) -> dict[str, WorkItem]:
    """Where the sampled items' media is now, from the run's input as run.json records it.

    A folder input is looked up by id (the path under the folder: no listing); other inputs
    are enumerated only until every wanted id has been seen."""
    from pydantic import ValidationError

    from ..config.job import JobConfig
    from ..errors import UsageError
    from ..sources.job_input import JobInput

    wanted = set(ids)
    if not wanted or not manifest.get("config"):
        return {}
    found: dict[str, WorkItem] = {}
    try:
        config = JobConfig(**{**manifest["config"], "output": str(root)})
        if isinstance(config.input, Path) and config.input.is_dir():
            found = _folder_items(Path(config.input), wanted)
            wanted -= set(found)
        for item in JobInput(config).open() if wanted else ():
            if item.id in wanted:
                found[item.id] = item
                wanted.discard(item.id)
                if not wanted:
                    break
    except (UsageError, ValidationError, OSError, ValueError) as exc:
        log.warning("gemma4u report: cannot read the run's input for media (%s)", exc)
    return found

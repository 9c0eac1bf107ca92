"""Decode stage: a WorkItem in, a DecodedItem out (media ready for the engine, or an error).

Runs inside decode worker processes; everything here must be picklable and must turn
every failure of one input into an error on that input, never an exception out.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time

from ..errors import ItemError
from ..records import DecodedItem, Modality, WorkItem
from .options import DecodeOptions

__all__ = ["DecodeOptions", "decode_item", "read_input_bytes"]


def read_input_bytes(item: WorkItem, opts: DecodeOptions) -> bytes:
    """The item's bytes, refusing special files and anything over the byte limit."""
    if item.data is not None:
        if len(item.data) > opts.max_input_bytes:
            raise ItemError("too_large", f"input is {len(item.data)} bytes, over max_input_bytes {opts.max_input_bytes}")
        return item.data
    if item.path is None:
        raise ItemError("no_data", "item has neither a path nor inline bytes")
    try:
        st = os.stat(item.path)
    except FileNotFoundError as exc:
        raise ItemError("not_found", f"file not found: {item.path}") from exc
    except OSError as exc:
        raise ItemError("unreadable", f"cannot stat {item.path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ItemError("special_file", "not a regular file (FIFO, device, socket or directory)")
    if st.st_size > opts.max_input_bytes:
        raise ItemError("too_large", f"file is {st.st_size} bytes, over max_input_bytes {opts.max_input_bytes}")
    try:
        with open(item.path, "rb") as fh:
            data = fh.read(opts.max_input_bytes + 1)
    except OSError as exc:
        raise ItemError("unreadable", f"cannot read {item.path}: {exc.strerror}") from exc
    if len(data) > opts.max_input_bytes:
        raise ItemError("too_large", f"file grew past max_input_bytes {opts.max_input_bytes} while reading")
    return data


def decode_item(item: WorkItem, opts: DecodeOptions) -> DecodedItem:
    """Read, hash and decode one item. Never raises for a bad input."""
    started = time.perf_counter()
    out = DecodedItem(item=item)
    try:
        if item.error is not None:
            raise ItemError("bad_input_row", item.error)
        data = read_input_bytes(item, opts)
        out.content_sha256 = hashlib.sha256(data).hexdigest()
        if item.modality is Modality.IMAGE:
            from .image import decode_image

            out.image, out.info = decode_image(data, opts)
        elif item.modality is Modality.AUDIO:
            from .audio import decode_audio

            out.audio, out.info = decode_audio(data, opts)
        elif item.modality is Modality.VIDEO:
            from .video import decode_video

            out.video, out.audio, out.info = decode_video(data, opts)
        else:
            raise ItemError("unsupported", "unknown modality (unsupported file extension)")
    except ItemError as exc:
        out.error, out.error_kind = exc.message, exc.kind
        out.image = out.audio = out.video = None
    except MemoryError:
        out.error, out.error_kind = "ran out of memory while decoding", "too_large"
        out.image = out.audio = out.video = None
    out.decode_seconds = time.perf_counter() - started
    return out

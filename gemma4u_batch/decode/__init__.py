"""Decode stage: a WorkItem in, a DecodedItem out (media ready for the engine, or an error).

Runs inside decode worker processes; everything here must be picklable and must turn
every failure of one input into an error on that input, never an exception out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import time
from collections.abc import Callable
from typing import BinaryIO

from ..errors import ItemError
from ..records import Modality, WorkItem
from .fetch import Fetched, is_remote
from .fetch import fetch as fetch_remote
from .item import DecodedItem
from .options import DecodeOptions
from .spill import SpilledAudio

__all__ = ["DecodeFn", "DecodeOptions", "decode_fetched", "decode_item", "read_input", "read_input_bytes"]

DecodeFn = Callable[[WorkItem, DecodeOptions], DecodedItem]

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_GROWTH_CHUNK = 1 << 20


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _check_regular(st: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ItemError("special_file", f"refused: {_file_kind(st.st_mode)}, not a regular file")
    if st.st_size > limit:
        raise ItemError("too_large", f"file is {st.st_size} bytes, over the max_input_bytes limit of {limit}")


def read_input_bytes(item: WorkItem, opts: DecodeOptions) -> bytes:
    """The item's bytes (see `read_input`)."""
    return read_input(item, opts)[0]


def read_input(item: WorkItem, opts: DecodeOptions) -> tuple[bytes, os.stat_result | None]:
    """The item's bytes and the stat of the file as opened (None for inline bytes or a URL's),
    refusing special files and anything over the byte limit."""
    if is_remote(item):
        return fetch_remote(item, opts).body or b"", None
    limit = opts.max_input_bytes
    if item.data is not None:
        if len(item.data) > limit:
            raise ItemError("too_large", f"input is {len(item.data)} bytes, over the max_input_bytes limit of {limit}")
        return item.data, None
    if item.path is None:
        raise ItemError("no_data", "item has neither a path nor inline bytes")
    fh, st = open_input(item.path, limit)
    try:
        with fh:
            # One read of the expected size (+1 to see EOF); only a file that grows while we
            # read takes more reads, and those stop one byte past the limit.
            parts = [fh.read(st.st_size + 1)]
            total = len(parts[0])
            while parts[-1] and total <= limit:
                parts.append(fh.read(min(_GROWTH_CHUNK, limit + 1 - total)))
                total += len(parts[-1])
    except OSError as exc:
        raise ItemError("unreadable", f"cannot read {item.path}: {exc.strerror or exc}") from exc
    if total > limit:
        raise ItemError("too_large", f"file grew past the max_input_bytes limit of {limit} while being read")
    return (parts[0] if len(parts) <= 2 else b"".join(parts)), st


def open_input(path: str | os.PathLike[str], limit: int) -> tuple[BinaryIO, os.stat_result]:
    """The regular file at `path`, open, and its stat as opened; special files and files over
    the byte limit are refused. Stat first so a FIFO or device is never opened; then open
    non-blocking and check the opened fd again, since the path can be swapped in between."""
    try:
        _check_regular(os.stat(path), limit)
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError as exc:
        raise ItemError("not_found", f"file not found: {path}") from exc
    except OSError as exc:
        raise ItemError("unreadable", f"cannot open {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # embedded NUL byte
        raise ItemError("unreadable", f"invalid path {str(path)!r}: {exc}") from exc
    fh = os.fdopen(fd, "rb", buffering=0)
    try:
        st = os.fstat(fh.fileno())
        _check_regular(st, limit)
    except OSError as exc:
        fh.close()
        raise ItemError("unreadable", f"cannot read {path}: {exc.strerror or exc}") from exc
    except ItemError:
        fh.close()
        raise
    return fh, st


def _streams(item: WorkItem, opts: DecodeOptions) -> bool:
    """Whether this item is a large audio file, decoded from the open file instead of its bytes."""
    if item.modality is not Modality.AUDIO or item.data is not None or item.path is None:
        return False
    try:
        return os.stat(item.path).st_size > opts.stream_input_bytes
    except (OSError, ValueError):
        return False  # read_input reports it


def _hash_open(fh: BinaryIO, st: os.stat_result, limit: int) -> str:
    """SHA-256 of an open file read in 1 MB chunks (never held whole); it must not change size."""
    digest, total = hashlib.sha256(), 0
    try:
        while chunk := fh.read(_GROWTH_CHUNK):
            total += len(chunk)
            if total > limit:
                raise ItemError("too_large", f"file grew past the max_input_bytes limit of {limit} while being read")
            digest.update(chunk)
    except OSError as exc:
        raise ItemError("unreadable", f"cannot read the file: {exc.strerror or exc}") from exc
    if total != st.st_size:
        raise ItemError("unreadable", "file changed size while being read")
    return digest.hexdigest()


def in_shard(basis_sha256: str, shard: tuple[int, int]) -> bool:
    """Deterministic partition by content hash."""
    return int(basis_sha256[:16], 16) % shard[1] == shard[0]


def _drop_media(out: DecodedItem) -> None:
    """A failed item carries no media; long audio's spill file goes with it (the VAD may
    fail after decoding wrote it)."""
    if isinstance(out.audio, SpilledAudio):
        out.audio.file.unlink()
    out.image = out.audio = out.video = None


def decode_item(item: WorkItem, opts: DecodeOptions) -> DecodedItem:
    """Read (a remote item: fetch), hash and decode one item. Never raises for a bad input."""
    if is_remote(item):
        started = time.perf_counter()
        try:
            fetched = fetch_remote(item, opts)
        except ItemError as exc:
            return _timed(DecodedItem(item=item, error=exc.message, error_kind=exc.kind), started)
        return _timed(decode_fetched(item, fetched, opts), started)
    started = time.perf_counter()
    out = DecodedItem(item=item)
    try:
        if item.error is not None:
            raise ItemError("bad_input_row", item.error)
        out.read_at_ns = time.time_ns()
        if _streams(item, opts):
            assert item.path is not None
            fh, opened = open_input(item.path, opts.max_input_bytes)
            with fh:
                _decode_open_audio(out, fh, opened, opts)
            return _timed(out, started)
        data, st = read_input(item, opts)
        out.content_sha256 = hashlib.sha256(data).hexdigest()
        if st is not None:
            out.file_stat = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        if opts.shard is not None and not in_shard(out.content_sha256, opts.shard):
            out.skipped = True  # another shard's item: hashing was enough to know
            return out
        if item.modality is Modality.IMAGE:
            from .image import decode_image

            out.image, out.info = decode_image(data, opts)
        elif item.modality is Modality.AUDIO:
            _decode_audio(out, data, opts)
        elif item.modality is Modality.VIDEO:
            from .video import decode_video

            out.video, out.audio, out.info = decode_video(data, opts)
        else:
            raise ItemError("unsupported", "unknown modality (unsupported file extension)")
        if opts.patches:
            from .patches import patchify

            patchify(out, opts)
    except ItemError as exc:
        out.error, out.error_kind = exc.message, exc.kind
        _drop_media(out)
    except MemoryError:
        out.error, out.error_kind = "ran out of memory while decoding", "too_large"
        _drop_media(out)
    except Exception as exc:  # a decoder bug must cost this item, not the run
        text = " ".join(str(exc).split())[:300]
        out.error = f"unexpected {type(exc).__name__} while decoding{': ' + text if text else ''}"
        out.error_kind = "decode_error"
        _drop_media(out)
    return _timed(out, started)


def decode_fetched(
    item: WorkItem, fetched: Fetched, opts: DecodeOptions, decode_fn: DecodeFn | None = None
) -> DecodedItem:
    """A remote item decoded from the bytes its fetch brought (a worker may fetch ahead, in
    threads, while it decodes). Unchanged since the last run (a 304): no media, the hash OUT's
    index knows. The record keeps the item as listed, never its bytes."""
    if fetched.not_modified:
        assert item.known is not None, "a conditional fetch is made only for an item OUT's index knows"
        return DecodedItem(item=item, content_sha256=item.known.sha256, fetched=fetched.stat, unchanged=True)
    out = (decode_fn or decode_item)(dataclasses.replace(item, data=fetched.body), opts)
    out.item, out.fetched = item, fetched.stat
    return out


def _timed(out: DecodedItem, started: float) -> DecodedItem:
    out.decode_seconds = time.perf_counter() - started
    return out


def _decode_audio(out: DecodedItem, data: bytes | BinaryIO, opts: DecodeOptions) -> None:
    """Decode the waveform and, for speech tasks, find its speech regions."""
    from .audio import decode_audio

    out.audio, out.info = decode_audio(data, opts)
    if opts.vad:
        from .vad import speech_probabilities, speech_regions

        regions = speech_regions(speech_probabilities(out.audio, opts.sample_rate), len(out.audio))
        out.info["speech"] = [list(r) for r in regions]


def _decode_open_audio(out: DecodedItem, fh: BinaryIO, st: os.stat_result, opts: DecodeOptions) -> None:
    """A large audio file decoded from the open file (the worker never holds its bytes): hashed
    in chunks first, then decoded from the start; a file that changes meanwhile is refused,
    so the hash is the hash of what was decoded."""
    out.content_sha256 = _hash_open(fh, st, opts.max_input_bytes)
    out.file_stat = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    if opts.shard is not None and not in_shard(out.content_sha256, opts.shard):
        out.skipped = True
        return
    _decode_audio(out, fh, opts)
    now = os.fstat(fh.fileno())
    if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise ItemError("unreadable", "file changed while being decoded")

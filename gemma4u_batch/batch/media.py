"""A line's media: where each may come from (`MediaPolicy`), the decode worker's item for it,
and the decoded items as the engine takes them.

A media reference becomes a `WorkItem` for the decode workers, as an input file of `caption`
does: a data: URI's bytes inline, a file:// path (under --allowed-local-media-path, as in
vLLM) read by the worker, an http(s) or object-store URL fetched by the worker (only with
--allow-network-media, with the fetch's deadline, retries and size limit). The decoded items
come back in the order the line names them and become the request's multimodal data: images
as the model's patches, audio as 16 kHz clips padded to whole tokens, video as sampled frames.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..decode import DecodeOptions
from ..decode.item import DecodedItem
from ..errors import ItemError
from ..records import Modality, WorkItem
from ..sources.locations import EXTRAS, redact
from .chat import MediaRef

AUDIO_MAX_SECONDS = 30.0  # the model's audio input takes at most 750 tokens × 40 ms per item


@dataclass
class MediaPolicy:
    """Where media may come from: data: URIs always, file:// under allowed_local_media_path
    (as vLLM), http(s) and object stores only with allow_network (and, when given, only from
    allowed_domains, as vLLM's --allowed-media-domains)."""

    allowed_local_media_path: Path | None = None
    allow_network: bool = False
    allowed_domains: tuple[str, ...] = ()
    max_bytes: int = 64 * 1024**2
    # vLLM's processor samples 32 frames of a video (caption's default is 8)
    decode: DecodeOptions = field(default_factory=lambda: DecodeOptions(video_frames=32))

    def item(self, ref: MediaRef, item_id: str) -> WorkItem:
        """The decode worker's item for one media reference; ItemError when it is refused."""
        modality = Modality(ref.modality)
        url = ref.url
        scheme = urllib.parse.urlparse(url).scheme.lower()
        if scheme == "data":
            return WorkItem(item_id, "data: URI", modality, data=self._data_uri(url))
        if scheme == "file":
            return WorkItem(item_id, url, modality, path=str(self._local(url)))
        if scheme in EXTRAS:  # http(s), object stores, the Hub: fetched by the worker
            if not self.allow_network:
                raise ItemError("network_media", f"{scheme} media is off; pass --allow-network-media to fetch it")
            host = urllib.parse.urlparse(url).hostname or ""
            if self.allowed_domains and scheme in ("http", "https") and host not in self.allowed_domains:
                raise ItemError(
                    "bad_media_url",
                    f"The URL must be from one of the allowed domains: {list(self.allowed_domains)}. "
                    f"Input URL domain: {host}",
                )
            return WorkItem(item_id, redact(url), modality, url=url)
        raise ItemError("bad_media_url", f"unsupported media URL scheme {scheme!r} (data:, file:// or http(s))")

    def data_bytes(self, payload: str) -> bytes:
        """Base64 media (a data: URI's payload, input_audio's data) within the byte limit."""
        if len(payload) * 3 // 4 > self.max_bytes:
            raise ItemError("too_large", f"media over {self.max_bytes} bytes")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ItemError("bad_media_url", f"invalid base64 media: {exc}") from exc

    def _data_uri(self, url: str) -> bytes:
        head, sep, payload = url.partition(",")
        if not sep or ";base64" not in head:
            raise ItemError("bad_media_url", "a data: URI must be base64 (data:<type>;base64,<data>)")
        return self.data_bytes(payload)

    def _local(self, url: str) -> Path:
        if self.allowed_local_media_path is None:
            raise ItemError("bad_media_url", "file:// media needs --allowed-local-media-path")
        parsed = urllib.parse.urlparse(url)
        path = Path(urllib.parse.unquote(parsed.path)).resolve()
        root = self.allowed_local_media_path.resolve()
        if parsed.netloc not in ("", "localhost") or not path.is_relative_to(root):
            raise ItemError("bad_media_url", f"{url} is outside --allowed-local-media-path {root}")
        return path


def engine_item(d: DecodedItem, modality: str, opts: DecodeOptions) -> tuple[Any, int]:
    """A decoded medium as the engine takes it for a chat line, and its soft tokens (with the
    tokens around them). ItemError when it decoded to something else or is over the model's
    limits (audio: 30 s per item)."""
    from ..decode.audio import pad_to_token_multiple
    from ..prompting.units import audio_tokens, image_tokens, video_metadata, video_tokens

    if d.error is not None:
        raise ItemError(d.error_kind or "decode_error", d.error)
    if modality == "image" and d.image is not None:
        return d.image, image_tokens(d.info)
    if modality == "video" and d.video is not None:
        return (list(d.video.frames), video_metadata(d.video)), video_tokens(d.video, opts)
    if modality == "audio" and d.audio is not None and d.video is None:
        wave = np.asarray(d.audio, dtype=np.float32)
        if wave.size > AUDIO_MAX_SECONDS * opts.sample_rate:
            seconds = wave.size / opts.sample_rate
            raise ItemError("too_long", f"audio of {seconds:.1f} s: the model takes at most 30 s per audio item")
        clip = pad_to_token_multiple(wave)
        return (clip, opts.sample_rate), audio_tokens(clip.size)
    raise ItemError("bad_media", f"the {modality} part is not a readable {modality} file")


def multi_modal_data(media: dict[str, list[Any]]) -> dict[str, Any] | None:
    """The request's multimodal data: one item as itself, several as a list (vLLM's shapes)."""
    mm = {k: (v[0] if len(v) == 1 else list(v)) for k, v in media.items() if v}
    return mm or None

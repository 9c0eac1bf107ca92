"""Per-item limits and media settings shared by every decoder (picklable for workers)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config.job import JobConfig
from ..config.tasks import is_speech_task
from ..sources.locations import origin, scheme_of
from .spill import SPILL_SECONDS


@dataclass(frozen=True)
class DecodeOptions:
    """Limits are checked on headers before anything big is allocated, and again on what
    is actually decoded (headers can lie); an item over one is an error naming the limit.
    Wall-clock decode time is the pool's `decode_timeout`."""

    image_tokens: int = 280
    max_image_pixels: int = 180_000_000
    max_input_bytes: int = 2 * 1024**3
    # An audio file larger than this is decoded from the open file, never read whole (32 MiB:
    # about 17 min of 16 kHz 16-bit WAV, 35 min of FLAC); smaller files are read into memory.
    stream_input_bytes: int = 32 * 1024**2
    # Gemma 4 Unified geometry: 16 px patches merged 3×3 into 48 px model patches.
    patch_size: int = 16
    pooling_kernel_size: int = 3
    # Audio: 16 kHz, 640 samples per soft token, at most 750 tokens (30 s) per request.
    sample_rate: int = 16_000
    samples_per_token: int = 640
    max_audio_tokens: int = 750
    max_audio_seconds: float = 4 * 3600.0
    # Decoded audio longer than spill_seconds goes to a file in spill_dir (spill.py). None:
    # in memory. DecodePool sets its own folder here (under the folder given to it).
    spill_dir: str | None = None
    spill_seconds: float = SPILL_SECONDS
    # Video
    video_frames: int = 8
    video_fps: float | None = None
    video_tokens_per_frame: int = 70
    max_video_frames: int = 32  # frames sampled and sent to the model
    max_decoded_frames: int = 500_000  # frames a video may make the decoder decode
    max_video_seconds: float = 4 * 3600.0
    with_audio: bool = False
    # Speech tasks: find the speech regions of audio files (decode/vad.py) so only they are sent
    vad: bool = False
    # Images leave the worker as the model's patches (decode/patches.py): set when the engine takes them
    patches: bool = False
    # --shard I/N: items whose content hash is not ≡ I (mod N) are hashed but not decoded
    shard: tuple[int, int] | None = None
    # Remote items (decode/fetch.py): a deadline per item, retries included; how many items a
    # worker fetches ahead while it decodes (object stores and web servers are latency-bound);
    # which origins may resolve to private addresses (the manifest's own, a URL typed as INPUT).
    fetch_timeout: float = 30.0
    fetch_retries: int = 3
    fetch_ahead: int = 16
    allow_private_urls: bool = False
    trusted_origins: tuple[str, ...] = ()


def decode_options(config: JobConfig) -> DecodeOptions:
    """The per-item limits and media settings a job's decode workers apply."""
    return DecodeOptions(
        image_tokens=config.image_tokens,
        max_image_pixels=config.max_image_pixels,
        max_input_bytes=config.max_input_bytes,
        max_audio_seconds=config.max_audio_seconds,
        max_video_seconds=config.max_video_seconds,
        max_decoded_frames=config.max_decoded_frames,
        video_frames=config.video_frames,
        video_fps=config.video_fps,
        with_audio=config.with_audio,
        vad=any(is_speech_task(t) for t in config.task_list()),
        shard=config.shard_index(),
        fetch_timeout=config.fetch_timeout,
        fetch_ahead=config.fetch_ahead,
        allow_private_urls=config.allow_private_urls,
        trusted_origins=trusted_origins(config),
    )


def trusted_origins(config: JobConfig) -> tuple[str, ...]:
    """Origins whose URLs may name private addresses: the INPUT a user typed (an http(s) manifest's
    own origin). Rows are not trusted beyond it, --allow-root URLs included: only
    --allow-private-urls lets them reach loopback, link-local or private addresses."""
    url = str(config.input) if config.input is not None else ""
    return (origin(url),) if scheme_of(url) in ("http", "https") else ()

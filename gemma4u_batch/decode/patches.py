"""Image → the model's input patches, in the decode workers instead of the engine's front end.

vLLM runs the Gemma 4 Unified image processor (patchify 16 px, merge 3×3 into 48-px model
patches, position ids, pad to the token budget, rescale) inside `add_request`, in the one
process that feeds the engine: ~50–135 ms per photo there, one item at a time. Here the
same steps run in the workers, with transformers' own functions, on uint8 pixels (a patch
is a permutation of pixels, so the bytes sent on stay 1 byte per value); the model's process
rescales with the processor's arithmetic (exactly the same values, applied after the
permutation instead of before it). gemma4u's vLLM plugin
(`vllm_plugin/processed.py`) accepts the result; `tests/test_patches.py` checks that every
tensor equals what vLLM's own processor makes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .item import DecodedItem
    from .options import DecodeOptions

PATCHES_VERSION = 1
"""Bumped whenever what the workers send changes: part of every item's multimodal id."""


@dataclass(frozen=True)
class ImagePatches:
    """One image as the model takes it, before rescaling."""

    patches: np.ndarray  # (budget, 3·48·48) uint8, rows past `num_tokens` are zero padding
    positions: np.ndarray  # (budget, 2) int64: each patch's (x, y) on the 48-px grid, -1 for padding
    num_tokens: int  # soft tokens the image occupies (rows that are not padding)
    size: tuple[int, int]  # (width, height) of the image that was patchified
    uuid: str  # what vLLM caches it under instead of hashing the pixels


def warm_up() -> None:
    """Import torch, torchvision and transformers' functions once per worker (not per item),
    with one torch thread: a worker holds one item; the other cores belong to the other
    workers and the engine."""
    import torch
    import torchvision.transforms.v2.functional  # noqa: F401
    import transformers.models.gemma4_unified.image_processing_gemma4_unified  # noqa: F401

    torch.set_num_threads(1)


def _processor_sized(pixels: Any, budget: int, patch_size: int, pooling: int) -> Any:
    """The processor's own resize (step 1), for the images it still resizes: the decoder's
    target is computed from the original size, and for some odd aspect ratios the
    processor's formula applied to that target gives another size (vLLM then resizes a
    second time; so must we, to send the same pixels)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvF
    from transformers.models.gemma4_unified.image_processing_gemma4_unified import get_aspect_ratio_preserving_size

    h, w = int(pixels.shape[-2]), int(pixels.shape[-1])
    th, tw = get_aspect_ratio_preserving_size(h, w, patch_size, budget * pooling**2, pooling)
    if (th, tw) == (h, w):
        return pixels
    return tvF.resize(pixels, size=[th, tw], interpolation=InterpolationMode.BICUBIC, antialias=True)


def image_patches(image: Any, *, budget: int, patch_size: int, pooling: int, content_id: str) -> ImagePatches:
    """Patchify an RGB PIL image (the decoder already resized it to the processor's size).

    Same steps as transformers' `Gemma4UnifiedImageProcessor._preprocess` on the uint8
    tensor the processor makes from this image, except the rescale (step 2), which is left
    to the engine side.
    """
    import torch
    from transformers.models.gemma4_unified.image_processing_gemma4_unified import (
        convert_image_to_patches,
        pad_along_first_dim,
        patches_merge,
    )

    rgb = np.array(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)  # writable, for torch
    pixels = _processor_sized(torch.from_numpy(rgb).permute(2, 0, 1), budget, patch_size, pooling)
    height, width = pixels.shape[-2] // patch_size, pixels.shape[-1] // patch_size
    teacher = convert_image_to_patches(pixels, patch_size)
    grid = torch.meshgrid(torch.arange(width), torch.arange(height), indexing="xy")
    positions = torch.stack(grid, dim=-1).reshape(teacher.shape[0], 2)
    merged, merged_pos = patches_merge(teacher.unsqueeze(0), positions.unsqueeze(0), teacher.shape[0] // pooling**2)
    num_tokens = int(merged.shape[1])
    padded, padded_pos = pad_along_first_dim(merged.squeeze(0), merged_pos.squeeze(0), budget)
    h, w = (int(n) for n in pixels.shape[-2:])
    return ImagePatches(
        patches=padded.contiguous().numpy(),
        positions=padded_pos.contiguous().numpy(),
        num_tokens=num_tokens,
        size=(w, h),
        uuid=f"gemma4u-image:{content_id}:{w}x{h}:{budget}:v{PATCHES_VERSION}",
    )


def patchify(d: DecodedItem, opts: DecodeOptions) -> None:
    """Replace a decoded image, or a video's frames, by their patches (the engine takes them)."""
    if d.image is not None:
        d.image = image_patches(
            d.image,
            budget=opts.image_tokens,
            patch_size=opts.patch_size,
            pooling=opts.pooling_kernel_size,
            content_id=str(d.content_sha256),
        )
        d.info["num_tokens"] = d.image.num_tokens
    if d.video is not None:
        frames = [
            image_patches(
                frame,
                budget=opts.video_tokens_per_frame,
                patch_size=opts.patch_size,
                pooling=opts.pooling_kernel_size,
                content_id=f"{d.content_sha256}#{index}",
            )
            for frame, index in zip(d.video.frames, d.video.indices, strict=True)
        ]
        d.video = dataclasses.replace(d.video, frames=frames)

"""Let vLLM take Gemma 4 Unified images already patchified by gemma4u's decode workers.

vLLM 0.32 runs the HF image processor inside `add_request`, in the process that feeds the
engine, and has no input for Gemma 4's processed tensors. This registers, for
`Gemma4UnifiedForConditionalGeneration`, vLLM's own Gemma 4 processor with two additions:
an image item may be a dict `{"gemma4u_patches": uint8 (n, T, 6912), "pixel_position_ids":
int64 (n, T, 2)}` (made by `decode/patches.py`), passed on without calling the HF processor
as bytes (`gemma4u_pixel_bytes`, rescaled into `pixel_values` where the model parses its inputs)
or, where that cannot be, rescaled here into `pixel_values`; and
its placeholder is sized from the positions (the rows that are not padding). A video item
may likewise be its frames' patches with the counts, soft tokens and timestamps vLLM's
processor would have made (its placeholder is then vLLM's own, built from those). An audio
item may be its 640-sample frames (the feature extractor's framing of a clip already padded
to whole frames: a reshape), its placeholder vLLM's own for that many samples. PIL images,
frames and (waveform, rate) pairs still take vLLM's usual path. The engine must run with `enable_mm_embeds=True`, vLLM's
switch for inputs that skip its processor.

Registered by the plugin entry point in every vLLM process (the front end is the one that
uses it, the model's process rescales the bytes); written for vLLM 0.32.x like the attention
patch, and off elsewhere.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("vllm.gemma4u_bidi")

PATCHES_KEY = "gemma4u_patches"
VIDEO_PATCHES_KEY = "gemma4u_video_patches"
AUDIO_FRAMES_KEY = "gemma4u_audio_frames"
# The model inputs that carry patches as bytes to the engine; the model's process rescales them.
PIXEL_BYTES_KEY = "gemma4u_pixel_bytes"
VIDEO_BYTES_KEY = "gemma4u_video_bytes"
BYTE_SCALE = 1 / 255
VIDEO_FIELDS = (
    "pixel_values_videos",
    "pixel_position_ids_videos",
    "video_frame_counts",
    "video_num_soft_tokens",
    "video_timestamps",
)
DISABLE_ENV = "GEMMA4U_DISABLE_PROCESSED_INPUTS"

_state: dict[str, Any] = {"registered": False, "reason": "not registered", "bytes": True}


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def send_bytes(enabled: bool) -> None:
    """Whether this front end sends patches as bytes (rescaled by the model) or as float32.

    Off where the model's inputs skip `_parse_and_validate_multimodal_inputs` (vLLM's encoder
    CUDA graphs copy `pixel_values` straight into captured buffers)."""
    _state["bytes"] = enabled


def active() -> bool:
    """Whether this process's vLLM takes gemma4u's patches (registered without problems)."""
    return bool(_state["registered"])


def reason() -> str:
    return str(_state["reason"])


def processor_compatible(processor_config: Mapping[str, Any]) -> str | None:
    """Why a model's image processor settings are not the ones the workers reproduce, or None.

    The workers patchify with transformers' Gemma 4 Unified functions and resize with bicubic
    interpolation; the engine side rescales. Normalising per channel cannot be applied to
    patches, so a processor that normalises keeps vLLM's own path."""
    image = processor_config.get("image_processor", processor_config)
    wanted = {"patch_size": 16, "pooling_kernel_size": 3, "resample": 3, "do_normalize": False}
    for key, value in wanted.items():
        if key in image and image[key] != value:
            return f"image processor {key}={image[key]!r} (gemma4u's workers reproduce {value!r})"
    audio = processor_config.get("feature_extractor", {})
    for key, value in {"audio_samples_per_token": 640, "sampling_rate": 16000}.items():
        if key in audio and audio[key] != value:
            return f"feature extractor {key}={audio[key]!r} (gemma4u frames audio as {value!r})"
    return None


def rescale_patches(image_processor: Any, patches: Any) -> Any:
    """The image processor's rescale (`image * rescale_factor`; processor_compatible ruled out
    normalising), applied to uint8 patches instead of the uint8 image: a patch is a
    permutation of pixels. One numpy pass into float32 (x → float32(x) · float32(factor)): the
    same value for every uint8 (tested), one 7.7 MB allocation, and 2–5× faster than torch's
    conversion then multiplication in the feeding process."""
    import numpy as np
    import torch

    array = patches.numpy() if isinstance(patches, torch.Tensor) else np.asarray(patches)
    return torch.from_numpy(np.multiply(array, np.float32(image_processor.rescale_factor), dtype=np.float32))


def bytes_match(image_processor: Any) -> bool:
    """Whether the model's rescale is the one `pixels_from_bytes` applies (1/255 in float32)."""
    import numpy as np

    return bool(np.float32(image_processor.rescale_factor) == np.float32(BYTE_SCALE))


def pixels_from_bytes(data: Any) -> Any:
    """uint8 patches → the processor's float32 pixel values, where the model runs (on its device).

    `x → float32(x) · float32(1/255)` as `rescale_patches` computes it in the front end (the same
    value for every byte, tested): the front end then serialises a quarter of the bytes and
    rescales nothing. A list (patch counts that differ) is converted item by item."""
    import torch

    if isinstance(data, (list, tuple)):
        return [pixels_from_bytes(d) for d in data]
    scale = torch.tensor(BYTE_SCALE, dtype=torch.float32, device=data.device)
    return torch.mul(data.to(torch.float32), scale)


def _parse_inputs_with_bytes(original: Any) -> Any:
    """The model's input parsing, with gemma4u's byte inputs rescaled into vLLM's own names.

    Distinct names keep a batch from ever stacking bytes with vLLM's float32 pixels (its
    batching groups items by their fields)."""

    @functools.wraps(original)
    def parse(self: Any, **kwargs: Any) -> Any:
        for ours, theirs in ((PIXEL_BYTES_KEY, "pixel_values"), (VIDEO_BYTES_KEY, "pixel_values_videos")):
            if (data := kwargs.pop(ours, None)) is not None:
                kwargs[theirs] = pixels_from_bytes(data)
        return original(self, **kwargs)

    parse.gemma4u_bytes = True  # type: ignore[attr-defined]
    return parse


def _fields_factory(data: Mapping[str, Any]) -> Mapping[str, Any]:
    from vllm.multimodal.inputs import MultiModalFieldConfig

    return {key: MultiModalFieldConfig.batched("image") for key in data}


def _audio_fields_factory(data: Mapping[str, Any]) -> Mapping[str, Any]:
    from vllm.multimodal.inputs import MultiModalFieldConfig

    return {
        "input_features_padded": MultiModalFieldConfig.batched("audio"),
        "input_features_mask": MultiModalFieldConfig.batched("audio"),
    }


def _video_fields_factory(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The field layout vLLM's Gemma 4 processor gives its own video output (frames stored
    flat, split per video by their counts)."""
    from vllm.multimodal.inputs import MultiModalFieldConfig

    counts = data["video_frame_counts"]
    pixels = VIDEO_BYTES_KEY if VIDEO_BYTES_KEY in data else "pixel_values_videos"
    return {
        pixels: MultiModalFieldConfig.flat_from_sizes("video", counts),
        "pixel_position_ids_videos": MultiModalFieldConfig.flat_from_sizes("video", counts),
        "video_frame_counts": MultiModalFieldConfig.batched("video", keep_on_cpu=True),
        "video_num_soft_tokens": MultiModalFieldConfig.batched("video", keep_on_cpu=True),
        "video_timestamps": MultiModalFieldConfig.batched("video", keep_on_cpu=True),
    }


def _parser_class() -> Any:
    """vLLM's data parser plus gemma4u's dict forms of an image, an audio clip and a video."""
    from vllm.multimodal.parse import DictEmbeddingItems, MultiModalDataParser

    class Parser(MultiModalDataParser):
        """vLLM's own parser for this model (its settings copied, not restated), plus our forms."""

        def __init__(self, base: MultiModalDataParser, image_processor: Any) -> None:
            self.__dict__.update(base.__dict__)
            self._rescale = functools.partial(rescale_patches, image_processor)
            self._bytes = bytes_match(image_processor)

        def _pixels(self, patches: Any, bytes_key: str, float_key: str) -> tuple[str, Any]:
            """The patches as bytes for the model to rescale, or rescaled here (vLLM's float32)."""
            if self._bytes and _state["bytes"]:
                return bytes_key, patches
            return float_key, self._rescale(patches)

        def _parse_image_data(self, data: Any) -> Any:
            if isinstance(data, dict) and PATCHES_KEY in data:
                key, pixels = self._pixels(data[PATCHES_KEY], PIXEL_BYTES_KEY, "pixel_values")
                items = {key: pixels, "pixel_position_ids": data["pixel_position_ids"]}
                return DictEmbeddingItems(
                    items, modality="image", required_fields=set(items), fields_factory=_fields_factory
                )
            return super()._parse_image_data(data)

        def _parse_audio_data(self, data: Any) -> Any:
            if isinstance(data, dict) and AUDIO_FRAMES_KEY in data:
                items = {
                    "input_features_padded": data[AUDIO_FRAMES_KEY],
                    "input_features_mask": data["input_features_mask"],
                }
                return DictEmbeddingItems(
                    items, modality="audio", required_fields=set(items), fields_factory=_audio_fields_factory
                )
            return super()._parse_audio_data(data)

        def _parse_video_data(self, data: Any) -> Any:
            if isinstance(data, dict) and VIDEO_PATCHES_KEY in data:
                items = {k: data[k] for k in VIDEO_FIELDS if k != "pixel_values_videos"}
                key, pixels = self._pixels(data[VIDEO_PATCHES_KEY], VIDEO_BYTES_KEY, "pixel_values_videos")
                items[key] = pixels
                return DictEmbeddingItems(
                    items, modality="video", required_fields=set(items), fields_factory=_video_fields_factory
                )
            return super()._parse_video_data(data)

    return Parser


def _image_update(images: Any, hf: Any, config: Any) -> Any:
    """The image placeholder for patches: sized from the positions (rows that are not padding)."""
    from vllm.multimodal.processing import PromptReplacement, PromptUpdateDetails

    def image(i: int) -> Any:
        n = int((images.get(i)["pixel_position_ids"][..., 0] >= 0).sum())
        ids = [config.boi_token_id] + [hf.image_token_id] * n + [config.eoi_token_id]
        return PromptUpdateDetails.select_token_id(ids, hf.image_token_id)

    return PromptReplacement(modality="image", target=[hf.image_token_id], replacement=image)


def _audio_update(info: Any, audios: Any, hf: Any) -> Any:
    """vLLM's own audio placeholder, for the samples the frames hold."""
    from vllm.multimodal.processing import PromptReplacement

    def audio(i: int) -> Any:
        samples = int(audios.get(i)["input_features_mask"].sum()) * hf.feature_extractor.audio_samples_per_token
        return info.get_audio_repl(audio_len=samples, processor=hf)

    return PromptReplacement(modality="audio", target=[hf.audio_token_id], replacement=audio)


def _classes() -> tuple[Any, Any]:
    """(processor, info) subclasses of vLLM's Gemma 4 Unified ones (imported on demand)."""
    from vllm.model_executor.models.gemma4_mm import Gemma4MultiModalProcessor
    from vllm.model_executor.models.gemma4_unified import Gemma4UnifiedProcessingInfo
    from vllm.multimodal.parse import DictEmbeddingItems

    parser_class = _parser_class()

    class Info(Gemma4UnifiedProcessingInfo):
        def get_data_parser(self) -> Any:
            return parser_class(super().get_data_parser(), self.get_hf_processor().image_processor)

    class Processor(Gemma4MultiModalProcessor):
        def _get_mm_fields_config(self, hf_inputs: Any, hf_processor_mm_kwargs: Any) -> Any:
            """vLLM's fields plus gemma4u's byte inputs (laid out as the pixels they stand for)."""
            fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
            fields[PIXEL_BYTES_KEY] = fields["pixel_values"]
            if "pixel_values_videos" in fields:
                fields[VIDEO_BYTES_KEY] = fields["pixel_values_videos"]
            return fields

        def _get_prompt_updates(self, mm_items: Any, hf_processor_mm_kwargs: Any, out_mm_kwargs: Any) -> Any:
            updates = list(super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs))
            hf: Any = self.info.get_hf_processor(**hf_processor_mm_kwargs)
            ours = {}
            if isinstance(images := mm_items.get("image"), DictEmbeddingItems):
                ours["image"] = _image_update(images, hf, self.info.get_hf_config())
            if isinstance(audios := mm_items.get("audio"), DictEmbeddingItems):
                ours["audio"] = _audio_update(self.info, audios, hf)
            return [u for u in updates if u.modality not in ours] + list(ours.values())

    return Processor, Info


def register() -> bool:
    """Put the processor on vLLM's Gemma 4 Unified model class. Idempotent; never raises."""
    if _state["registered"]:
        return True
    if disabled():
        _state["reason"] = f"disabled by {DISABLE_ENV}"
        return False
    try:
        from vllm.model_executor.models.gemma4_mm import Gemma4DummyInputsBuilder
        from vllm.model_executor.models.gemma4_unified import Gemma4UnifiedForConditionalGeneration
        from vllm.multimodal import MULTIMODAL_REGISTRY

        processor, info = _classes()
        model_cls: Any = Gemma4UnifiedForConditionalGeneration
        parse = model_cls._parse_and_validate_multimodal_inputs
        if not getattr(parse, "gemma4u_bytes", False):  # in the model's process: bytes → pixel values
            model_cls._parse_and_validate_multimodal_inputs = _parse_inputs_with_bytes(parse)
        if "_processor_factory" in model_cls.__dict__:  # replaced on purpose: no "overwritten" warning
            del model_cls._processor_factory
        MULTIMODAL_REGISTRY.register_processor(processor, info=info, dummy_inputs=Gemma4DummyInputsBuilder)(model_cls)
    except (ImportError, AttributeError, TypeError) as exc:
        _state["reason"] = f"cannot register gemma4u's processed-input processor: {exc!r}"
        log.warning("gemma4u: %s; images are preprocessed by vLLM in the front end", _state["reason"])
        return False
    _state["registered"], _state["reason"] = True, "registered"
    return True

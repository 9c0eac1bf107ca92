"""Patch vLLM 0.32's CPU attention backend to honour Gemma 4's bidirectional image attention.

vLLM's model runner already computes, per request, the token ranges of every image and
video frame (`CommonAttentionMetadata.mm_req_doc_ranges`), and Gemma 4 clears them on its
full-attention layers (`_clear_mm_prefix_for_full_attn_layers`, which looks for the
`mm_prefix_range` attribute on each layer's metadata). The GPU backends apply them in-kernel;
the CPU backend drops them, so image tokens attend causally. This patch:

* `CPUAttentionMetadataBuilder.build` - keep the ranges on the metadata as `mm_prefix_range`
  (the name Gemma 4 clears), for Gemma 4 models with use_bidirectional_attention="vision";
* `CPUAttentionBackendImpl.forward` - run the stock kernel for every row, then recompute
  exactly the rows of image tokens that have later tokens in their own block, with the mask
  of vLLM's Triton kernel (= transformers' `create_masks_for_vision_model`):
  `(causal AND window) OR (same block AND (window if the layer clamps))`, where the window
  is `q - k < sliding_window`. Text rows are never touched. Keys and values are read back
  from the paged cache through a layout learnt by `kv_layout.probe_layout`;
* `CpuPlatform.check_and_update_config` - force `disable_chunked_mm_input` for such models,
  as vLLM does on CUDA and ROCm, so an image span is always prefilled in one step.

Anything it cannot honour (quantized KV cache, attention sinks/ALiBi, a KV-cache group
mixing sliding and full layers, an unknown cache layout, an image span split across steps)
is logged as an error and reported to the front end (see `reports`), never hidden.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from . import reports
from .kv_layout import KVLayout, LayoutError, gather_kv, probe_layout

log = logging.getLogger("vllm.gemma4u_bidi")

PATCH_MARK = "_gemma4u_bidi_patched"
ROW_CHUNK = 512  # query rows per attention block (bounds the score matrix)


@dataclass
class GroupPlan:
    """What the builder of one KV-cache group decided at start-up."""

    honour: bool
    window: int
    clamp: bool | None
    layers: int
    problems: list[str] = field(default_factory=list)


def _warn_once(message: str) -> None:
    reports.note_problem(message)
    _warn_once_logged(message)


@functools.lru_cache(maxsize=256)
def _warn_once_logged(message: str) -> None:
    log.error("gemma4u_bidi: %s", message)


def model_wants_bidirectional(vllm_config: Any) -> bool:
    """Gemma 4 with bidirectional attention among vision tokens (the 12B's setting)."""
    model_config = getattr(vllm_config, "model_config", None)
    if model_config is None:
        return False
    hf_config = getattr(model_config, "hf_config", None)
    model_type = str(getattr(hf_config, "model_type", ""))
    text_config = getattr(model_config, "hf_text_config", None)
    return model_type.startswith("gemma4") and getattr(text_config, "use_bidirectional_attention", None) == "vision"


def _plan_group(builder: Any, kv_cache_spec: Any, layer_names: list[str], vllm_config: Any) -> GroupPlan | None:
    from vllm.config import get_layers_from_vllm_config
    from vllm.model_executor.layers.attention import Attention
    from vllm.utils.torch_utils import is_quantized_kv_cache
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

    if not model_wants_bidirectional(vllm_config):
        return None
    if builder.is_cross_attention or builder.is_encoder_only_attention:
        return None
    layers = {
        name: layer
        for name, layer in get_layers_from_vllm_config(vllm_config, Attention, layer_names).items()
        if isinstance(layer.impl, CPUAttentionBackendImpl)
    }
    if not layers:
        return None
    problems: list[str] = []
    clamps = {bool(getattr(layer, "mm_prefix_clamp_sliding_window", False)) for layer in layers.values()}
    windows = {layer.impl.sliding_window for layer in layers.values()}
    if len(clamps) > 1:
        problems.append(
            "a KV-cache group mixes sliding and full-attention layers; Gemma 4 clears the image ranges "
            "of the whole group, so its sliding layers would attend causally"
        )
    if is_quantized_kv_cache(builder.kv_cache_dtype):
        problems.append(f"KV cache dtype {builder.kv_cache_dtype} is quantized; image rows cannot be recomputed")
    if any(layer.impl.sinks is not None or layer.impl.alibi_slopes is not None for layer in layers.values()):
        problems.append("attention sinks / ALiBi are not supported by the bidirectional recompute")
    head_size = kv_cache_spec.head_size
    dtype = kv_cache_spec.dtype
    layout_name = None
    if not problems:
        try:
            layout_name = probe_layout(builder.isa, dtype, head_size, builder.block_size).name
        except (LayoutError, RuntimeError) as exc:
            problems.append(f"cannot read the CPU KV cache layout (isa={builder.isa}, {dtype}): {exc}")
    clamp = clamps.pop() if len(clamps) == 1 else None
    window = windows.pop() if len(windows) == 1 else -1
    plan = GroupPlan(honour=not problems, window=window, clamp=clamp, layers=len(layers), problems=problems)
    reports.note_group(
        {
            "layers": len(layers),
            "window": window,
            "clamp": clamp,
            "head_size": head_size,
            "isa": builder.isa,
            "kv_layout": layout_name,
            "honour": plan.honour,
            "problems": problems,
        }
    )
    for msg in problems:
        _warn_once(msg)
    return plan


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    softcap: float,
) -> torch.Tensor:
    """q [n, Hq, D], k/v [m, Hkv, D], mask [n, m] (True = visible) -> [n, Hq, D] in fp32."""
    group = q.shape[1] // k.shape[1]
    qf = q.float().transpose(0, 1)
    kf = k.float().transpose(0, 1).repeat_interleave(group, dim=0)
    vf = v.float().transpose(0, 1).repeat_interleave(group, dim=0)
    scores = torch.matmul(qf, kf.transpose(1, 2)) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~mask[None], -math.inf)
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, vf).transpose(0, 1)


def _block_rows_mask(rows: torch.Tensor, keys: torch.Tensor, start: int, end: int, window: int, clamp: bool):
    """vLLM Triton's compute_kv_seq_mask for rows inside the block [start, end]."""
    diff = rows[:, None] - keys[None, :]
    in_window = diff < window if window > 0 else torch.ones_like(diff, dtype=torch.bool)
    base = (diff >= 0) & in_window
    same_block = ((keys >= start) & (keys <= end))[None, :].expand_as(diff)
    if clamp and window > 0:
        same_block = same_block & in_window
    return base | same_block


@dataclass(frozen=True)
class Span:
    """Rows first..last (absolute positions) of request req_idx lie in the block [start, end]."""

    req_idx: int
    start: int
    end: int
    first: int
    last: int
    ctx: int  # absolute position of the request's first query token in this step
    q0: int  # index of that token in the batch
    last_key: int  # last key position present in the KV cache (= end unless the image was split)


def plan_spans(ranges: dict[int, list[tuple[int, int]]], query_start_loc: list[int], seq_lens: list[int]) -> list[Span]:
    """The image rows of this step that have later tokens of their own block (once per step)."""
    spans: list[Span] = []
    num_reqs = len(seq_lens)
    for req_idx, req_ranges in ranges.items():
        if req_idx >= num_reqs or not req_ranges:
            continue
        q0, q1 = query_start_loc[req_idx], query_start_loc[req_idx + 1]
        if q1 <= q0:
            continue
        seq_len = seq_lens[req_idx]
        ctx = seq_len - (q1 - q0)
        for start, end in req_ranges:
            start, end = int(start), int(end)
            if start >= end:  # one-token blocks change nothing (Triton skips them too)
                continue
            first = max(start, ctx)
            last = min(end - 1, seq_len - 1)  # the block's last token sees nothing new
            if first > last:
                continue
            if end > seq_len - 1:
                _warn_once(
                    f"an image span [{start}, {end}] was split across engine steps (only {seq_len} tokens "
                    "scheduled): its early tokens cannot see the rest of the image. Use "
                    "disable_chunked_mm_input=True and a token budget larger than one image"
                )
            spans.append(Span(req_idx, start, end, first, last, ctx, q0, min(end, seq_len - 1)))
    return spans


def apply_bidirectional(
    impl: Any, layer: Any, query: torch.Tensor, kv_cache: torch.Tensor, md: Any, output: torch.Tensor
) -> None:
    """Recompute the planned image rows of `output` with the bidirectional mask."""
    spans: list[Span] = md.gemma4u_spans
    if impl.is_fp8_kv_cache or impl.sinks is not None or impl.alibi_slopes is not None:
        _warn_once("image rows left causal: quantized KV cache, sinks or ALiBi in use")
        return
    _, _, block_size, two_hs = kv_cache.shape
    try:
        layout: KVLayout = probe_layout(layer.isa, kv_cache.dtype, two_hs // 2, block_size)
    except (LayoutError, RuntimeError) as exc:
        _warn_once(f"image rows left causal: unknown KV cache layout ({exc})")
        return
    window = int(impl.sliding_window)
    clamp = bool(getattr(layer, "mm_prefix_clamp_sliding_window", False))
    softcap = float(impl.logits_soft_cap or 0)
    corrected = 0
    resumed = 0
    for sp in spans:
        resumed += sp.ctx > 0
        hi = sp.last_key
        for r0 in range(sp.first, sp.last + 1, ROW_CHUNK):
            r1 = min(sp.last, r0 + ROW_CHUNK - 1)
            # Oldest key any of these rows may see: the window's start, or the block's start
            # when the block is not clamped to the window.
            lo = max(0, r0 - window + 1 if clamp else min(r0 - window + 1, sp.start)) if window > 0 else 0
            keys_k, keys_v = gather_kv(kv_cache, md.block_table[sp.req_idx], lo, hi, layout)
            mask = _block_rows_mask(torch.arange(r0, r1 + 1), torch.arange(lo, hi + 1), sp.start, sp.end, window, clamp)
            t0, t1 = sp.q0 + (r0 - sp.ctx), sp.q0 + (r1 - sp.ctx) + 1
            output[t0:t1] = _attend(query[t0:t1], keys_k, keys_v, mask, impl.scale, softcap).to(output.dtype)
            corrected += r1 - r0 + 1
    if corrected:
        reports.note_correction(corrected, resumed)


def _patched_init(orig_init: Any) -> Any:
    """Builder __init__ that also plans its KV-cache group once, at engine start-up."""

    @functools.wraps(orig_init)
    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        orig_init(self, kv_cache_spec, layer_names, vllm_config, device)
        try:
            self._gemma4u_plan = _plan_group(self, kv_cache_spec, layer_names, vllm_config)
        except Exception as exc:  # never break engine start-up; report instead
            self._gemma4u_plan = GroupPlan(False, -1, None, 0, [f"plan failed: {exc!r}"])
            _warn_once(f"bidirectional image attention disabled for a layer group: {exc!r}")

    return __init__


def _patched_build(orig_build: Any) -> Any:
    """Builder build that keeps the image ranges on the metadata (where Gemma 4 clears
    them for full-attention layers) and plans the rows to recompute once per step."""

    @functools.wraps(orig_build)
    def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
        reports.flush()  # counters of the previous step, if it recomputed image rows
        md = orig_build(self, common_prefix_len, common_attn_metadata, fast_build)
        md.mm_prefix_range = None  # the attribute Gemma 4 clears on its full-attention layers
        md.gemma4u_spans = []
        plan = getattr(self, "_gemma4u_plan", None)
        ranges = common_attn_metadata.mm_req_doc_ranges
        if plan is None or not ranges or not any(ranges.values()):
            return md
        if not plan.honour:
            for msg in plan.problems:
                _warn_once(f"image tokens attend causally: {msg}")
            return md
        spans = plan_spans(ranges, common_attn_metadata.query_start_loc_cpu.tolist(), md.seq_lens.cpu().tolist())
        if spans:  # nothing to do on steps without image rows (e.g. decode)
            md.mm_prefix_range = ranges
            md.gemma4u_spans = spans
        return md

    return build


def _patched_forward(orig_forward: Any) -> Any:
    """Backend forward that runs the stock kernel, then recomputes the planned image rows
    of layers whose ranges Gemma 4 left in place."""

    @functools.wraps(orig_forward)
    def forward(
        self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None, output_block_scale=None
    ):
        result = orig_forward(
            self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale, output_block_scale
        )
        if (
            attn_metadata is not None
            and getattr(attn_metadata, "mm_prefix_range", None)
            and getattr(attn_metadata, "gemma4u_spans", None)
        ):
            apply_bidirectional(self, layer, query, kv_cache, attn_metadata, output)
        return result

    return forward


def _patched_check(orig_check: Any) -> Any:
    """Platform config check that also forces disable_chunked_mm_input, as vLLM does on
    CUDA and ROCm, so an image span is always prefilled in one step."""

    def check_and_update_config(cls, vllm_config):
        orig_check(cls, vllm_config)
        sched = vllm_config.scheduler_config
        model_config = vllm_config.model_config
        if (
            model_config is not None
            and model_config.is_mm_prefix_lm
            and getattr(sched, "is_multimodal_model", False)
            and not sched.disable_chunked_mm_input
        ):
            log.warning("gemma4u_bidi: forcing disable_chunked_mm_input for bidirectional image attention")
            sched.disable_chunked_mm_input = True

    return check_and_update_config


def apply_patch(vllm_version: str) -> bool:
    """Patch the CPU backend and platform once per process. Returns True if (already) patched."""
    from vllm.platforms.cpu import CpuPlatform
    from vllm.v1.attention.backends import cpu_attn

    builder_cls = cpu_attn.CPUAttentionMetadataBuilder
    impl_cls = cpu_attn.CPUAttentionBackendImpl
    if getattr(builder_cls, PATCH_MARK, False):
        return True

    orig_check = CpuPlatform.__dict__["check_and_update_config"].__func__
    builder_cls.__init__ = _patched_init(builder_cls.__init__)
    builder_cls.build = _patched_build(builder_cls.build)
    impl_cls.forward = _patched_forward(impl_cls.forward)
    CpuPlatform.check_and_update_config = classmethod(_patched_check(orig_check))
    setattr(builder_cls, PATCH_MARK, True)
    reports.note_patched(vllm_version)
    return True

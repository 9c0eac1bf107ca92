"""Read keys and values back out of vLLM's CPU paged KV cache.

The CPU attention kernels store each (block, kv-head) slab in an ISA-specific order (on
x86 "vec"/"vec16" the keys are transposed to [head_size, block_size]; AMX and NEON may
differ). Rather than hard-code those orders, `probe_layout` writes known patterns through
vLLM's own `cpu_attn_reshape_and_cache` and learns the permutation, then checks it on
random data. A layout it cannot learn is reported, never guessed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVLayout:
    """Per-slab permutations: logical index t*head_size + d -> flat index in the slab."""

    block_size: int
    head_size: int
    key_perm: torch.Tensor | None  # None: plain [block_size, head_size]
    value_perm: torch.Tensor | None
    name: str


class LayoutError(RuntimeError):
    pass


def _cache_views(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value views the way CPUAttentionBackendImpl makes them."""
    num_blocks, num_kv_heads, block_size, _ = kv_cache.size()
    kv = kv_cache.view((num_blocks, num_kv_heads, block_size * 2, -1))
    key_cache, value_cache = kv.chunk(2, dim=2)
    return key_cache, value_cache


def _learn_perm(slab_codes: list[torch.Tensor], block_size: int, head_size: int) -> torch.Tensor:
    """slab_codes: per flat slot of one slab, the (t, d_lo, d_hi) codes that landed there."""
    t, d_lo, d_hi = (c.round().long() for c in slab_codes)
    d = d_hi * 16 + d_lo
    if bool(((t < 0) | (t >= block_size) | (d < 0) | (d >= head_size)).any()):
        raise LayoutError("slab holds slots the probe did not write")
    logical = t * head_size + d
    if torch.unique(logical).numel() != block_size * head_size:
        raise LayoutError("slab is not a permutation of one block")
    perm = torch.empty_like(logical)
    perm[logical] = torch.arange(logical.numel())
    return perm


_PROBE_BLOCKS, _PROBE_HEADS = 2, 2  # the probe cache: enough to tell blocks and heads apart


def _write_probes(
    write: Callable[..., None], isa: str, dtype: torch.dtype, head_size: int, block_size: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Caches written through the kernel, one per coordinate (token, dim low/high part,
    block*heads+head) used as the value: where each value lands says where the kernel
    stores that slot. Dims are split in two so bf16/fp16 hold every code exactly."""
    n = _PROBE_BLOCKS * block_size
    slots = torch.arange(n, dtype=torch.long)
    tok = (slots % block_size).to(torch.float32)
    blk = (slots // block_size).to(torch.float32)
    dims = torch.arange(head_size, dtype=torch.float32)
    heads = torch.arange(_PROBE_HEADS, dtype=torch.float32)
    shape = (n, _PROBE_HEADS, head_size)
    patterns = {
        "t": tok[:, None, None].expand(shape),
        "d_lo": (dims % 16)[None, None, :].expand(shape),
        "d_hi": torch.div(dims, 16, rounding_mode="floor")[None, None, :].expand(shape),
        "bh": (blk[:, None, None] * _PROBE_HEADS + heads[None, :, None]).expand(shape),
    }
    written: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, pat in patterns.items():
        cache = torch.full((_PROBE_BLOCKS, _PROBE_HEADS, block_size, 2 * head_size), -1.0, dtype=dtype)
        kc, vc = _cache_views(cache)
        src = pat.contiguous().to(dtype)
        write(src, src.clone(), kc, vc, slots, isa)
        written[name] = (kc.float(), vc.float())
    return written


def _slab_perm(
    written: dict[str, tuple[torch.Tensor, torch.Tensor]], which: int, block_size: int, head_size: int
) -> torch.Tensor | None:
    """The one permutation every slab of the key (0) or value (1) cache uses, None when
    it is the plain order; slabs that disagree mean a layout we cannot read."""
    found: torch.Tensor | None = None
    for b in range(_PROBE_BLOCKS):
        for h in range(_PROBE_HEADS):
            codes = [written[k][which][b, h].reshape(-1) for k in ("t", "d_lo", "d_hi")]
            if not bool((written["bh"][which][b, h] == b * _PROBE_HEADS + h).all()):
                raise LayoutError("a slab mixes blocks or heads")
            perm = _learn_perm(codes, block_size, head_size)
            if found is None:
                found = perm
            elif not torch.equal(found, perm):
                raise LayoutError("slabs of one cache use different layouts")
    assert found is not None
    plain = torch.equal(found, torch.arange(found.numel()))
    return None if plain else found


def _check_round_trip(write: Callable[..., None], isa: str, dtype: torch.dtype, layout: KVLayout) -> None:
    """Random data through the kernel into scattered slots and back out through
    gather_kv: the reader is proven before it is trusted."""
    n = _PROBE_BLOCKS * layout.block_size
    gen = torch.Generator().manual_seed(0)
    cache = torch.zeros((_PROBE_BLOCKS, _PROBE_HEADS, layout.block_size, 2 * layout.head_size), dtype=dtype)
    kc, vc = _cache_views(cache)
    order = torch.randperm(n, generator=gen)
    key = torch.randn(n, _PROBE_HEADS, layout.head_size, generator=gen).to(dtype)
    value = torch.randn(n, _PROBE_HEADS, layout.head_size, generator=gen).to(dtype)
    write(key, value, kc, vc, order, isa)
    table = torch.arange(_PROBE_BLOCKS, dtype=torch.int32)
    got_k, got_v = gather_kv(cache, table, 0, n - 1, layout)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(n)
    if not (torch.equal(got_k, key[inv]) and torch.equal(got_v, value[inv])):
        raise LayoutError("round trip through the learnt layout failed")


@functools.lru_cache(maxsize=64)
def probe_layout(isa: str, dtype: torch.dtype, head_size: int, block_size: int) -> KVLayout:
    """Learn how `cpu_attn_reshape_and_cache` lays out one (block, head) slab for this ISA."""
    from vllm import _custom_ops as ops

    if block_size > 256 or head_size > 512:
        raise LayoutError(f"probe cannot encode block_size={block_size}, head_size={head_size} exactly")
    write = ops.cpu_attn_reshape_and_cache
    written = _write_probes(write, isa, dtype, head_size, block_size)
    key_perm, value_perm = (_slab_perm(written, which, block_size, head_size) for which in (0, 1))
    layout = KVLayout(
        block_size=block_size,
        head_size=head_size,
        key_perm=key_perm,
        value_perm=value_perm,
        name=f"{isa}/{str(dtype).removeprefix('torch.')}/k:{'plain' if key_perm is None else 'permuted'}"
        f"/v:{'plain' if value_perm is None else 'permuted'}",
    )
    _check_round_trip(write, isa, dtype, layout)
    return layout


def gather_kv(
    kv_cache: torch.Tensor, block_table_row: torch.Tensor, lo: int, hi: int, layout: KVLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of token positions lo..hi (inclusive) of one request: [n, kv_heads, head_size]."""
    key_cache, value_cache = _cache_views(kv_cache)
    bs, hs = layout.block_size, layout.head_size
    pos = torch.arange(lo, hi + 1, dtype=torch.long)
    blocks = block_table_row[pos // bs].long()
    offsets = pos % bs
    uniq, inv = torch.unique(blocks, return_inverse=True)
    out = []
    for cache, perm in ((key_cache, layout.key_perm), (value_cache, layout.value_perm)):
        slabs = cache[uniq]  # [u, heads, bs, hs] (a copy)
        if perm is not None:
            slabs = slabs.reshape(slabs.shape[0], slabs.shape[1], bs * hs)[:, :, perm]
            slabs = slabs.view(slabs.shape[0], slabs.shape[1], bs, hs)
        out.append(slabs[inv, :, offsets, :])
    return out[0], out[1]

"""Read keys and values back out of vLLM's CPU paged KV cache.

The CPU attention kernels store each (block, kv-head) slab in an ISA-specific order (on
x86 "vec"/"vec16" the keys are transposed to [head_size, block_size]; AMX and NEON may
differ). Rather than hard-code those orders, `probe_layout` writes known patterns through
vLLM's own `cpu_attn_reshape_and_cache` and learns the permutation, then checks it on
random data. A layout it cannot learn is reported, never guessed.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=64)
def probe_layout(isa: str, dtype: torch.dtype, head_size: int, block_size: int) -> KVLayout:
    """Learn how `cpu_attn_reshape_and_cache` lays out one (block, head) slab for this ISA."""
    from vllm import _custom_ops as ops

    if block_size > 256 or head_size > 512:
        raise LayoutError(f"probe cannot encode block_size={block_size}, head_size={head_size} exactly")
    num_blocks, num_heads = 2, 2
    n = num_blocks * block_size
    slots = torch.arange(n, dtype=torch.long)
    tok = (slots % block_size).to(torch.float32)
    blk = (slots // block_size).to(torch.float32)
    dims = torch.arange(head_size, dtype=torch.float32)
    heads = torch.arange(num_heads, dtype=torch.float32)
    patterns = {
        "t": tok[:, None, None].expand(n, num_heads, head_size),
        "d_lo": (dims % 16)[None, None, :].expand(n, num_heads, head_size),
        "d_hi": torch.div(dims, 16, rounding_mode="floor")[None, None, :].expand(n, num_heads, head_size),
        "bh": (blk[:, None, None] * num_heads + heads[None, :, None]).expand(n, num_heads, head_size),
    }
    written: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, pat in patterns.items():
        cache = torch.full((num_blocks, num_heads, block_size, 2 * head_size), -1.0, dtype=dtype)
        kc, vc = _cache_views(cache)
        src = pat.contiguous().to(dtype)
        ops.cpu_attn_reshape_and_cache(src, src.clone(), kc, vc, slots, isa)
        written[name] = (kc.float(), vc.float())

    perms: list[torch.Tensor | None] = []
    for which in (0, 1):  # key, value
        found: torch.Tensor | None = None
        for b in range(num_blocks):
            for h in range(num_heads):
                codes = [written[k][which][b, h].reshape(-1) for k in ("t", "d_lo", "d_hi")]
                if not bool((written["bh"][which][b, h] == b * num_heads + h).all()):
                    raise LayoutError("a slab mixes blocks or heads")
                perm = _learn_perm(codes, block_size, head_size)
                if found is None:
                    found = perm
                elif not torch.equal(found, perm):
                    raise LayoutError("slabs of one cache use different layouts")
        assert found is not None
        plain = torch.equal(found, torch.arange(found.numel()))
        perms.append(None if plain else found)

    layout = KVLayout(
        block_size=block_size,
        head_size=head_size,
        key_perm=perms[0],
        value_perm=perms[1],
        name=f"{isa}/{str(dtype).removeprefix('torch.')}/k:{'plain' if perms[0] is None else 'permuted'}"
        f"/v:{'plain' if perms[1] is None else 'permuted'}",
    )
    # Round trip on random data, scattered slots, to prove the reader.
    gen = torch.Generator().manual_seed(0)
    cache = torch.zeros((num_blocks, num_heads, block_size, 2 * head_size), dtype=dtype)
    kc, vc = _cache_views(cache)
    order = torch.randperm(n, generator=gen)
    key = torch.randn(n, num_heads, head_size, generator=gen).to(dtype)
    value = torch.randn(n, num_heads, head_size, generator=gen).to(dtype)
    ops.cpu_attn_reshape_and_cache(key, value, kc, vc, order, isa)
    table = torch.arange(num_blocks, dtype=torch.int32)
    got_k, got_v = gather_kv(cache, table, 0, n - 1, layout)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(n)
    if not (torch.equal(got_k, key[inv]) and torch.equal(got_v, value[inv])):
        raise LayoutError("round trip through the learnt layout failed")
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

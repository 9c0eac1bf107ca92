"""Images patchified in the decode workers (decode/patches.py) are exactly what vLLM's own
processor makes, and the engine gives the same text for them as for the image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gemma4u_batch.decode import decode_item
from gemma4u_batch.decode.image import target_size
from gemma4u_batch.decode.options import DecodeOptions
from gemma4u_batch.decode.patches import ImagePatches, image_patches
from gemma4u_batch.engine.plugin import processed
from gemma4u_batch.records import Modality, WorkItem

from .helpers import jpeg_bytes, make_video, photo

BUDGETS = (70, 140, 280, 560, 1120)
SIZES = ((512, 512), (4032, 3024), (333, 97), (50, 700), (1, 1), (7001, 13))


@pytest.fixture(scope="module")
def hf_image_processor(tiny_model: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model).image_processor


def _rescaled(proc, patches: ImagePatches) -> torch.Tensor:
    return processed.rescale_patches(proc, torch.from_numpy(patches.patches))


def test_rescaling_patches_gives_the_processors_value_for_every_byte(hf_image_processor) -> None:
    every = torch.arange(256, dtype=torch.uint8).reshape(1, 256)
    expected = hf_image_processor.rescale(every, hf_image_processor.rescale_factor)  # what it does to uint8 pixels
    assert expected.dtype == torch.float32
    assert torch.equal(processed.rescale_patches(hf_image_processor, every), expected)


def test_pixel_bytes_become_the_processors_value_for_every_byte_where_the_model_runs(hf_image_processor) -> None:
    """Patches cross to the engine as bytes; the model's process rescales them to exactly the
    processor's float32 values (its input parsing, patched by the plugin, does it)."""
    every = torch.arange(256, dtype=torch.uint8).reshape(1, 256)
    expected = hf_image_processor.rescale(every, hf_image_processor.rescale_factor)
    assert processed.bytes_match(hf_image_processor)
    assert torch.equal(processed.pixels_from_bytes(every), expected)
    assert all(torch.equal(a, expected) for a in processed.pixels_from_bytes([every, every]))
    from vllm.model_executor.models.gemma4_unified import Gemma4UnifiedForConditionalGeneration as Model

    assert processed.register()
    seen = {}
    parse = processed._parse_inputs_with_bytes(lambda self, **kw: seen.update(kw))
    parse(None, **{processed.PIXEL_BYTES_KEY: every, "pixel_position_ids": every})
    assert set(seen) == {"pixel_values", "pixel_position_ids"} and torch.equal(seen["pixel_values"], expected)
    assert getattr(Model._parse_and_validate_multimodal_inputs, "gemma4u_bytes", False)


@pytest.mark.parametrize("budget", BUDGETS)
def test_patches_equal_the_processor_output(hf_image_processor, budget: int) -> None:
    """For every token budget and odd sizes (including those the processor resizes again),
    pixel values, positions and token counts equal vLLM's processor call, bit for bit."""
    base = photo()
    opts = DecodeOptions(image_tokens=budget)
    for w, h in SIZES:
        img = base.resize((w, h)).resize(target_size(w, h, opts))  # what the decoder hands on
        ref = hf_image_processor(images=[img], max_soft_tokens=budget, return_tensors="pt")
        got = image_patches(img, budget=budget, patch_size=16, pooling=3, content_id="c")
        assert got.patches.dtype == np.uint8 and got.patches.shape == tuple(ref["pixel_values"][0].shape)
        assert torch.equal(_rescaled(hf_image_processor, got), ref["pixel_values"][0]), (budget, w, h)
        assert torch.equal(torch.from_numpy(got.positions), ref["image_position_ids"][0]), (budget, w, h)
        assert got.num_tokens == int(ref["num_soft_tokens_per_image"][0])


def test_decode_item_sends_patches_with_an_id_of_content_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_bytes(photo().resize((640, 480))))
    item = WorkItem(id="a.jpg", source=str(path), modality=Modality.IMAGE, path=path)
    plain = decode_item(item, DecodeOptions())
    d = decode_item(item, DecodeOptions(patches=True))
    assert isinstance(plain.image, Image.Image) and isinstance(d.image, ImagePatches)
    assert d.info["num_tokens"] == d.image.num_tokens == int((d.image.positions[:, 0] >= 0).sum())
    assert d.image.uuid.startswith(f"gemma4u-image:{d.content_sha256}:") and d.image.uuid.endswith(":280:v1")
    other = decode_item(item, DecodeOptions(patches=True, image_tokens=70))
    assert other.image.uuid != d.image.uuid  # another budget is another input to the engine


def test_processor_settings_the_workers_do_not_reproduce_keep_vllms_path(tiny_model: Path) -> None:
    config = json.loads((tiny_model / "processor_config.json").read_text())
    assert processed.processor_compatible(config) is None
    changed = {**config, "image_processor": {**config["image_processor"], "do_normalize": True}}
    assert "do_normalize=True" in str(processed.processor_compatible(changed))
    changed = {**config, "feature_extractor": {**config["feature_extractor"], "audio_samples_per_token": 320}}
    assert "audio_samples_per_token=320" in str(processed.processor_compatible(changed))


def test_disabled_or_other_models_use_vllms_processor(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    from gemma4u_batch.engine.inputs import patches_unsupported

    assert patches_unsupported(str(tiny_model)) is None
    monkeypatch.setenv(processed.DISABLE_ENV, "1")
    assert "disabled by" in str(patches_unsupported(str(tiny_model)))
    monkeypatch.delenv(processed.DISABLE_ENV)
    other = tmp_path / "m"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    assert "is not gemma4_unified" in str(patches_unsupported(str(other)))


@pytest.mark.engine
def test_engine_gives_the_same_tokens_for_patches_and_for_the_image(shared_engine) -> None:
    """The plugin's processed-input path through the real engine: same prompt length
    (placeholder sized from the positions) and the same greedy tokens as vLLM's own path."""
    from gemma4u_batch.config.job import SamplingConfig
    from gemma4u_batch.prompting.units import EngineRequest

    assert shared_engine.accepts_patches
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    prompt = shared_engine.render_prompt(msgs)
    sampling = SamplingConfig(max_tokens=12, temperature=0.0, logprobs=0)  # the generated tokens' texts
    images = [photo().resize(target_size(w, h, DecodeOptions())) for w, h in ((640, 480), (333, 97), (97, 333))]
    try:
        for i, img in enumerate(images):
            assert shared_engine.add(EngineRequest(f"pil{i}", prompt, {"image": img}, sampling)) is None
            for form, as_bytes in (("bytes", True), ("floats", False)):  # bytes: the default
                processed.send_bytes(as_bytes)
                patches = image_patches(img, budget=280, patch_size=16, pooling=3, content_id=f"t{i}{form}")
                assert shared_engine.add(EngineRequest(f"{form}{i}", prompt, {"image": patches}, sampling)) is None
    finally:
        processed.send_bytes(True)
    results = {}
    while shared_engine.has_unfinished():
        for r in shared_engine.step():
            results[r.request.request_id] = _tokens(r.generation)
    for i in range(len(images)):
        a = results[f"pil{i}"]
        assert len(a[1]) > 0
        for b in (results[f"bytes{i}"], results[f"floats{i}"]):
            assert a == b


@pytest.mark.engine
def test_patches_reach_the_engine_as_bytes(shared_engine) -> None:
    """What the front end hands vLLM's core for an image: the uint8 patches under gemma4u's
    name (a quarter of float32's bytes, nothing rescaled in the feeding process)."""
    from gemma4u_batch.engine.inputs import render, vllm_prompt

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    patches = image_patches(photo(), budget=70, patch_size=16, pooling=3, content_id="bytes-check")
    rendered = render(shared_engine._llm, vllm_prompt(shared_engine.render_prompt(msgs), {"image": patches}))
    (item,) = rendered["mm_kwargs"]["image"]
    assert set(item) == {processed.PIXEL_BYTES_KEY, "pixel_position_ids"}
    data = item[processed.PIXEL_BYTES_KEY].data
    assert data.dtype == torch.uint8 and torch.equal(data, torch.from_numpy(patches.patches))


@pytest.mark.engine
def test_a_prompt_is_tokenised_once_and_renders_as_its_text(shared_engine, monkeypatch) -> None:
    """Items that share a prompt: vLLM's renderer tokenises it once, not once per item, and the
    engine input made from the kept token ids is the one vLLM makes from the text (prompt
    tokens, placeholders, media ids)."""
    from gemma4u_batch.config.job import SamplingConfig
    from gemma4u_batch.engine.inputs import render, vllm_prompt
    from gemma4u_batch.prompting.units import EngineRequest

    shared_engine._ensure_started()
    llm = shared_engine._llm
    renderer = llm.renderer
    tokenised: list[str] = []
    tokenise = renderer._tokenize_prompt

    def counted(prompt, params):  # type: ignore[no-untyped-def]
        tokenised.append(prompt["prompt"])
        return tokenise(prompt, params)

    monkeypatch.setattr(renderer, "_tokenize_prompt", counted)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Tokenised once?"}]}]
    prompt = shared_engine.render_prompt(msgs)
    sampling = SamplingConfig(max_tokens=4, temperature=0.0)
    for i in range(3):
        patches = image_patches(photo(), budget=70, patch_size=16, pooling=3, content_id=f"once{i}")
        assert shared_engine.add(EngineRequest(f"once{i}", prompt, {"image": patches}, sampling)) is None
    while shared_engine.has_unfinished():
        shared_engine.step()
    assert tokenised == [prompt]

    patches = image_patches(photo(), budget=70, patch_size=16, pooling=3, content_id="as-text")
    by_text = render(llm, vllm_prompt(prompt, {"image": patches}))
    kept = list(shared_engine._prompt_token_ids(prompt))
    by_ids = render(llm, {**vllm_prompt(prompt, {"image": patches}), "prompt_token_ids": kept})
    assert len(tokenised) == 2  # the text path tokenised; the kept ids were not tokenised again
    for key in ("prompt", "prompt_token_ids", "mm_placeholders", "mm_hashes"):
        assert by_ids[key] == by_text[key], key


def _tokens(generation) -> tuple[int, list[str]]:
    """A finished request's prompt length and generated tokens (it asked for their texts)."""
    return generation.num_prompt_tokens, [t["token"] for t in generation.token_logprobs]


def _same_tokens(engine, prompt: str, pairs: dict[str, dict]) -> dict:
    """Send each named media dict with `prompt` greedily; each one's (prompt length, tokens)."""
    from gemma4u_batch.config.job import SamplingConfig
    from gemma4u_batch.prompting.units import EngineRequest

    sampling = SamplingConfig(max_tokens=12, temperature=0.0, logprobs=0)
    for rid, media in pairs.items():
        assert engine.add(EngineRequest(rid, prompt, media, sampling)) is None
    results = {}
    while engine.has_unfinished():
        for r in engine.step():
            results[r.request.request_id] = _tokens(r.generation)
    return results


@pytest.mark.engine
def test_engine_gives_the_same_tokens_for_frame_patches_and_for_the_frames(shared_engine, tmp_path: Path) -> None:
    """A video whose frames were patchified in the workers: same prompt (frame timestamps and
    soft tokens) and the same greedy tokens as vLLM's own video path, for an odd frame size."""
    from gemma4u_batch.prompting.units import build_parts

    path = tmp_path / "v.mp4"
    make_video(path, "mp4", "h264", n=30, w=202, h=58, noise=True)
    item = WorkItem(id="v.mp4", source=str(path), modality=Modality.VIDEO, path=path)
    media = {}
    for name, opts in (
        ("frames", DecodeOptions(video_frames=6)),
        ("patches", DecodeOptions(video_frames=6, patches=True)),
    ):
        d = decode_item(item, opts)
        assert d.error is None, d.error
        (part,) = build_parts(d, windowed_audio=False, opts=opts)
        media[name] = part.mm
    assert all(isinstance(f, ImagePatches) for f in media["patches"]["video"][0])
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe."}]}]
    out = _same_tokens(shared_engine, shared_engine.render_prompt(msgs), media)
    assert out["frames"] == out["patches"] and len(out["frames"][1]) > 0


@pytest.mark.engine
def test_frame_patches_equal_vllms_video_tensors(shared_engine, tmp_path: Path) -> None:
    """What vLLM's front end hands its core for a video, through its own processor (frames as
    images) and through the plugin (frames patchified in the workers): the same pixel values
    once the model's process rescales the bytes, the same positions, frame counts, soft tokens
    and timestamps, and the same prompt, for an odd frame size and a 32-frame video."""
    from gemma4u_batch.engine.inputs import render, vllm_prompt
    from gemma4u_batch.prompting.units import build_parts

    shared_engine._ensure_started()
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe."}]}]
    prompt = shared_engine.render_prompt(msgs)
    for n, frames, w, h in ((30, 6, 202, 58), (40, 32, 96, 64)):
        path = tmp_path / f"v{n}.mp4"
        make_video(path, "mp4", "h264", n=n, w=w, h=h, noise=True)
        item = WorkItem(id=path.name, source=str(path), modality=Modality.VIDEO, path=path)
        rendered = {}
        for name, patches in (("vllm", False), ("plugin", True)):
            opts = DecodeOptions(video_frames=frames, patches=patches)
            d = decode_item(item, opts)
            assert d.error is None, d.error
            (part,) = build_parts(d, windowed_audio=False, opts=opts)
            rendered[name] = render(shared_engine._llm, vllm_prompt(prompt, part.mm))
        ours, theirs = rendered["plugin"], rendered["vllm"]
        assert list(ours["prompt_token_ids"]) == list(theirs["prompt_token_ids"])
        (a,), (b,) = theirs["mm_kwargs"]["video"], ours["mm_kwargs"]["video"]
        assert set(b) == {processed.VIDEO_BYTES_KEY, *set(a) - {"pixel_values_videos"}}
        raw = b[processed.VIDEO_BYTES_KEY].data
        assert raw.dtype == torch.uint8 and a["pixel_values_videos"].data.shape[0] == frames
        assert torch.equal(processed.pixels_from_bytes(raw), a["pixel_values_videos"].data), (n, frames)
        for key in set(a) - {"pixel_values_videos"}:
            x, y = a[key].data, b[key].data
            assert torch.equal(torch.as_tensor(x), torch.as_tensor(y)) if not isinstance(x, list) else x == y, key


@pytest.mark.parametrize("tokens", [1, 37, 749, 750])
def test_audio_frames_equal_the_feature_extractor_output(tiny_model: Path, tokens: int) -> None:
    """The framing handed to vLLM is the feature extractor's own, at the boundaries (one token,
    a full 30-s window) and in between; a clip that is not whole frames is left to vLLM."""
    from transformers import AutoProcessor

    from gemma4u_batch.engine.inputs import audio_frames

    extractor = AutoProcessor.from_pretrained(tiny_model).feature_extractor
    clip = np.random.default_rng(tokens).standard_normal(tokens * 640).astype(np.float32)
    ref = extractor([clip], sampling_rate=16000, return_tensors="pt")
    got = audio_frames(clip)
    assert got is not None
    assert torch.equal(got[processed.AUDIO_FRAMES_KEY], ref["input_features"])
    assert torch.equal(got["input_features_mask"], ref["input_features_mask"])
    assert audio_frames(clip[:-1]) is None and audio_frames(clip[:0]) is None


@pytest.mark.engine
def test_engine_gives_the_same_tokens_for_audio_frames_and_for_the_waveform(shared_engine) -> None:
    from vllm import SamplingParams

    from gemma4u_batch.engine.inputs import render, vllm_prompt

    shared_engine._ensure_started()
    llm = shared_engine._llm
    msgs = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe."}]}]
    prompt = shared_engine.render_prompt(msgs)
    params = SamplingParams(max_tokens=12, temperature=0.0)
    rng = np.random.default_rng(3)
    for tokens in (1, 25, 750):
        clip = (0.1 * rng.standard_normal(tokens * 640)).astype(np.float32)
        for name, frames in (("wave", False), ("frames", True)):
            p = vllm_prompt(prompt, {"audio": (clip, 16000)}, processed_audio=frames)
            assert isinstance(p["multi_modal_data"]["audio"], dict) == frames  # the plugin's input, or vLLM's
            llm.add_request(f"{name}{tokens}", render(llm, p), params)
    out = {}
    while llm.has_unfinished_requests():
        for o in llm.step():
            if o.finished:
                out[o.request_id] = o
    for tokens in (1, 25, 750):
        a, b = out[f"wave{tokens}"], out[f"frames{tokens}"]
        assert list(a.prompt_token_ids) == list(b.prompt_token_ids)
        assert list(a.outputs[0].token_ids) == list(b.outputs[0].token_ids)

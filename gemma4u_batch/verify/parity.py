"""Parity check: the same prompts through vLLM and through transformers, compared token by token.

`verify_model` renders a text, an image, a two-image, an audio and a video prompt with the
model's chat template, runs them as one batch through a vLLM engine (greedy, top-20
logprobs) and one by one through transformers' Gemma4UnifiedForConditionalGeneration, and
reports per prompt the largest |Δ logprob| and whether the greedy continuations agree.

The transformers reference uses the official Gemma 4 attention semantics for vision
(`create_masks_for_vision_model`: full-attention layers causal, sliding layers
`(causal OR same image block) AND window`, each video frame its own block), not the
default `forward` of transformers 5.19, which also opens image blocks on full layers.
Greedy steps are recomputed from scratch (no cache), so the reference is as plain as it
gets. Compare in float32: in bf16 both sides round differently and 1e-4 is out of reach.

Media are synthetic and deterministic. Audio is zero-padded to a multiple of 640 samples
before either side sees it: vLLM 0.32 miscounts the audio tokens of other lengths, and
transformers pads the last 640-sample frame with zeros itself, so padding changes nothing
on the reference side.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

DEFAULT_TOLERANCE = 1e-4
DEFAULT_MAX_TOKENS = 16
TOP_LOGPROBS = 20
AUDIO_SAMPLES_PER_TOKEN = 640
AUDIO_RATE = 16000
VIDEO_FPS = 2.0


# --------------------------------------------------------------------------- media


def synthetic_image(width: int, height: int, seed: int):
    """A smooth pattern plus noise: every patch differs, so attention has something to mix."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    freq = rng.uniform(0.01, 0.06, size=(3, 2))
    chans = [
        127 + 90 * np.sin(freq[c, 0] * x + freq[c, 1] * y + phase[c]) + rng.normal(0, 20, size=x.shape)
        for c in range(3)
    ]
    arr = np.clip(np.stack(chans, axis=-1), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def synthetic_audio(num_samples: int, seed: int) -> np.ndarray:
    """A chirp with noise, float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples, dtype=np.float64) / AUDIO_RATE
    wave = 0.3 * np.sin(2 * np.pi * (220 + 200 * t) * t) + 0.05 * rng.normal(size=num_samples)
    return wave.astype(np.float32)


def pad_audio(wave: np.ndarray) -> np.ndarray:
    """Zero-pad to a multiple of 640 samples (one audio token)."""
    extra = (-len(wave)) % AUDIO_SAMPLES_PER_TOKEN
    return np.pad(wave, (0, extra)) if extra else wave


def synthetic_video(num_frames: int, height: int, width: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Frames [T, H, W, 3] uint8 and the metadata both vLLM and transformers use for timestamps."""
    frames = np.stack([np.asarray(synthetic_image(width, height, seed * 100 + i)) for i in range(num_frames)])
    meta = {
        "fps": VIDEO_FPS,
        "duration": num_frames / VIDEO_FPS,
        "total_num_frames": num_frames,
        "frames_indices": list(range(num_frames)),
        "video_backend": "opencv",
        "do_sample_frames": False,
    }
    return frames, meta


@dataclass
class Case:
    """One prompt: chat content plus the media it refers to."""

    name: str
    modality: str
    content: list[dict[str, Any]]
    images: list[Any] = field(default_factory=list)
    audio: np.ndarray | None = None
    video: tuple[np.ndarray, dict[str, Any]] | None = None

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "user", "content": self.content}]

    def vllm_multi_modal_data(self) -> dict[str, Any] | None:
        data: dict[str, Any] = {}
        if self.images:
            data["image"] = self.images if len(self.images) > 1 else self.images[0]
        if self.audio is not None:
            data["audio"] = (self.audio, AUDIO_RATE)
        if self.video is not None:
            data["video"] = self.video
        return data or None

    def processor_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.images:
            kw["images"] = list(self.images)
        if self.audio is not None:
            kw["audio"] = [self.audio]
        if self.video is not None:
            frames, meta = self.video
            kw["videos"] = [frames]
            kw["video_metadata"] = [{k: meta[k] for k in ("fps", "frames_indices", "total_num_frames", "duration")}]
            kw["do_sample_frames"] = False
        return kw


def text_then_image_case(words: int = 1100) -> Case:
    """About 2300 tokens of text, then an image: the whole prompt exceeds a 2496-token budget,
    so vLLM (never splitting an image) prefills the text in one step and the image in the
    next, whose rows then read their sliding window back from the KV cache."""
    text = " ".join(["the dog and the cat sit in the red house near the street"] * (words // 12))
    return Case(
        "text-then-image",
        "image",
        [{"type": "text", "text": text}, {"type": "image"}, {"type": "text", "text": "Describe."}],
        images=[synthetic_image(352, 288, seed=11)],
    )


def text_case() -> Case:
    return Case("text", "text", [{"type": "text", "text": "Write a short story about a dog and a cat in the city."}])


def image_case(name: str = "image", size: tuple[int, int] = (400, 300), seed: int = 1) -> Case:
    return Case(
        name,
        "image",
        [{"type": "image"}, {"type": "text", "text": "Describe this image."}],
        images=[synthetic_image(*size, seed=seed)],
    )


def two_image_case() -> Case:
    return Case(
        "two-images",
        "image",
        [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "What differs between the two?"}],
        images=[synthetic_image(320, 320, seed=2), synthetic_image(480, 270, seed=3)],
    )


def audio_case(num_samples: int = 16000) -> Case:
    wave = pad_audio(synthetic_audio(num_samples, seed=num_samples))
    return Case(
        f"audio-{num_samples}", "audio", [{"type": "audio"}, {"type": "text", "text": "Transcribe."}], audio=wave
    )


def video_case(num_frames: int = 4) -> Case:
    return Case(
        "video",
        "video",
        [{"type": "video"}, {"type": "text", "text": "What happens in this video?"}],
        video=synthetic_video(num_frames, 192, 256, seed=7),
    )


def default_cases(audio_lengths: tuple[int, ...] = (16000,)) -> list[Case]:
    """Text, image, two images, audio and video: what `gemma4u model verify` checks."""
    return [text_case(), image_case(), two_image_case(), *[audio_case(n) for n in audio_lengths], video_case()]


# --------------------------------------------------------------------------- results


@dataclass
class Run:
    """One side's result for one case."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[dict[int, float]]  # per generated step: token id -> logprob


@dataclass
class ModalityReport:
    name: str
    modality: str
    num_prompt_tokens: int = 0
    prompt_match: bool = False
    first_token_max_abs_diff: float = math.inf  # max |Δ logprob| over vLLM's top-k at step 0
    max_abs_diff: float = math.inf  # the same, over every step up to the first divergence
    steps_compared: int = 0
    greedy_match: bool = False
    first_divergence: int | None = None
    engine_tokens: list[int] = field(default_factory=list)
    reference_tokens: list[int] = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.prompt_match and self.greedy_match and self.max_abs_diff < self.tolerance

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        for key in ("first_token_max_abs_diff", "max_abs_diff"):
            if not math.isfinite(d[key]):
                d[key] = None
        return d


def compare(case: Case, engine: Run, reference: Run, tolerance: float = DEFAULT_TOLERANCE) -> ModalityReport:
    rep = ModalityReport(case.name, case.modality, num_prompt_tokens=len(engine.prompt_token_ids), tolerance=tolerance)
    rep.engine_tokens, rep.reference_tokens = list(engine.token_ids), list(reference.token_ids)
    rep.prompt_match = list(engine.prompt_token_ids) == list(reference.prompt_token_ids)
    if not rep.prompt_match:
        rep.error = (
            f"prompts differ before the model runs ({len(engine.prompt_token_ids)} vs "
            f"{len(reference.prompt_token_ids)} tokens): a preprocessing mismatch, not attention"
        )
        return rep
    n = min(len(engine.token_ids), len(reference.token_ids))
    div = next((i for i in range(n) if engine.token_ids[i] != reference.token_ids[i]), None)
    rep.first_divergence = div
    rep.greedy_match = div is None and len(engine.token_ids) == len(reference.token_ids)
    last = n - 1 if div is None else div  # contexts agree up to and including the divergent step
    diffs: list[float] = []
    for step in range(last + 1):
        ref = reference.logprobs[step]
        step_diff = max(abs(lp - ref[tok]) for tok, lp in engine.logprobs[step].items())
        diffs.append(step_diff)
    rep.steps_compared = len(diffs)
    if diffs:
        rep.first_token_max_abs_diff = diffs[0]
        rep.max_abs_diff = max(diffs)
    return rep


# --------------------------------------------------------------------------- vLLM side


def engine_kwargs(
    model: str,
    dtype: str = "float32",
    image_tokens: int = 280,
    max_model_len: int = 4096,
    gpu_memory_utilization: float | None = None,
    seed: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """vLLM LLM(...) arguments for a parity run (eager, no prefix caching, images never split).

    `extra` overrides or adds engine arguments (e.g. enable_prefix_caching, max_num_batched_tokens).
    """
    from vllm.platforms import current_platform

    mem = gpu_memory_utilization or (0.15 if current_platform.is_cpu() else 0.45)
    args = {
        "model": model,
        "dtype": dtype,
        "max_model_len": max_model_len,
        "gpu_memory_utilization": mem,
        "enforce_eager": True,
        "limit_mm_per_prompt": {"image": 2, "audio": 1, "video": 1},
        "mm_processor_kwargs": {"max_soft_tokens": image_tokens},
        "disable_chunked_mm_input": True,
        "enable_prefix_caching": False,
        "seed": seed,
        "disable_log_stats": True,
    }
    args.update(extra)
    return args


def make_llm(model: str, **kw: Any):
    """Start a vLLM engine. Call under `if __name__ == "__main__":` (vLLM spawns processes)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    from vllm import LLM

    return LLM(**engine_kwargs(model, **kw))


def render_prompt(tokenizer: Any, case: Case) -> str:
    return tokenizer.apply_chat_template(case.messages(), tokenize=False, add_generation_prompt=True)


def placeholder_token_ids(tokenizer: Any, config: Any = None) -> list[int]:
    """The image, video and audio placeholder ids.

    Neither side may generate them: transformers embeds every placeholder id as padding,
    vLLM embeds a generated one as the token itself, so a continuation through one would
    differ for reasons that have nothing to do with attention. A real model practically
    never emits them; the random tiny model does.
    """
    ids = set()
    for name in ("image_token_id", "video_token_id", "audio_token_id"):
        if config is not None and isinstance(getattr(config, name, None), int):
            ids.add(int(getattr(config, name)))
    for tok in ("<|image|>", "<|video|>", "<|audio|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(ids)


def run_engine(llm: Any, cases: list[Case], max_tokens: int = DEFAULT_MAX_TOKENS) -> list[Run]:
    """All cases as one batch: greedy, top-20 raw logprobs per step, EOS ignored."""
    from vllm import SamplingParams

    tokenizer = llm.get_tokenizer()
    prompts = []
    for case in cases:
        p: dict[str, Any] = {"prompt": render_prompt(tokenizer, case)}
        if (mm := case.vllm_multi_modal_data()) is not None:
            p["multi_modal_data"] = mm
        prompts.append(p)
    hf_config = llm.llm_engine.vllm_config.model_config.hf_config
    banned = {t: -100.0 for t in placeholder_token_ids(tokenizer, hf_config)}  # logits are capped at ±30
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        logprobs=TOP_LOGPROBS,
        ignore_eos=True,
        seed=0,
        logit_bias=banned or None,
    )
    outs = llm.generate(prompts, params, use_tqdm=False)
    runs = []
    for out in outs:
        comp = out.outputs[0]
        steps = [{int(t): float(lp.logprob) for t, lp in step.items()} for step in (comp.logprobs or [])]
        runs.append(Run(list(out.prompt_token_ids or []), list(comp.token_ids), steps))
    return runs


# --------------------------------------------------------------------------- transformers side


class Reference:
    """transformers' Gemma 4 Unified in float32 with the official vision attention masks."""

    def __init__(self, model: str, device: str = "cpu", image_tokens: int = 280, dtype: str = "float32"):
        import torch
        from transformers import AutoProcessor, Gemma4UnifiedForConditionalGeneration

        self.torch = torch
        self.device = torch.device(device)
        self.image_tokens = image_tokens
        self.processor = AutoProcessor.from_pretrained(model)
        loaded = Gemma4UnifiedForConditionalGeneration.from_pretrained(
            model, dtype=getattr(torch, dtype), attn_implementation="eager"
        )
        self.model = loaded.to(self.device).eval()  # type: ignore[arg-type]
        self.text_config = self.model.config.get_text_config()
        self.banned = placeholder_token_ids(self.processor.tokenizer, self.model.config)
        self._memo: dict[tuple[str, str, int], Run] = {}

    def masks(self, input_ids, mm_token_type_ids) -> dict[str, Any]:
        from transformers.models.gemma4_unified import modeling_gemma4_unified as m

        torch = self.torch
        length = input_ids.shape[1]
        embeds = torch.zeros(1, length, 1, dtype=self.model.dtype, device=self.device)  # shape and dtype only
        position_ids = torch.arange(length, device=self.device)[None]
        if getattr(self.text_config, "use_bidirectional_attention", None) != "vision":
            from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

            kw = {
                "config": self.text_config,
                "inputs_embeds": embeds,
                "attention_mask": None,
                "past_key_values": None,
                "position_ids": position_ids,
            }
            return {
                "full_attention": create_causal_mask(**kw),
                "sliding_attention": create_sliding_window_causal_mask(**kw),
            }
        blocks = m.get_block_sequence_ids_for_mask(mm_token_type_ids, device=self.device)
        return m.create_masks_for_vision_model(
            config=self.text_config,
            inputs_embeds=embeds,
            attention_mask=None,
            past_key_values=None,
            position_ids=position_ids,
            block_sequence_ids=blocks,
        )

    def run(self, case: Case, prompt: str, max_tokens: int = DEFAULT_MAX_TOKENS) -> Run:
        """Greedy continuation with full-vocabulary logprobs per step (memoized per case)."""
        key = (case.name, prompt, max_tokens)
        if key not in self._memo:
            self._memo[key] = self._run(case, prompt, max_tokens)
        return self._memo[key]

    def _run(self, case: Case, prompt: str, max_tokens: int) -> Run:
        torch = self.torch
        kwargs = case.processor_kwargs()
        if case.images:
            kwargs["images_kwargs"] = {"max_soft_tokens": self.image_tokens}
        inputs = self.processor(text=prompt, return_tensors="pt", **kwargs)
        ids = inputs.pop("input_ids").to(self.device)
        types = inputs.pop("mm_token_type_ids").to(self.device)
        inputs.pop("attention_mask", None)
        media = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
        for key in ("pixel_values", "pixel_values_videos", "input_features"):
            if key in media:
                media[key] = media[key].to(self.model.dtype)
        prompt_ids = ids[0].tolist()
        tokens: list[int] = []
        steps: list[dict[int, float]] = []
        with torch.no_grad():
            if "pixel_values_videos" in media:
                # transformers 5.19's Gemma4UnifiedModel.forward drops num_frames_per_video on the
                # way to get_video_features, so encode the frames here and pass the result in.
                video = self.model.model.get_video_features(
                    media.pop("pixel_values_videos"),
                    media.pop("video_position_ids", None),
                    num_frames_per_video=media.pop("num_frames_per_video"),
                    return_dict=True,
                )
                encoded = {"video": video}
                if "pixel_values" in media:  # the model takes either raw media or encodings, not both
                    encoded["image"] = self.model.model.get_image_features(
                        media.pop("pixel_values"), media.pop("image_position_ids", None), return_dict=True
                    )
                media["mm_encoder_outputs"] = encoded
            for _ in range(max_tokens):
                out = self.model(
                    input_ids=ids,
                    attention_mask=self.masks(ids, types),
                    mm_token_type_ids=types,
                    use_cache=False,
                    logits_to_keep=1,
                    **media,
                )
                logprobs = torch.log_softmax(out.logits[0, -1].double(), dim=-1)
                pick = logprobs.clone()
                pick[self.banned] = -math.inf
                tok = int(torch.argmax(pick))
                tokens.append(tok)
                steps.append(_LazyLogprobs(logprobs))
                ids = torch.cat([ids, torch.tensor([[tok]], device=self.device)], dim=1)
                types = torch.cat([types, torch.zeros((1, 1), dtype=types.dtype, device=self.device)], dim=1)
        return Run(prompt_ids, tokens, steps)


class _LazyLogprobs(dict):
    """token id -> logprob over the whole vocabulary, without building a Python dict of it."""

    def __init__(self, logprobs: Any):
        super().__init__()
        self._lp = logprobs

    def __getitem__(self, token: int) -> float:
        return float(self._lp[token])


# --------------------------------------------------------------------------- driver


def verify_with_llm(
    llm: Any,
    model: str,
    cases: list[Case] | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    reference: Reference | None = None,
    image_tokens: int = 280,
    reference_device: str = "cpu",
) -> list[ModalityReport]:
    """Compare an already started engine against the transformers reference (float32)."""
    cases = default_cases() if cases is None else cases
    engine_runs = run_engine(llm, cases, max_tokens=max_tokens)
    reference = reference or Reference(model, device=reference_device, image_tokens=image_tokens)
    tokenizer = llm.get_tokenizer()
    reports = []
    for case, eng in zip(cases, engine_runs, strict=True):
        try:
            ref = reference.run(case, render_prompt(tokenizer, case), max_tokens=max_tokens)
            reports.append(compare(case, eng, ref, tolerance))
        except Exception as exc:  # one broken case must not hide the others
            reports.append(
                ModalityReport(case.name, case.modality, error=f"reference failed: {exc!r}", tolerance=tolerance)
            )
    return reports


def verify_model(
    model: str,
    *,
    cases: list[Case] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    image_tokens: int = 280,
    dtype: str = "float32",
    gpu_memory_utilization: float | None = None,
    reference_device: str = "cpu",
) -> tuple[list[ModalityReport], dict[str, Any]]:
    """Start an engine on `model`, compare every case with transformers in float32, shut down.

    `dtype` is the engine's; the reference always runs in float32. Returns the per-case
    reports and the bidirectional-attention plugin status (see
    `gemma4u_batch.engine.plugin.plugin_status`), read after the engine ran.
    """
    from ..engine.plugin import plugin_status

    llm = make_llm(model, dtype=dtype, image_tokens=image_tokens, gpu_memory_utilization=gpu_memory_utilization)
    try:
        reports = verify_with_llm(
            llm,
            model,
            cases,
            tolerance=tolerance,
            max_tokens=max_tokens,
            image_tokens=image_tokens,
            reference_device=reference_device,
        )
        status = plugin_status(llm)
    finally:
        shutdown_llm(llm)
    return reports, status


def shutdown_llm(llm: Any) -> None:
    """Stop the verification engine's processes now rather than at interpreter exit."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except (AttributeError, RuntimeError, OSError) as exc:  # the check's result stands; say why it lingers
        print(f"gemma4u verify: the engine did not shut down cleanly: {exc!r}", file=sys.stderr)


def _main(argv: list[str] | None = None) -> int:
    """`python -m gemma4u_batch.verify.parity MODEL [--cases image,text] [--json PATH]` (used by the tests).

    vLLM logs to stdout, so the JSON result goes to a file.
    """
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m gemma4u_batch.verify.parity")
    ap.add_argument("model")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    ap.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    ap.add_argument("--json", default=None, help="write reports and plugin status to this file")
    args = ap.parse_args(argv)
    cases = default_cases()
    if args.cases:
        wanted = args.cases.split(",")
        cases = [c for c in cases if c.name in wanted]
    reports, status = verify_model(args.model, cases=cases, tolerance=args.tolerance, max_tokens=args.max_tokens)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"reports": [r.to_dict() for r in reports], "plugin": status}, fh)
    for r in reports:
        print(
            f"{r.name:14s} max|Δ logprob|={r.max_abs_diff:.3g} greedy={'same' if r.greedy_match else 'DIFFERENT'} "
            f"{'ok' if r.ok else 'FAIL'}"
        )
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(_main())

"""Build a tiny random-weight Gemma 4 Unified checkpoint with transformers' own classes.

Tests and the README's local run need a checkpoint that loads in vLLM and transformers
without a model hub. Its weights are random, so everything it generates is meaningless
text; it exercises the real code paths, not caption quality.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# Special tokens with the spelling the released Gemma 4 tokenizer uses.
BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
START_OF_TURN, END_OF_TURN = "<|turn>", "<turn|>"
BOI, EOI, IMAGE = "<|image>", "<image|>", "<|image|>"
BOA, EOA, AUDIO = "<|audio>", "<audio|>", "<|audio|>"
VIDEO = "<|video|>"
SPECIAL_TOKENS = [PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN, BOI, EOI, IMAGE, BOA, EOA, AUDIO, VIDEO]

# A small word list gives the random model whole words to emit, so its text looks like text.
_WORDS = [
    "a",
    "the",
    "of",
    "and",
    "in",
    "on",
    "with",
    "is",
    "are",
    "photo",
    "image",
    "picture",
    "video",
    "audio",
    "sound",
    "speech",
    "person",
    "people",
    "dog",
    "cat",
    "tree",
    "sky",
    "water",
    "city",
    "street",
    "car",
    "house",
    "room",
    "table",
    "light",
    "dark",
    "red",
    "green",
    "blue",
    "white",
    "black",
    "small",
    "large",
    "two",
    "three",
    "man",
    "woman",
    "child",
    "bird",
    "flower",
    "mountain",
    "road",
    "sign",
    "text",
    "music",
    "voice",
    "says",
    "talking",
    "there",
    "this",
    "shows",
    "scene",
    "near",
    "under",
    "over",
    "front",
    "back",
    "left",
    "right",
    "sitting",
    "standing",
    "walking",
    "grass",
    "snow",
    "sun",
    "cloud",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<|turn>' + role + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '\\n\\n<|image|>\\n\\n' }}"
    "{%- elif item['type'] == 'audio' -%}{{ '<|audio|>' }}"
    "{%- elif item['type'] == 'video' -%}{{ '\\n\\n<|video|>\\n\\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<turn|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|turn>model\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class TinySpec:
    """Shape of the tiny model: the real layout (sliding + full layers, bidirectional
    vision attention, a window smaller than an image span) at toy width."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 32
    global_head_dim: int = 64
    sliding_window: int = 16
    image_soft_tokens: int = 280
    max_position_embeddings: int = 8192


# Optional size presets (the default above stays the tiny one tests use). "75m": the same
# architecture at ~75M parameters (76.4M with this tokenizer), for benchmarks where
# the engine's compute, not its front end, dominates. Random weights all the same.
SPEC_75M = TinySpec(
    hidden_size=768,
    intermediate_size=2816,
    num_hidden_layers=8,
    num_attention_heads=12,
    num_key_value_heads=4,
    head_dim=64,
    global_head_dim=128,
    sliding_window=512,
)
PRESETS: dict[str, TinySpec] = {"tiny": TinySpec(), "75m": SPEC_75M}


def spec_preset(name: str) -> TinySpec:
    """A named TinySpec preset: "tiny" (the default) or "75m"."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown tiny model preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    merges: list[tuple[str, str]] = []
    # Whole-word tokens (with and without the leading-space marker) built from byte merges.
    for word in _WORDS:
        for form in (word, "Ġ" + word):
            cur = form[0]
            for ch in form[1:]:
                nxt = cur + ch
                if nxt not in vocab:
                    merges.append((cur, ch))
                    vocab[nxt] = len(vocab)
                cur = nxt
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=UNK)
    backend = Tokenizer(bpe)
    backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        add_bos_token=False,
        extra_special_tokens={
            "image_token": IMAGE,
            "boi_token": BOI,
            "eoi_token": EOI,
            "audio_token": AUDIO,
            "boa_token": BOA,
            "eoa_token": EOA,
            "sot_token": START_OF_TURN,
            "eot_token": END_OF_TURN,
        },
    )


def _layer_types(n: int) -> list[str]:
    """Sliding layers with full ones at the end and second, as in the 5:1 pattern, so
    both kinds of layer (and a group boundary) show up even at four layers."""
    layer_types = ["sliding_attention"] * (n - 1) + ["full_attention"]
    layer_types[1] = "full_attention"
    return layer_types


def _model_config(spec: TinySpec, ids: dict[str, int], vocab_size: int):
    """The full Gemma 4 Unified config at the spec's width, wired to our tokenizer's ids."""
    from transformers import (
        Gemma4UnifiedAudioConfig,
        Gemma4UnifiedConfig,
        Gemma4UnifiedTextConfig,
        Gemma4UnifiedVisionConfig,
    )

    text_config = Gemma4UnifiedTextConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        global_head_dim=spec.global_head_dim,  # type: ignore[call-arg]  # consumed by __post_init__
        max_position_embeddings=spec.max_position_embeddings,
        sliding_window=spec.sliding_window,
        layer_types=_layer_types(spec.num_hidden_layers),
        use_bidirectional_attention="vision",
        pad_token_id=ids[PAD],
        eos_token_id=[ids[EOS], ids[END_OF_TURN]],
        bos_token_id=ids[BOS],
        final_logit_softcapping=30.0,
    )
    vision_config = Gemma4UnifiedVisionConfig(
        mm_embed_dim=spec.hidden_size,
        output_proj_dims=spec.hidden_size,
        mm_posemb_size=1120,
    )
    config = Gemma4UnifiedConfig(
        text_config=text_config,
        vision_config=vision_config,
        audio_config=Gemma4UnifiedAudioConfig(),
        boi_token_id=ids[BOI],
        eoi_token_id=ids[EOI],
        image_token_id=ids[IMAGE],
        video_token_id=ids[VIDEO],
        boa_token_id=ids[BOA],
        eoa_token_index=ids[EOA],
        audio_token_id=ids[AUDIO],
    )
    config.architectures = ["Gemma4UnifiedForConditionalGeneration"]
    return config


def _save_model(config, ids: dict[str, int], seed: int, out_dir: Path) -> None:
    """Random weights from `seed`, jittered: random init leaves some tensors at zero or
    one, and the jitter makes each seed differ everywhere and no layer an identity."""
    import torch
    from transformers import Gemma4UnifiedForConditionalGeneration, GenerationConfig

    torch.manual_seed(seed)
    model = Gemma4UnifiedForConditionalGeneration(config).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            param.add_(torch.randn(param.shape, generator=gen) * 0.02)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=[ids[EOS], ids[END_OF_TURN]], pad_token_id=ids[PAD]
    )
    model.save_pretrained(out_dir, safe_serialization=True)


def _save_processor(tokenizer, spec: TinySpec, vocab_size: int, out_dir: Path) -> None:
    """The processor (tokenizer, image/video/audio front ends, chat template); its
    tokenizer must still match the model's vocabulary."""
    from transformers import Gemma4UnifiedProcessor
    from transformers.models.gemma4_unified import (
        Gemma4UnifiedAudioFeatureExtractor,
        Gemma4UnifiedImageProcessor,
        Gemma4UnifiedVideoProcessor,
    )

    processor = Gemma4UnifiedProcessor(
        feature_extractor=Gemma4UnifiedAudioFeatureExtractor(),
        image_processor=Gemma4UnifiedImageProcessor(max_soft_tokens=spec.image_soft_tokens),
        tokenizer=tokenizer,
        video_processor=Gemma4UnifiedVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
        image_seq_length=spec.image_soft_tokens,
    )
    processor.save_pretrained(out_dir)
    if len(processor.tokenizer) != vocab_size:
        raise RuntimeError("processor added tokens; vocab size no longer matches the model")


def build_tiny_checkpoint(out_dir: Path, seed: int = 0, spec: TinySpec | None = None) -> Path:
    """Write config, safetensors weights, tokenizer, processor configs and chat template."""
    spec = spec or TinySpec()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab_size = len(tokenizer)
    _save_model(_model_config(spec, ids, vocab_size), ids, seed, out_dir)
    _save_processor(tokenizer, spec, vocab_size, out_dir)

    # vLLM reads vision_config.num_soft_tokens, which transformers' config does not carry.
    cfg_path = out_dir / "config.json"
    raw = json.loads(cfg_path.read_text())
    raw["vision_config"]["num_soft_tokens"] = spec.image_soft_tokens
    cfg_path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    (out_dir / "README.md").write_text(
        "# gemma4u tiny Gemma 4 Unified checkpoint\n\n"
        f"Random weights (seed {seed}), built by `gemma4u model tiny`. Everything it generates is\n"
        "meaningless text: it exists to test the real vLLM and transformers code paths offline.\n"
    )
    return out_dir

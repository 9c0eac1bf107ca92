"""The engine's whole surface (#14 item 5): --quantization, --kv-cache-dtype, --revision,
--tokenizer, --download-dir, --lora and --engine-arg KEY=VALUE — parsed, checked before any
engine starts, recorded in the run manifest, and part of OUT's guard when they change outputs."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from gemma4u_batch.cli.launch import config_from_flags
from gemma4u_batch.config.engine_args import engine_arg_names, parse_engine_arg, parse_engine_args
from gemma4u_batch.config.job import EngineConfig, JobConfig
from gemma4u_batch.engine.args import exactness_warnings
from gemma4u_batch.errors import UsageError
from gemma4u_batch.plan.recipes import load_recipe
from gemma4u_batch.prompting.keys import guarded_settings, output_settings
from gemma4u_batch.store.guard import guard_of, guard_refusal
from gemma4u_batch.store.layout import OutLayout
from gemma4u_batch.store.runs import run_manifest

from .helpers import documented_code, gemma4u, job_flags, jpeg_bytes, photo, records_by_id


def write_lora(folder: Path, rank: int = 4, seed: int = 0, scale: float = 0.5) -> Path:
    """A PEFT LoRA adapter for the tiny checkpoint's o_proj and down_proj, written by hand."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(4):
        for module, (out, inp) in {"self_attn.o_proj": (64, 64), "mlp.down_proj": (64, 128)}.items():
            prefix = f"base_model.model.model.language_model.layers.{layer}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, inp, generator=g) * scale
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out, rank, generator=g) * scale
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["o_proj", "down_proj"],
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


# ------------------------------------------------------------------ parsing and checks


def test_values_parse_as_json_else_text_and_keys_take_dashes() -> None:
    assert parse_engine_arg("enable-prefix-caching=false") == ("enable_prefix_caching", False)
    assert parse_engine_arg("max_num_batched_tokens=4096") == ("max_num_batched_tokens", 4096)
    assert parse_engine_arg('hf_overrides={"a": 1}') == ("hf_overrides", {"a": 1})
    assert parse_engine_arg("attention_backend=CPU_ATTN") == ("attention_backend", "CPU_ATTN")
    assert parse_engine_arg("tokenizer_mode=") == ("tokenizer_mode", "")
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_engine_arg("enable_prefix_caching")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("nonsense=1", "unknown engine argument 'nonsense' (see vLLM's EngineArgs)"),
        ("enable_prefix_cachin=1", "did you mean 'enable_prefix_caching'?"),
        ("max-model-len=10", "engine argument 'max_model_len' has its own flag: use --max-model-len"),
        ("dtype=half", "has its own flag: use --dtype"),
        ("quantization=fp8", "has its own flag: use --quantization"),
        ("enable_lora=true", "has its own flag: use --lora"),
        ("disable_chunked_mm_input=false", "engine argument 'disable_chunked_mm_input' is set by gemma4u"),
    ],
)
def test_bad_keys_are_one_line_usage_errors(raw: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_engine_args([raw])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_key_given_twice_is_refused() -> None:
    with pytest.raises(UsageError, match="given twice"):
        parse_engine_args(["block_size=16", "block-size=32"])


def test_field_names_match_vllms_engine_args() -> None:
    """The names are read from vLLM's source (no import, no log line); they must be the real ones."""
    from vllm.engine.arg_utils import EngineArgs

    real = {f.name for f in dataclasses.fields(EngineArgs) if not f.name.startswith("_")}
    assert engine_arg_names() == real


def test_flags_reach_the_config_and_the_run_manifest(tmp_path: Path) -> None:
    lora = write_lora(tmp_path / "adapter")
    config = config_from_flags(
        job_flags(
            tmp_path,
            tmp_path / "out",
            quantization="fp8",
            kv_cache_dtype="fp8_e5m2",
            revision="main",
            download_dir=str(tmp_path / "dl"),
            lora=str(lora),
            engine_arg=["enable-prefix-caching=false", "max_num_batched_tokens=4096", "hf_overrides={}"],
        )
    )
    e = config.engine
    assert (e.quantization, e.kv_cache_dtype, e.revision, e.lora) == ("fp8", "fp8_e5m2", "main", str(lora))
    assert e.engine_args == {"enable_prefix_caching": False, "max_num_batched_tokens": 4096, "hf_overrides": {}}
    manifest = run_manifest(config, guard_of(config, "tiny@x"), {})
    recorded = manifest["config"]["engine"]
    assert recorded["engine_args"] == e.engine_args and recorded["lora"] == str(lora)
    assert recorded["download_dir"] == str(tmp_path / "dl")
    guard = manifest["guard"]["engine"]
    assert guard["quantization"] == "fp8" and guard["kv_cache_dtype"] == "fp8_e5m2" and guard["revision"] == "main"
    assert guard["lora"].startswith("adapter@")
    # scheduling/memory arguments and the download folder do not change outputs: not guarded
    assert guard["engine_args"] == {"hf_overrides": {}} and "download_dir" not in guard


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^--lora: adapter folder not found"):
        config_from_flags(job_flags(tmp_path, tmp_path / "out", lora=str(tmp_path / "missing")))
    (tmp_path / "notlora").mkdir()
    with pytest.raises(UsageError, match=r"^--lora: .* has no adapter_config.json"):
        config_from_flags(job_flags(tmp_path, tmp_path / "out", lora=str(tmp_path / "notlora")))


# -------------------------------------------------------------- guard and content keys


def _config(tmp_path: Path, **engine: object) -> JobConfig:
    return JobConfig(input=tmp_path, output=tmp_path / "out", engine=EngineConfig(**engine))


def test_defaults_leave_keys_as_before(tmp_path: Path) -> None:
    """OUT folders made before these options existed keep their keys: nothing new at defaults."""
    assert "engine" not in guarded_settings(_config(tmp_path))
    only_neutral = _config(tmp_path, download_dir="/x", engine_args={"enable_prefix_caching": False})
    assert guarded_settings(only_neutral) == guarded_settings(_config(tmp_path))


@pytest.mark.parametrize(
    "engine",
    [
        {"quantization": "fp8"},
        {"kv_cache_dtype": "fp8"},
        {"revision": "v2"},
        {"engine_args": {"hf_overrides": {"x": 1}}},
    ],
)
def test_output_changing_settings_are_guarded(tmp_path: Path, engine: dict[str, object]) -> None:
    """A rerun into OUT with another quantization (etc.) is refused; so is one without it. Another
    --revision is another model: --on-model-change supersede takes it, never another setting."""
    plain, other = _config(tmp_path), _config(tmp_path, **engine)
    assert guarded_settings(plain) != guarded_settings(other)
    layout = OutLayout(plain.output)
    layout.ensure()
    layout.run_manifest.write_text(json.dumps({"guard": guard_of(other, "m@1")}))
    refusal = guard_refusal(layout, guard_of(plain, "m@1"))
    revision = "revision" in engine
    assert refusal is not None and ("different model" if revision else "different engine") in refusal
    assert (guard_refusal(layout, guard_of(plain, "m@1"), supersede=True) is None) == revision
    assert guard_refusal(layout, guard_of(other, "m@1")) is None


def test_lora_and_tokenizer_are_guarded_by_content(tmp_path: Path) -> None:
    lora = write_lora(tmp_path / "adapter", seed=0)
    before = output_settings(EngineConfig(lora=str(lora), tokenizer=str(lora)))
    write_lora(lora, seed=1)  # retrained in place: same path, new weights
    after = output_settings(EngineConfig(lora=str(lora), tokenizer=str(lora)))
    assert before["lora"] != after["lora"]


def test_exactness_warnings(tmp_path: Path) -> None:
    assert exactness_warnings(EngineConfig(), on_cpu=True) == []
    neutral = EngineConfig(download_dir="/x", revision="v1", engine_args={"enable_prefix_caching": False})
    assert exactness_warnings(neutral, on_cpu=True) == []
    (fp8,) = exactness_warnings(EngineConfig(kv_cache_dtype="fp8"), on_cpu=True)
    assert "causally" in fp8 and "\n" not in fp8
    (quant,) = exactness_warnings(EngineConfig(quantization="awq"), on_cpu=True)
    assert "on CPU not verified" in quant
    (other,) = exactness_warnings(EngineConfig(engine_args={"attention_backend": "CPU_ATTN"}), on_cpu=True)
    assert "attention_backend" in other


def test_options_set_names_what_the_engine_was_given() -> None:
    """What an engine that fails to start is said to have been started with (one line, exit 2)."""
    from gemma4u_batch.engine.args import options_set

    assert options_set(EngineConfig(download_dir="/x")) == ""
    given = options_set(EngineConfig(quantization="fp8", kv_cache_dtype="fp8", engine_args={"block_size": 32}))
    assert given == "--quantization fp8, --kv-cache-dtype fp8, --engine-arg block_size=32"


def test_engine_kwargs(tmp_path: Path) -> None:
    """What the engine is started with: the flags, LoRA sized from the adapter, the extras."""
    from gemma4u_batch.engine.vllm_engine import VllmEngine

    lora = write_lora(tmp_path / "adapter", rank=4)
    cfg = EngineConfig(quantization="fp8", lora=str(lora), engine_args={"max_num_batched_tokens": 4096})
    kw = VllmEngine(model="m", engine=cfg)._engine_kwargs(on_cpu=True)
    assert kw["quantization"] == "fp8" and kw["max_num_batched_tokens"] == 4096
    assert kw["enable_lora"] is True and kw["max_lora_rank"] == 8 and kw["max_loras"] == 1
    assert kw["disable_chunked_mm_input"] is True


# ------------------------------------------------------------------------- recipes


def test_recipe_engine_section(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    write_lora(tmp_path / "adapters" / "a")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "input: in\noutput: out\nengine:\n  quantization: fp8\n  lora: adapters/a\n"
        "  engine_args:\n    enable-prefix-caching: false\n"
    )
    config = load_recipe(recipe)
    assert config.engine.lora == str(tmp_path / "adapters" / "a")  # relative to the recipe
    assert config.engine.engine_args == {"enable_prefix_caching": False}
    recipe.write_text("input: in\noutput: out\nengine:\n  engine_args:\n    nonsense: 1\n")
    with pytest.raises(UsageError) as info:
        load_recipe(recipe)
    assert "unknown engine argument 'nonsense'" in str(info.value) and "\n" not in str(info.value)


def test_run_flags_override_the_recipe(tmp_path: Path) -> None:
    """`gemma4u run`'s engine flags: a flag overrides the recipe's key, --engine-arg keys join the
    recipe's engine_args, a flag left at its default keeps the recipe's value."""
    from gemma4u_batch.cli.launch import engine_overrides

    recipe = EngineConfig(kv_cache_dtype="bfloat16", revision="v1", engine_args={"block_size": 16, "hf_overrides": {}})
    flags = dict.fromkeys(("quantization", "revision", "tokenizer", "download_dir", "lora", "engine_arg"))
    kept = engine_overrides(recipe, {**flags, "kv_cache_dtype": "auto"})
    assert kept == recipe
    over = engine_overrides(
        recipe, {**flags, "kv_cache_dtype": "auto", "revision": "v2", "engine_arg": ["block_size=32"]}
    )
    assert over.revision == "v2" and over.engine_args == {"block_size": 32, "hf_overrides": {}}
    with pytest.raises(UsageError, match="unknown engine argument 'nonsense'"):
        engine_overrides(recipe, {**flags, "kv_cache_dtype": "auto", "engine_arg": ["nonsense=1"]})


def test_cli_unknown_engine_arg_fails_before_the_engine(tmp_path: Path) -> None:
    """The real CLI: one line, the usage exit code, no model load (the model does not even exist)."""
    (tmp_path / "in").mkdir()
    for cmd in (
        ["caption", str(tmp_path / "in"), "-o", str(tmp_path / "out")],
        ["run-batch", "-i", str(tmp_path / "b.jsonl"), "-o", str(tmp_path / "o.jsonl")],
    ):
        proc = gemma4u(*cmd, "--model", "no/such-model", "--engine-arg", "nonsense=1", timeout=120)
        assert proc.returncode == documented_code("USAGE")
        assert proc.stderr.strip().splitlines() == ["error: unknown engine argument 'nonsense' (see vLLM's EngineArgs)"]


def test_batch_invariant_is_refused_on_cpu_before_the_engine_starts(tiny_model: Path) -> None:
    """vLLM 0.32's batch-invariant kernels crash the CPU engine at its first request (three
    engine deaths, exit 75); gemma4u says so up front instead."""
    from vllm.platforms import current_platform

    from gemma4u_batch.config.job import SamplingConfig
    from gemma4u_batch.engine.vllm_engine import VllmEngine
    from gemma4u_batch.prompting.units import EngineRequest

    if not current_platform.is_cpu():
        pytest.skip("on a GPU the option is passed through to vLLM (not tested here)")
    eng = VllmEngine(model=str(tiny_model), engine=EngineConfig(batch_invariant=True)).start()
    with pytest.raises(UsageError, match="needs a GPU"):
        eng.add(EngineRequest("r1", "hi", None, SamplingConfig()))
    assert eng._llm is None and os.environ.get("VLLM_BATCH_INVARIANT") != "1"


# ------------------------------------------------------------------ on the real engine


@pytest.mark.engine
def test_lora_applies_to_every_request(tmp_path: Path, tiny_model: Path, shared_engine, capfd) -> None:
    """One small engine of its own (LoRA needs enable_lora at start): greedy outputs differ from
    the base model's on the same items, the adapter is in the manifest and the guard, the
    --engine-arg extras reach vLLM, and OUT refuses a rerun without the adapter."""
    from gemma4u_batch.config.job import SamplingConfig
    from gemma4u_batch.console import Reporter
    from gemma4u_batch.engine.vllm_engine import open_engine
    from gemma4u_batch.job.job import run_job

    root = tmp_path / "images"
    root.mkdir()
    for name in ("astronaut", "coffee"):
        (root / f"{name}.jpg").write_bytes(jpeg_bytes(photo(name)))
    lora = write_lora(tmp_path / "adapter")

    def config(out: str, **engine: object) -> JobConfig:
        return JobConfig(
            input=root,
            output=tmp_path / out,
            model=str(tiny_model),
            workers=0,
            sampling=SamplingConfig(max_tokens=8),
            engine=EngineConfig(dtype="float32", max_model_len=4096, max_num_seqs=8, **engine),
        )

    run_job(config("base"), shared_engine, reporter=Reporter("quiet"))
    with_lora = config("lora", lora=str(lora), engine_args={"max_num_batched_tokens": 4096})
    with open_engine(with_lora) as engine:  # its own engine, shut down at the end
        run_job(with_lora, engine, reporter=Reporter("quiet"))
        assert engine._llm.vllm_config.scheduler_config.max_num_batched_tokens == 4096
    warned = [line for line in capfd.readouterr().err.splitlines() if "gemma4u: WARNING:" in line]
    assert warned == [
        "gemma4u: WARNING: --lora: image attention stays bidirectional, but LoRA outputs are not parity-checked"
    ]
    base = {i: r["text"] for i, r in records_by_id(tmp_path / "base").items()}
    adapted = {i: r["text"] for i, r in records_by_id(tmp_path / "lora").items()}
    assert base.keys() == adapted.keys() == {"astronaut.jpg", "coffee.jpg"}
    assert all(adapted.values()) and base != adapted
    manifest = json.loads(OutLayout(tmp_path / "lora").run_manifest.read_text())
    assert manifest["config"]["engine"]["lora"] == str(lora)
    assert manifest["guard"]["engine"]["lora"].startswith("adapter@")
    refusal = guard_refusal(
        OutLayout(tmp_path / "lora"), guard_of(config("lora"), manifest["guard"]["model_fingerprint"])
    )
    assert refusal is not None and "engine" in refusal

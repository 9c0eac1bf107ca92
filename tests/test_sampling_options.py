"""Sampling options on caption/transcribe/recipes (#14 item 4): --top-k, --min-p, --stop,
--presence/--frequency/--repetition-penalty, --logprobs, and every record's `mean_logprob`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from gemma4u_batch.cli.launch import config_from_flags
from gemma4u_batch.config.job import JobConfig, SamplingConfig
from gemma4u_batch.console import Reporter
from gemma4u_batch.errors import UsageError
from gemma4u_batch.job.job import run_job
from gemma4u_batch.plan.recipes import load_recipe
from gemma4u_batch.prompting.keys import guarded_settings

from .helpers import job_flags, jpeg_bytes, make_images, photo, records, records_by_id, run_fake


def test_flags_reach_the_sampling_config(tmp_path: Path) -> None:
    config = config_from_flags(
        job_flags(
            tmp_path,
            tmp_path / "out",
            top_k=5,
            min_p=0.1,
            stop=["###", "\n\n"],
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            repetition_penalty=1.2,
            logprobs=3,
        )
    )
    s = config.sampling
    assert (s.top_k, s.min_p, s.stop, s.logprobs) == (5, 0.1, ["###", "\n\n"], 3)
    assert (s.presence_penalty, s.frequency_penalty, s.repetition_penalty) == (0.5, -0.5, 1.2)
    assert config_from_flags(job_flags(tmp_path, tmp_path / "out")).sampling == SamplingConfig()


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"min_p": 1.5}, "invalid value for min_p"),
        ({"presence_penalty": 3.0}, "presence_penalty"),
        ({"logprobs": 21}, "logprobs"),
        ({"stop": [""]}, "a stop string cannot be empty"),
    ],
)
def test_bad_values_are_usage_errors(tmp_path: Path, over: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        config_from_flags(job_flags(tmp_path, tmp_path / "out", **over))


def test_recipe_sampling_keys(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("input: in\noutput: out\nsampling:\n  top_k: 1\n  stop: ['.']\n  logprobs: 0\n")
    s = load_recipe(recipe, ["sampling.repetition_penalty=1.1"]).sampling
    assert (s.top_k, s.stop, s.logprobs, s.repetition_penalty) == (1, ["."], 0, 1.1)


def test_keys_change_only_when_a_new_setting_is_set(tmp_path: Path) -> None:
    """Content keys of OUT folders made before these options existed stay the same; a set one
    changes every key (and OUT's guard), as temperature does."""

    def settings(**sampling: object) -> dict[str, object]:
        return guarded_settings(JobConfig(input=tmp_path, output=tmp_path, sampling=SamplingConfig(**sampling)))

    assert settings()["sampling"] == {"max_tokens": 256, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    base = settings()
    for change in ({"top_k": 1}, {"min_p": 0.1}, {"stop": ["x"]}, {"repetition_penalty": 1.1}, {"logprobs": 0}):
        assert settings(**change) != base, change


def test_fake_records_carry_mean_logprob_and_logprobs_on_request(tmp_path: Path) -> None:
    make_images(tmp_path / "in", 3)
    for name, logprobs in (("plain", None), ("lp", 2)):
        run_fake(tmp_path / "in", tmp_path / name, sampling=SamplingConfig(logprobs=logprobs))
    plain = records(tmp_path / "plain")
    lp = records(tmp_path / "lp")
    assert all(r["mean_logprob"] is not None and r["mean_logprob"] <= 0 and r["logprobs"] is None for r in plain)
    assert all(len(r["logprobs"]) == r["num_output_tokens"] for r in lp)


def test_without_logprobs_vllm_makes_no_token_texts() -> None:
    """Without --logprobs only the log-probabilities' mean is kept, so vLLM's front end is not
    asked to turn every sampled token back into text (two decodes per token in the feeding
    process): such requests get a logprobs processor without a tokenizer; --logprobs keeps it."""
    from vllm.v1.engine.logprobs import LogprobsProcessor

    from gemma4u_batch.engine.plugin import logprob_sums
    from gemma4u_batch.engine.vllm_engine import sampling_params
    from gemma4u_batch.prompting.units import EngineRequest

    assert logprob_sums.apply()
    tokenizer = object()
    for logprobs, texts in ((None, False), (0, True), (2, True)):
        params = sampling_params(EngineRequest("r", "p", None, SamplingConfig(logprobs=logprobs)))
        assert params.logprobs == (logprobs or 0)
        made = LogprobsProcessor.from_new_request(tokenizer, SimpleNamespace(sampling_params=params))
        assert (made.tokenizer is tokenizer) == texts, logprobs


# ------------------------------------------------------------------ on the real engine


def _engine_run(tmp_path: Path, tiny_model: Path, engine, name: str, **sampling: object) -> dict[str, dict]:
    root = tmp_path / "images"
    if not root.exists():
        root.mkdir()
        for photo_name in ("astronaut", "coffee", "chelsea"):
            (root / f"{photo_name}.jpg").write_bytes(jpeg_bytes(photo(photo_name)))
    config = JobConfig(
        input=root,
        output=tmp_path / name,
        model=str(tiny_model),
        workers=0,
        sampling=SamplingConfig(**{"max_tokens": 12, **sampling}),
    )
    run_job(config, engine, reporter=Reporter("quiet"))
    return records_by_id(tmp_path / name)


@pytest.mark.engine
def test_real_engine_sampling_options(tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    greedy = _engine_run(tmp_path, tiny_model, shared_engine, "greedy")
    assert len(greedy) == 3
    for r in greedy.values():
        assert r["error"] is None and r["num_output_tokens"] >= 1
        assert r["mean_logprob"] is not None and r["mean_logprob"] <= 0 and r["logprobs"] is None

    # top-k 1 at temperature 1 samples the most likely token: greedy's text
    top1 = _engine_run(tmp_path, tiny_model, shared_engine, "top1", temperature=1.0, top_k=1, seed=3)
    assert {i: r["text"] for i, r in top1.items()} == {i: r["text"] for i, r in greedy.items()}

    # --logprobs 2: per-token log-probabilities whose mean is mean_logprob
    lp = _engine_run(tmp_path, tiny_model, shared_engine, "lp", logprobs=2)
    for i, r in lp.items():
        assert r["text"] == greedy[i]["text"] and len(r["logprobs"]) == r["num_output_tokens"]
        assert all(1 <= len(t["top"]) <= 2 and t["logprob"] <= 0 for t in r["logprobs"])
        assert r["logprobs"][0]["top"][0]["logprob"] >= r["logprobs"][0]["logprob"]  # greedy took the best
        assert all(isinstance(t["token"], str) for t in r["logprobs"])  # the listed tokens have their texts
        mean = sum(t["logprob"] for t in r["logprobs"]) / len(r["logprobs"])
        assert r["mean_logprob"] == pytest.approx(mean, abs=1e-5)
        assert greedy[i]["mean_logprob"] == pytest.approx(mean, abs=1e-5)  # the same without the list

    # --stop: the text ends before the first occurrence of a word greedy wrote
    item, text = next((i, r["text"]) for i, r in greedy.items() if len(r["text"].split()) >= 3)
    word = text.split()[-1]
    stopped = _engine_run(tmp_path, tiny_model, shared_engine, "stop", stop=[word])
    assert stopped[item]["text"] == text[: text.find(word)]
    assert stopped[item]["finish_reason"] == "stop"

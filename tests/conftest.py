"""Shared fixtures (plain helpers are in helpers.py). Engine tests share one real vLLM engine on
the tiny checkpoint (start-up takes ~30-60 s on CPU); CLI subprocess runs are kept few."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from gemma4u_batch.engine.vllm_engine import VllmEngine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random checkpoint (meaningless text), built once per session."""
    from gemma4u_batch.verify.tiny_model import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-gemma4u", seed=0)


@pytest.fixture(scope="session")
def shared_engine(tiny_model: Path) -> Iterator[VllmEngine]:
    """One real engine for the session: jobs are handed it and never shut it down."""
    from gemma4u_batch.config.job import EngineConfig
    from gemma4u_batch.engine.vllm_engine import VllmEngine

    eng = VllmEngine(
        model=str(tiny_model),
        engine=EngineConfig(dtype="float32", max_model_len=4096, max_num_seqs=8),
        image_tokens=280,
    ).start()
    yield eng
    eng.shutdown()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ids of the items the decode stage opened (inline decoding: `workers=0`)."""
    import gemma4u_batch.decode as decode_mod

    seen: list[str] = []
    real = decode_mod.read_input

    def counting(item, opts):
        seen.append(item.id)
        return real(item, opts)

    monkeypatch.setattr(decode_mod, "read_input", counting)
    return seen


@pytest.fixture
def batch_engine(tiny_model: Path):
    """FakeEngine for run-batch lines: fake answers, prompts rendered by vLLM's chat serving
    code on the tiny checkpoint (its renderer is built once per session, without an engine)."""
    from gemma4u_batch.engine.fake import FakeEngine

    def make(**kw) -> FakeEngine:
        return FakeEngine(frontend_model=str(tiny_model), **kw)

    return make

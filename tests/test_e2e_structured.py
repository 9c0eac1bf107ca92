"""Structured output on the real engine: vLLM's guided decoding (xgrammar) constrains the
tiny model, so every record's `data` is valid even though the text is meaningless."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from gemma4u_batch.config.job import JobConfig, SamplingConfig
from gemma4u_batch.console import Reporter
from gemma4u_batch.job.job import run_job

from .helpers import make_images, records_by_task

pytestmark = pytest.mark.engine

SCHEMA = {
    "type": "object",
    "properties": {
        "tags": {"type": "array", "items": {"enum": ["sky", "dog", "red", "car"]}, "minItems": 1, "maxItems": 3},
        "indoor": {"type": "boolean"},
    },
    "required": ["tags", "indoor"],
    "additionalProperties": False,
}


def test_json_schema_and_choices_on_the_real_engine(tmp_path: Path, tiny_model: Path, shared_engine) -> None:
    inp = tmp_path / "in"
    make_images(inp, 6)

    def run(out: str, **kw) -> dict[tuple[str, str], dict]:
        config = JobConfig(
            input=inp, output=tmp_path / out, model=str(tiny_model), sampling=SamplingConfig(max_tokens=160), **kw
        )
        run_job(config, shared_engine, reporter=Reporter("quiet"))
        return records_by_task(tmp_path / out)

    recs = run("json", json_schema=SCHEMA)
    assert len(recs) == 6
    for r in recs.values():
        assert r["error"] is None, r
        jsonschema.validate(r["data"], SCHEMA)
    recs = run("labels", tasks=["caption", "alt-text"], choices=["indoor", "outdoor", "unclear"])
    assert len(recs) == 12
    assert all(r["data"] in ("indoor", "outdoor", "unclear") and r["error"] is None for r in recs.values())

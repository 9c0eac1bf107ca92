"""`gemma4u run-batch`'s files beyond local paths (FakeEngine; a web server and moto's S3 on
127.0.0.1): the input by http(s) GET, the output by PUT with retries, both on S3; the checkpoint
of a URL output in the local cache (a rerun resumes, a failed upload only uploads again); an
empty input; --error-file's split; bad locations as one line, never a signature shown."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gemma4u_batch.batch.run import BatchRun, BatchSettings, state_dir
from gemma4u_batch.errors import OutputError, UsageError

from .helpers import BATCH_MODEL as MODEL
from .helpers import VLLM_INPUT_BATCH as INPUT_BATCH
from .helpers import batch_chat as chat
from .helpers import documented_code, gemma4u, write_lines
from .http_servers import Reply, WebServer, closed_port
from .object_stores import ObjectStore, s3_server, s3_store

__all__ = ["s3_server", "s3_store"]

pytestmark = pytest.mark.timeout(120)

SIGNED = "?X-Amz-Credential=AKIDSECRETKEY&X-Amz-Signature=deadbeefsignature"
SECRETS = ("AKIDSECRETKEY", "deadbeefsignature", "hunter2")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """XDG_CACHE_HOME for the test (URL outputs keep their checkpoint there); the working folder
    is an empty one, so a folder named after a URL would show."""
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


@pytest.fixture
def web() -> Any:
    with WebServer() as server:
        yield server


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def validated(payload: bytes) -> list[dict[str, Any]]:
    """Each line checked by vLLM's own BatchRequestOutput."""
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput

    lines = payload.decode().splitlines()
    for line in lines:
        BatchRequestOutput.model_validate_json(line)
    return [json.loads(line) for line in lines]


def batch(inp: Path | str, out: Path | str, **kw: Any) -> BatchSettings:
    return BatchSettings(input=inp, output=out, model=MODEL, backoff=0.01, **kw)


def everything_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_http_input_and_put_output_then_a_rerun_does_nothing(web: WebServer, cache: Path, batch_engine) -> None:
    lines = [chat(f"r{i}", f"s{i}") for i in range(4)]
    web.routes["/in.jsonl"] = [Reply(200, jsonl(lines))]
    web.routes["/out.jsonl"] = [Reply(200)]
    out = web.url("/out.jsonl") + SIGNED
    engine = batch_engine()
    summary = BatchRun(batch(web.url("/in.jsonl"), out)).run(engine)
    assert engine.added == 4 and summary.done == 4 and summary.errors == 0
    (put,) = web.requests("/out.jsonl", "PUT")
    assert put.query == SIGNED[1:]  # the URL as given, signature and all, is what is PUT to
    assert [o["custom_id"] for o in validated(put.body)] == ["r0", "r1", "r2", "r3"]
    assert summary.output == web.url("/out.jsonl") + "?<redacted>"
    state = state_dir(out)
    assert state.parent == cache / "gemma4u" / "run-batch" and (state / "complete.json").is_file()
    assert not any(s.encode() in everything_under(cache) for s in SECRETS)
    assert list(Path.cwd().iterdir()) == []  # no local folder named after a URL
    again = batch_engine()
    rerun = BatchRun(batch(web.url("/in.jsonl"), web.url("/out.jsonl") + "?X-Amz-Signature=another"))
    assert not rerun.needs_engine()
    assert rerun.run(again).already_complete and again.added == 0
    assert web.count("/out.jsonl", "PUT") == 1


def test_put_failing_twice_then_succeeding(web: WebServer, cache: Path, tmp_path: Path, batch_engine) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [chat("a", "s"), chat("b", "t")])
    web.routes["/out.jsonl"] = [Reply(503), Reply(500, b"try later"), Reply(201)]
    BatchRun(batch(inp, web.url("/out.jsonl"))).run(batch_engine())
    puts = web.requests("/out.jsonl", "PUT")
    assert len(puts) == 3 and puts[0].body == puts[2].body
    assert [o["custom_id"] for o in validated(puts[2].body)] == ["a", "b"]


def test_put_staged_in_output_tmp_dir(web: WebServer, cache: Path, tmp_path: Path, batch_engine) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [chat("a", "s")])
    web.routes["/out.jsonl"] = [Reply(500), Reply(200)]
    staging = tmp_path / "staging"
    BatchRun(batch(inp, web.url("/out.jsonl"), output_tmp_dir=staging)).run(batch_engine())
    puts = web.requests("/out.jsonl", "PUT")
    assert len(puts) == 2 and puts[0].body == puts[1].body  # the staged file is sent whole again
    assert [o["custom_id"] for o in validated(puts[1].body)] == ["a"]
    assert list(staging.iterdir()) == []  # the staged file is gone after the upload


def test_put_always_refused_keeps_the_answers_and_a_rerun_only_uploads(
    web: WebServer, cache: Path, tmp_path: Path, batch_engine
) -> None:
    n = 5
    inp = write_lines(tmp_path / "in.jsonl", [chat(f"r{i}", f"s{i}") for i in range(n)])
    web.routes["/out.jsonl"] = [Reply(500, b"<Error>SignatureProvided deadbeefsignature</Error>")]
    out = web.url("/out.jsonl", userinfo="user:hunter2") + SIGNED
    engine = batch_engine()
    with pytest.raises(OutputError) as failed:
        BatchRun(batch(inp, out)).run(engine)
    message = str(failed.value)
    assert "\n" not in message and "HTTP 500" in message and "5 attempts" in message
    assert not any(s in message for s in SECRETS)
    assert engine.added == n and web.count("/out.jsonl", "PUT") == 5  # vLLM's five attempts
    assert web.requests("/out.jsonl", "PUT")[0].headers["authorization"].startswith("Basic ")
    assert not any(s.encode() in everything_under(cache) for s in SECRETS)

    # the real command on the same checkpoint: nothing is left to generate (no model needed),
    # the refused upload is one line and the documented exit code, no traceback
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    proc = gemma4u("run-batch", "-i", str(inp), "-o", out, "--model", MODEL, env=env, timeout=120)
    assert proc.returncode == documented_code("OUTPUT_ERROR"), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "HTTP 500" in proc.stderr and not any(s in proc.stderr for s in SECRETS)

    web.routes["/out.jsonl"] = lambda seen: Reply(200)
    resumed = batch_engine()
    rerun = BatchRun(batch(inp, web.url("/out.jsonl") + "?X-Amz-Signature=fresh"))
    assert not rerun.needs_engine()
    summary = rerun.run(resumed)
    assert resumed.added == 0 and summary.reused == n
    assert [o["custom_id"] for o in validated(web.requests("/out.jsonl", "PUT")[-1].body)] == [
        f"r{i}" for i in range(n)
    ]


def test_a_url_output_resumes_from_the_cache(web: WebServer, cache: Path, tmp_path: Path, batch_engine) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [chat(f"r{i}", f"s{i}") for i in range(3)])
    web.routes["/out.jsonl"] = lambda seen: Reply(200)
    BatchRun(batch(inp, web.url("/out.jsonl") + "?sig=first")).run(batch_engine())
    write_lines(inp, [chat(f"r{i}", f"s{i}") for i in range(6)])
    engine = batch_engine()
    summary = BatchRun(batch(inp, web.url("/out.jsonl") + "?sig=second")).run(engine)
    assert engine.added == 3 and summary.reused == 3
    last = web.requests("/out.jsonl", "PUT")[-1]
    assert [o["custom_id"] for o in validated(last.body)] == [f"r{i}" for i in range(6)]
    assert len(list((cache / "gemma4u" / "run-batch").iterdir())) == 1  # one checkpoint for both


def test_input_and_output_on_s3(s3_store: ObjectStore, cache: Path, batch_engine) -> None:
    bucket = s3_store.create_bucket()
    s3_store.put(bucket, "batches/in.jsonl", jsonl(INPUT_BATCH))
    out = s3_store.url(bucket, "runs/out.jsonl")
    errors = s3_store.url(bucket, "runs/errors.jsonl")
    engine = batch_engine()
    summary = BatchRun(batch(s3_store.url(bucket, "batches/in.jsonl"), out, error_file=errors)).run(engine)
    assert summary.errors == 3 and engine.added == 2
    ok = validated(s3_store.fs.cat_file(f"{bucket}/runs/out.jsonl"))
    bad = validated(s3_store.fs.cat_file(f"{bucket}/runs/errors.jsonl"))
    assert [o["custom_id"] for o in ok] == ["request-1", "request-2"]
    assert [o["custom_id"] for o in bad] == ["request-3", "request-4", "request-5"]
    assert state_dir(out).parent == cache / "gemma4u" / "run-batch"
    again = batch_engine()
    assert BatchRun(batch(s3_store.url(bucket, "batches/in.jsonl"), out, error_file=errors)).run(again).already_complete
    assert again.added == 0
    s3_store.fs.rm_file(f"{bucket}/runs/out.jsonl")  # a deleted output is written again, not regenerated
    s3_store.fs.invalidate_cache()
    third = batch_engine()
    BatchRun(batch(s3_store.url(bucket, "batches/in.jsonl"), out, error_file=errors)).run(third)
    assert third.added == 0 and len(validated(s3_store.fs.cat_file(f"{bucket}/runs/out.jsonl"))) == 2


def test_s3_bad_locations_are_one_line_before_any_work(s3_store: ObjectStore, cache: Path, tmp_path: Path) -> None:
    bucket = s3_store.create_bucket()
    inp = write_lines(tmp_path / "in.jsonl", [chat("a", "s")])
    with pytest.raises(UsageError, match=r"^cannot read the input file s3://.*/missing.jsonl: no such file$"):
        BatchRun(batch(s3_store.url(bucket, "missing.jsonl"), tmp_path / "out.jsonl"))
    with pytest.raises(UsageError, match=r"no bucket or container 'no-such-bucket-here'"):
        BatchRun(batch(inp, s3_store.url("no-such-bucket-here", "out.jsonl")))


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_an_empty_input_gives_an_empty_output(tmp_path: Path, text: str) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(text)
    out = tmp_path / "out.jsonl"
    run = BatchRun(batch(inp, out))
    assert not run.needs_engine()
    summary = run.run(None)
    assert out.read_bytes() == b"" and summary.lines == 0 and summary.problems == []
    assert BatchRun(batch(inp, out)).run(None).already_complete


def test_an_empty_input_over_http_puts_an_empty_output(web: WebServer, cache: Path) -> None:
    web.routes["/in.jsonl"] = [Reply(200, b"\n")]
    web.routes["/out.jsonl"] = [Reply(200)]
    BatchRun(batch(web.url("/in.jsonl"), web.url("/out.jsonl"))).run(None)
    assert [s.body for s in web.requests("/out.jsonl", "PUT")] == [b""]


def test_error_file_splits_the_lines_and_changing_it_rewrites_without_the_engine(tmp_path: Path, batch_engine) -> None:
    inp = write_lines(tmp_path / "in.jsonl", INPUT_BATCH)
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    BatchRun(batch(inp, out, error_file=errors)).run(batch_engine())
    ok, bad = validated(out.read_bytes()), validated(errors.read_bytes())
    assert [o["custom_id"] for o in ok] == ["request-1", "request-2"] and all(o["error"] is None for o in ok)
    assert [o["custom_id"] for o in bad] == ["request-3", "request-4", "request-5"]
    assert all(o["error"] is not None for o in bad)
    same = batch_engine()
    assert BatchRun(batch(inp, out, error_file=errors)).run(same).already_complete and same.added == 0
    errors.unlink()  # a missing error file is written again
    BatchRun(batch(inp, out, error_file=errors)).run(same)
    assert same.added == 0 and len(validated(errors.read_bytes())) == 3
    merged = batch_engine()
    summary = BatchRun(batch(inp, out)).run(merged)  # without --error-file: every line in -o, as vLLM
    assert merged.added == 0 and not summary.already_complete
    assert [o["custom_id"] for o in validated(out.read_bytes())] == [f"request-{i}" for i in range(1, 6)]
    other = tmp_path / "elsewhere" / "errors.jsonl"
    BatchRun(batch(inp, out, error_file=other)).run(merged)
    assert merged.added == 0 and len(validated(other.read_bytes())) == 3 and len(validated(out.read_bytes())) == 2


def test_bad_locations_are_one_line_and_show_no_secret(web: WebServer, cache: Path, tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [chat("a", "s")])
    out = tmp_path / "out.jsonl"
    cases: list[tuple[Path | str, Path | str, str]] = [
        (web.url("/gone.jsonl", userinfo="user:hunter2") + SIGNED, out, r"^cannot read the input file .*: HTTP 404"),
        (f"http://127.0.0.1:{closed_port()}/in.jsonl{SIGNED}", out, r"^cannot read the input .*: Connection refused"),
        ("ftp://example.com/in.jsonl", out, r"unsupported URL scheme ftp://"),
        (inp, "ftp://example.com/out.jsonl", r"cannot write the output file to ftp://example.com/out.jsonl"),
        (inp, "hf://datasets/x/out.jsonl", r"run-batch writes local paths, http\(s\):// \(PUT\), s3://"),
        (inp, inp, r"the output file must not be the input file"),
        (inp, tmp_path, r"the output file is a folder"),
    ]
    for source, dest, why in cases:
        with pytest.raises(UsageError, match=why) as bad:
            BatchRun(batch(source, dest))
        assert "\n" not in str(bad.value) and not any(s in str(bad.value) for s in SECRETS)
    assert web.count("/gone.jsonl") == 1  # a 404 is not retried
    with pytest.raises(UsageError, match=r"the error file must not be the output file"):
        BatchRun(batch(inp, out, error_file=out))
    assert not out.exists() and not state_dir(out).exists()

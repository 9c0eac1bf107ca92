"""Jobs over object-store prefixes (moto's S3, gcp-storage-emulator, Azurite, all on 127.0.0.1
behind a proxy that counts every request): a record per object with the object's sha256, a
no-op rerun that asks the store for listings only (no GET or HEAD of an unchanged object), and
an incremental rerun that fetches exactly the new and changed objects. The object-store twin of
the stat quick check: the listing's ETag, version, size and modification time."""

from __future__ import annotations

import hashlib
import urllib.parse
from pathlib import Path

import pytest

from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.sources import open_source

from .helpers import jpeg_bytes, photo, png_bytes, records_by_id, run_fake
from .object_stores import (
    ObjectStore,
    azure_server,
    azure_store,
    gcs_server,
    gcs_store,
    object_store,
    s3_server,
    s3_store,
)

__all__ = ["azure_server", "azure_store", "gcs_server", "gcs_store", "object_store", "s3_server", "s3_store"]

pytestmark = pytest.mark.timeout(240)


def _photos() -> dict[str, bytes]:
    return {
        "a.jpg": jpeg_bytes(photo("astronaut").resize((96, 72))),
        "b/c.png": png_bytes(photo("coffee").resize((80, 60))),
        "b/d.jpg": jpeg_bytes(photo("chelsea").resize((64, 48))),
        "e.jpg": jpeg_bytes(photo("rocket").resize((72, 48))),
        ".hidden.jpg": jpeg_bytes(photo("camera").resize((40, 30))),
        "notes.txt": b"not media",
    }


def _object_reads(store: ObjectStore, keys: set[str]) -> dict[str, int]:
    """How many GET or HEAD requests named each object (a listing names none of them)."""
    reads = dict.fromkeys(keys, 0)
    for r in store.requests():
        if r.method not in ("GET", "HEAD"):
            continue
        path = urllib.parse.unquote(r.path)
        for key in keys:
            if path.endswith("/" + key):
                reads[key] += 1
    return reads


def _fill(store: ObjectStore, files: dict[str, bytes]) -> tuple[str, str]:
    bucket = store.create_bucket()
    for key, data in files.items():
        store.put(bucket, f"data/{key}", data)
    return bucket, store.url(bucket, "data/")


def test_a_prefix_is_captioned_and_a_no_op_rerun_reads_no_object(object_store: ObjectStore, tmp_path: Path) -> None:
    store, files = object_store, _photos()
    bucket, prefix = _fill(store, files)
    media = {k for k in files if not k.startswith(".") and not k.endswith(".txt")}
    keys = {f"data/{k}" for k in files}
    out = tmp_path / "out"
    run_fake(prefix, out)
    recs = records_by_id(out)
    assert set(recs) == media
    for name in media:
        assert recs[name]["error"] is None, recs[name]
        assert recs[name]["content_sha256"] == hashlib.sha256(files[name]).hexdigest()
        assert recs[name]["source"] == store.url(bucket, f"data/{name}")
    assert all(_object_reads(store, {f"data/{m}"})[f"data/{m}"] >= 1 for m in media)

    store.clear_requests()
    assert len(list(open_source(prefix))) == len(media)
    one_listing = len(store.requests())  # what opening and walking the prefix once asks of the store
    store.clear_requests()
    again = FakeEngine()
    run_fake(prefix, out, engine=again)
    assert again.added == 0
    assert _object_reads(store, keys) == dict.fromkeys(keys, 0), "a no-op rerun read an unchanged object"
    # One pass: progress's total comes from the run's own walk, not from a second listing.
    assert len(store.requests()) == one_listing > 0

    store.put(bucket, "data/b/d.jpg", jpeg_bytes(photo("chelsea").resize((65, 48))))  # changed
    store.put(bucket, "data/f.png", png_bytes(photo("astronaut").resize((50, 40))))  # new
    store.clear_requests()
    incremental = FakeEngine()
    run_fake(prefix, out, engine=incremental)
    assert incremental.added == 2
    reads = _object_reads(store, keys | {"data/f.png"})
    assert {k for k, n in reads.items() if n} == {"data/b/d.jpg", "data/f.png"}
    recs = records_by_id(out)
    assert recs["f.png"]["error"] is None and recs["b/d.jpg"]["supersedes"] is not None


def test_decode_workers_fetch_from_the_store_with_its_own_configuration(s3_store: ObjectStore, tmp_path: Path) -> None:
    """The worker processes reach the store through the standard environment (AWS_ENDPOINT_URL,
    AWS_* credentials), and a missing object is a typed error record while the job goes on."""
    files = _photos()
    bucket, prefix = _fill(s3_store, files)
    summary = run_fake(prefix, tmp_path / "out", workers=1)
    recs = records_by_id(tmp_path / "out")
    assert summary.errors == 0 and recs["e.jpg"]["content_sha256"] == hashlib.sha256(files["e.jpg"]).hexdigest()
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text(
        f'{{"id": "here", "path": "{s3_store.url(bucket, "data/a.jpg")}"}}\n'
        f'{{"id": "gone", "path": "{s3_store.url(bucket, "data/missing.jpg")}"}}\n'
    )
    roots = [tmp_path, s3_store.url(bucket, "data/")]
    run_fake(manifest, tmp_path / "out2", workers=1, allow_roots=roots)
    recs = records_by_id(tmp_path / "out2")
    assert recs["here"]["error"] is None and recs["gone"]["error_kind"] == "not_found"
    # A manifest's object row has no listing to vouch for it: the rerun asks for its info (a HEAD)
    # and, its ETag unchanged, reads no body; with --trust-urls it asks nothing at all.
    s3_store.clear_requests()
    again = FakeEngine()
    run_fake(manifest, tmp_path / "out2", engine=again, allow_roots=roots)
    gets = [r for r in s3_store.requests() if r.method == "GET" and r.path.endswith("/data/a.jpg")]
    assert again.added == 0 and gets == []
    s3_store.clear_requests()
    trusted = FakeEngine()
    run_fake(manifest, tmp_path / "out2", engine=trusted, allow_roots=roots, trust_urls=True)
    assert trusted.added == 0 and not [r for r in s3_store.requests() if r.path.endswith("/data/a.jpg")]


def test_plan_status_inspect_report_and_recipes_take_a_prefix(s3_store: ObjectStore, tmp_path: Path) -> None:
    """The other commands read the same prefix: a recipe's `input`, `--dry-run`'s plan and pending
    count, `status --count-pending`, `inspect` and the report's media previews."""
    import json

    from typer.testing import CliRunner

    from gemma4u_batch.cli.app import app
    from gemma4u_batch.plan.plan import plan
    from gemma4u_batch.plan.recipes import load_recipe
    from gemma4u_batch.report.page import ReportOptions, write_report

    files = _photos()
    bucket, prefix = _fill(s3_store, files)
    recipe = tmp_path / "job.yaml"
    recipe.write_text(f"input: {prefix}\noutput: out\nmodel: fake-model\nworkers: 0\n")
    config = load_recipe(recipe)
    assert config.input == prefix  # a URL stays as typed, not resolved against the recipe's folder
    before = plan(config, sample=2)
    assert before.items == 4 and before.found == {"image": 4} and before.pending is None
    assert before.modalities["image"].decoded == 2 and before.modalities["image"].media_tokens > 0
    run_fake(config)
    s3_store.put(bucket, "data/g.jpg", jpeg_bytes(photo("coffee").resize((30, 20))))
    assert plan(config, sample=1).pending == 1
    status = CliRunner().invoke(app, ["status", str(config.output), "--count-pending", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["pending"] == 1
    shown = CliRunner().invoke(app, ["inspect", prefix, "--json"])
    assert shown.exit_code == 0, shown.output
    ids = {json.loads(line)["id"] for line in shown.stdout.splitlines() if line.startswith("{")}
    assert ids == {"a.jpg", "b/c.png", "b/d.jpg", "e.jpg", "g.jpg"}
    page = write_report(config.output, tmp_path / "report.html", ReportOptions(sample=4))
    html = page.path.read_text()
    assert page.sampled == 4 and html.count("data:image/") >= 4 and "media not found" not in html

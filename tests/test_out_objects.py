"""OUT's files as objects (store/objects.py): the same behaviour from a local folder and from
each object store (moto's S3, gcp-storage-emulator, Azurite, on 127.0.0.1): a put is whole, an
exclusive create has one winner, a swap happens only at the version read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gemma4u_batch.store.objects import LocalFiles, ObjectFiles, OutFiles

from .object_stores import (
    ObjectStore,
    azure_server,
    azure_store,
    gcs_server,
    gcs_store,
    s3_server,
    s3_store,
)

__all__ = ["azure_server", "azure_store", "gcs_server", "gcs_store", "s3_server", "s3_store"]

pytestmark = pytest.mark.timeout(120)


def _maker(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], OutFiles]:
    if request.param == "local":
        return lambda: LocalFiles(tmp_path / "out")
    store = _store(request, request.param)
    bucket = store.create_bucket()
    return lambda: ObjectFiles(store.url(bucket, "jobs/out"))


def _store(request: pytest.FixtureRequest, scheme: str) -> ObjectStore:
    store: ObjectStore = request.getfixturevalue({"s3": "s3_store", "gs": "gcs_store", "az": "azure_store"}[scheme])
    return store


@pytest.fixture(params=["local", "s3", "gs", "az"])
def files(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], OutFiles]:
    """A maker of OUT's files: a local folder, then each object store."""
    return _maker(request, tmp_path)


@pytest.fixture(params=["local", "s3", "az"])
def guarded(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], OutFiles]:
    """The same, where the server enforces preconditions (gcp-storage-emulator accepts and
    ignores them: see test_gcs_writes_carry_their_preconditions)."""
    return _maker(request, tmp_path)


def test_put_read_list_delete(files: Callable[[], OutFiles]) -> None:
    out = files()
    assert out.list(".gemma4u/commits") == []
    assert out.read_tagged("a.json") is None
    with pytest.raises(FileNotFoundError):
        out.read("a.json")
    out.put(".gemma4u/commits/b.json", b"{}")
    out.put(".gemma4u/commits/a.json", b"[1]")
    out.put("part-1.jsonl", b"x\n")
    assert out.list(".gemma4u/commits") == ["a.json", "b.json"]
    assert out.read(".gemma4u/commits/a.json") == b"[1]"
    out.put(".gemma4u/commits/a.json", b"[2]")  # replaced whole
    with out.open(".gemma4u/commits/a.json") as fh:
        assert fh.read() == b"[2]"
    out.delete(".gemma4u/commits/a.json")
    out.delete(".gemma4u/commits/a.json")  # gone already: no error
    assert out.list(".gemma4u/commits") == ["b.json"]


def test_create_has_one_winner(guarded: Callable[[], OutFiles]) -> None:
    first, second = guarded(), guarded()
    assert first.create(".gemma4u/commits/p.json", b"mine")
    assert not second.create(".gemma4u/commits/p.json", b"theirs")
    assert second.read(".gemma4u/commits/p.json") == b"mine"


def test_swap_only_at_the_version_read(guarded: Callable[[], OutFiles]) -> None:
    holder, taker = guarded(), guarded()
    assert holder.swap("lock.json", b"x", "no-such-version") is None  # nothing there yet
    assert holder.create("lock.json", b"v1")
    seen = taker.read_tagged("lock.json")
    assert seen is not None and seen.data == b"v1"
    renewed = holder.swap("lock.json", b"v2", seen.tag)
    assert renewed is not None and renewed != seen.tag
    assert taker.swap("lock.json", b"taken", seen.tag) is None  # stale: the holder renewed
    assert taker.read("lock.json") == b"v2"
    now = taker.read_tagged("lock.json")
    assert now is not None and now.tag == renewed
    assert taker.swap("lock.json", b"taken", now.tag) is not None
    assert holder.swap("lock.json", b"v3", renewed) is None  # the holder lost it
    assert holder.read("lock.json") == b"taken"
    holder.delete("lock.json")
    assert taker.swap("lock.json", b"again", now.tag) is None


def test_gcs_writes_carry_their_preconditions(gcs_store: ObjectStore) -> None:
    """GCS's own server answers 412 when `ifGenerationMatch` does not hold; the emulator does
    not check it, so here the requests are what is checked: 0 to create, the generation read
    to swap."""
    out = ObjectFiles(gcs_store.url(gcs_store.create_bucket(), "out"))
    gcs_store.clear_requests()
    assert out.create("lock.json", b"v1")
    seen = out.read_tagged("lock.json")
    assert seen is not None and seen.data == b"v1"
    assert out.swap("lock.json", b"v2", seen.tag) is not None
    uploads = [r.params for r in gcs_store.requests() if r.method == "POST" and "upload" in r.path]
    assert [(p["name"], p["ifGenerationMatch"]) for p in uploads] == [
        (["out/lock.json"], ["0"]),
        (["out/lock.json"], [seen.tag]),
    ]

"""An object-store prefix lists like a folder: the same small tree (real media from examples/,
a hidden file, a hidden folder, unknown extensions, nested folders whose names sort one way as
bytes and another depth-first) written to a local folder and uploaded to moto's S3,
gcp-storage-emulator and Azurite on 127.0.0.1 (and served by a Hub stand-in), listed by
`ObjectFolderSource` in exactly `FolderSource`'s ids and order, each item with what the listing
said of it, and never a GET or HEAD of an object. A prefix or bucket that is not there is one
line: "input not found: URL"."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gemma4u_batch.errors import UsageError
from gemma4u_batch.records import Modality, ObjectStat
from gemma4u_batch.sources.folder import FolderSource
from gemma4u_batch.sources.locations import redact
from gemma4u_batch.sources.remote import ObjectFolderSource, object_stat, object_url_kind

from .helpers import REPO
from .object_stores import (
    AZURITE_KEY,
    HubFile,
    HubTreeStandin,
    ObjectStore,
    azure_server,
    azure_store,
    gcs_server,
    gcs_store,
    hub_server,
    hub_store,
    object_store,
    s3_server,
    s3_store,
    unique_name,
)

__all__ = [  # fixtures from object_stores.py
    "azure_server",
    "azure_store",
    "gcs_server",
    "gcs_store",
    "hub_server",
    "hub_store",
    "object_store",
    "s3_server",
    "s3_store",
]

EXAMPLES = REPO / "examples"
TREE: dict[str, str | bytes] = {
    "a.jpg": "images/sunset.jpg",
    "a-b.webp": "images/banner.webp",
    "a/b.png": "images/shapes.png",
    "a/c.jpg": "images/rotated_exif.jpg",
    "a/c/hello.wav": "audio/hello.wav",
    "a/c/readme.md": b"# not media\n",
    "a/.DS_Store": b"\0\0\0\1Bud1",
    "B.PNG": "images/transparent.png",
    "z dir/speech.wav": "audio/hello.wav",
    "notes.txt": b"unknown extension\n",
    ".hidden.jpg": "images/sunset.jpg",
    ".cache/x.png": "images/shapes.png",
}
EXPECTED = ["B.PNG", "a/b.png", "a/c/hello.wav", "a/c.jpg", "a-b.webp", "a.jpg", "z dir/speech.wav"]
"""Depth-first by name, as FolderSource walks: "a/…" before "a-b.webp" and "a.jpg", although a
flat listing sorts "a-b.webp" < "a.jpg" < "a/b.png" (by bytes '-' < '.' < '/')."""
LISTED_LEVELS = ["data/", "data/a/", "data/a/c/", "data/z dir/"]
"""The prefixes a walk of s3://bucket/data lists: one per level, hidden `.cache/` never."""
SECRETS = ("testing-secret", AZURITE_KEY, "AccountKey")


def _bytes(spec: str | bytes) -> bytes:
    return spec if isinstance(spec, bytes) else (EXAMPLES / spec).read_bytes()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for rel, spec in TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_bytes(spec))
    return root


def _filled(store: ObjectStore, tree: Path) -> str:
    """A new bucket with the tree under data/, and neighbours the walk must not pick up."""
    bucket = store.create_bucket()
    store.upload(tree, bucket, prefix="data/")
    store.put(bucket, "data.jpg", _bytes("images/sunset.jpg"))  # shares the prefix's first letters
    store.put(bucket, "data-2/x.jpg", _bytes("images/sunset.jpg"))
    store.put(bucket, "other/y.png", _bytes("images/shapes.png"))
    return bucket


def test_the_expected_order_is_the_folder_order(tree: Path) -> None:
    assert [item.id for item in FolderSource(tree)] == EXPECTED
    assert sorted(EXPECTED) != EXPECTED  # a flat, byte-sorted listing would get it wrong


def test_a_prefix_lists_like_the_folder(object_store: ObjectStore, tree: Path) -> None:
    started = time.time_ns()
    bucket = _filled(object_store, tree)
    finished = time.time_ns()
    local = list(FolderSource(tree))
    for url in (object_store.url(bucket, "data"), object_store.url(bucket, "data/")):
        assert object_url_kind(url) == "prefix"
        items = list(ObjectFolderSource(url))
        assert [item.id for item in items] == [item.id for item in local] == EXPECTED
        for item, twin in zip(items, local, strict=True):
            data = (tree / item.id).read_bytes()
            assert item.modality == twin.modality
            assert item.url == f"{object_store.scheme}://{bucket}/data/{item.id}"  # the URL keeps its //
            assert item.source == redact(item.url) == item.url  # nothing to hide in these URLs
            assert not any(secret in item.source for secret in SECRETS)
            assert item.path is None and item.data is None
            stat = item.stat
            assert stat is not None and stat.size == len(data)
            assert stat.etag and not stat.etag.startswith('"')
            assert stat.mtime_ns is not None
            # S3 keeps whole seconds: allow them either side
            assert started - 2 * 10**9 <= stat.mtime_ns <= finished + 2 * 10**9, (item.id, stat)
            if object_store.scheme == "s3":
                assert stat.etag == hashlib.md5(data).hexdigest()  # a single-part upload's ETag
                assert stat.version is None  # the bucket keeps no versions
            elif object_store.scheme == "gs":
                assert stat.version is not None and stat.version.isdigit()  # the object's generation
            else:
                assert stat.etag.startswith("0x")
    audio = ObjectFolderSource(object_store.url(bucket, "data"), frozenset({Modality.AUDIO}))
    assert [item.id for item in audio] == [item.id for item in FolderSource(tree, frozenset({Modality.AUDIO}))]


def test_listing_never_reads_an_object(object_store: ObjectStore, tree: Path) -> None:
    """Only listing requests: no GET or HEAD names any object under the prefix."""
    bucket = _filled(object_store, tree)
    object_store.clear_requests()
    items = list(ObjectFolderSource(object_store.url(bucket, "data/")))
    assert len(items) == len(EXPECTED)
    requests = object_store.requests()
    assert requests, "the listing went through the counting proxy"
    keys = [f"data/{rel}" for rel in TREE]
    for request in requests:
        path = request.path.replace("%2F", "/").replace("%20", " ")
        named = [key for key in keys if path.endswith(key)]
        assert not named, f"{request} reads an object"


def test_s3_listing_is_one_list_per_level(s3_store: ObjectStore, tree: Path) -> None:
    """Against S3, the walk is ListObjectsV2 with a delimiter, one level at a time, and nothing else."""
    bucket = _filled(s3_store, tree)
    s3_store.clear_requests()
    assert [item.id for item in ObjectFolderSource(s3_store.url(bucket, "data"))] == EXPECTED
    requests = s3_store.requests()
    assert all(r.method == "GET" and r.path == f"/{bucket}" for r in requests), requests
    assert all(r.params.get("list-type") == ["2"] and r.params.get("delimiter") == ["/"] for r in requests), requests
    assert sorted(r.params["prefix"][0] for r in requests) == LISTED_LEVELS


def test_an_object_url_is_an_object(object_store: ObjectStore, tree: Path) -> None:
    bucket = _filled(object_store, tree)
    assert object_url_kind(object_store.url(bucket, "data/a.jpg")) == "object"
    assert object_url_kind(object_store.url(bucket, "data/notes.txt")) == "object"
    assert object_url_kind(object_store.url(bucket)) == "prefix"  # the bucket's root
    folder = object_store.url(bucket, "data/a.jpg/")  # typed as a folder: there is none
    with pytest.raises(UsageError) as exc:
        object_url_kind(folder)
    assert str(exc.value) == f"input not found: {folder}"


def test_nothing_there_is_one_usage_error(object_store: ObjectStore) -> None:
    bucket = object_store.create_bucket()
    object_store.put(bucket, "x/a.jpg", _bytes("images/sunset.jpg"))
    missing = unique_name("missing")
    for url in (
        object_store.url(bucket, "nothing/"),
        object_store.url(bucket, "nothing"),
        object_store.url(bucket, "x/a"),  # a prefix of a key is not a folder
        object_store.url(missing),
        object_store.url(missing, "data/"),
    ):
        with pytest.raises(UsageError) as kind:
            object_url_kind(url)
        assert str(kind.value) == f"input not found: {url}"
        with pytest.raises(UsageError) as listing:
            list(ObjectFolderSource(url))
        assert str(listing.value) == f"input not found: {url}"


def test_an_empty_bucket_is_an_empty_folder(object_store: ObjectStore) -> None:
    bucket = object_store.create_bucket()
    for url in (object_store.url(bucket), f"{object_store.scheme}://{bucket}"):
        assert object_url_kind(url) == "prefix"
        assert list(ObjectFolderSource(url)) == []


# --------------------------------------------------------------------------- the Hub


def _hub_files(tree: Path) -> dict[str, HubFile]:
    files = {
        f"data/{rel}": HubFile((tree / rel).read_bytes(), lfs=rel.endswith((".wav", ".png", ".PNG"))) for rel in TREE
    }
    files[".gitattributes"] = HubFile(b"*.wav filter=lfs diff=lfs merge=lfs -text\n")
    files["README.md"] = HubFile(b"---\nlicense: cc0-1.0\n---\n")
    return files


def test_a_hub_dataset_folder_lists_like_the_folder(hub_store: tuple[ObjectStore, HubTreeStandin], tree: Path) -> None:
    """hf://datasets/ORG/NAME[@REV]/PATH through huggingface_hub's HfFileSystem (the stand-in
    serves the Hub's tree API on 127.0.0.1): ids and order as the folder's; an LFS file's etag is
    its sha256, a regular file's its git blob id."""
    store, hub = hub_store
    files = _hub_files(tree)
    repo = f"me/{unique_name('pics')}"
    hub.add(repo, files)
    hub.add(repo, {k: v for k, v in files.items() if not k.startswith("data/a/")}, revision="v1")
    url = f"hf://datasets/{repo}/data"
    assert object_url_kind(url) == "prefix"
    assert object_url_kind(url + "/a.jpg") == "object"
    items = list(ObjectFolderSource(url))
    assert [item.id for item in items] == EXPECTED
    for item in items:
        file = files[f"data/{item.id}"]
        assert item.url == f"{url}/{item.id}" and item.source == item.url
        assert item.stat == ObjectStat(etag=file.sha256 if file.lfs else file.blob_id, size=len(file.data))
    pinned = list(ObjectFolderSource(f"hf://datasets/{repo}@v1/data/"))
    assert [item.id for item in pinned] == [i for i in EXPECTED if not i.startswith("a/")]
    assert pinned[0].url == f"hf://datasets/{repo}@v1/data/{pinned[0].id}"
    for missing in (f"hf://datasets/{repo}/nothing", f"hf://datasets/me/{unique_name('none')}/data"):
        with pytest.raises(UsageError) as exc:
            object_url_kind(missing)
        assert str(exc.value) == f"input not found: {missing}"
        with pytest.raises(UsageError) as exc:
            list(ObjectFolderSource(missing))
        assert str(exc.value) == f"input not found: {missing}"
    assert hub.unexpected == []
    listing = [r for r in store.requests() if r.path != "/api/agent-harnesses"]
    assert all(r.method == "GET" and r.path.startswith("/api/datasets/me/") for r in listing), listing


# --------------------------------------------------------------------------- listing facts


def test_each_stores_listing_facts_become_one_object_stat() -> None:
    """The same fields from s3fs, gcsfs, adlfs and HfFileSystem entries (as each library gives them)."""
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    ns = 1767323045678901000
    assert int(when.timestamp()) * 10**9 + 678901000 == ns
    s3 = {"Key": "b/k.jpg", "ETag": '"9a0364b9e99bb480dd25e1f0284c8555"', "LastModified": when, "size": 7}
    assert object_stat(s3) == ObjectStat(etag="9a0364b9e99bb480dd25e1f0284c8555", size=7, mtime_ns=ns)
    assert object_stat({**s3, "VersionId": "null"}).version is None  # an unversioned bucket's listing
    assert object_stat({**s3, "VersionId": "3HL4kqtJlcpXroDTDmJ"}).version == "3HL4kqtJlcpXroDTDmJ"
    gcs = {"etag": "CKih16GjycICEAE=", "md5Hash": "mpA0uemb", "generation": "1767323045678901", "size": "7"}
    gcs |= {"updated": "2026-01-02T03:04:05.678901Z", "type": "file"}
    assert object_stat(gcs) == ObjectStat(etag="CKih16GjycICEAE=", version="1767323045678901", size=7, mtime_ns=ns)
    assert object_stat({k: v for k, v in gcs.items() if k != "etag"}).etag == "mpA0uemb"
    azure = {"etag": '"0x8DC1A2B3C4D5E6F"', "version_id": None, "last_modified": when, "size": 7}
    assert object_stat(azure) == ObjectStat(etag="0x8DC1A2B3C4D5E6F", size=7, mtime_ns=ns)
    versioned = {**azure, "version_id": "2026-01-02T03:04:05.6789012Z"}
    assert object_stat(versioned).version == "2026-01-02T03:04:05.6789012Z"
    naive = {**azure, "last_modified": when.replace(tzinfo=None)}  # no zone: taken as UTC
    assert object_stat(naive).mtime_ns == ns
    elsewhere = {**azure, "last_modified": when.astimezone(timezone(timedelta(hours=-5)))}
    assert object_stat(elsewhere).mtime_ns == ns


def test_hub_listing_facts_become_one_object_stat() -> None:
    """HfFileSystem's entries carry `BlobLfsInfo` / `LastCommitInfo` (dict subclasses) or plain dicts."""
    from huggingface_hub.hf_api import BlobLfsInfo, LastCommitInfo

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    sha = "d88b0d6a6ff9c3f8151f9d3228f57092aaea997f09af009eefd7373a77b5abb9"
    base = {"name": "datasets/me/x/a.wav", "size": 9, "type": "file", "blob_id": "8095a62c", "xet_hash": None}
    lfs = BlobLfsInfo(size=9, sha256=sha, pointer_size=134)
    assert object_stat({**base, "lfs": lfs, "last_commit": None}) == ObjectStat(etag=sha, size=9)
    assert object_stat({**base, "lfs": None, "last_commit": None}) == ObjectStat(etag="8095a62c", size=9)
    commit = LastCommitInfo(oid="47b62b20", title="add", date=when)
    expanded = object_stat({**base, "lfs": dict(lfs), "last_commit": commit})
    assert expanded == ObjectStat(etag=sha, version="47b62b20", size=9, mtime_ns=int(when.timestamp()) * 10**9)
    bucket_file = {"name": "buckets/me/b/a.wav", "size": 9, "type": "file", "xet_hash": "f00d", "mtime": when}
    assert object_stat(bucket_file) == ObjectStat(etag="f00d", size=9, mtime_ns=int(when.timestamp()) * 10**9)

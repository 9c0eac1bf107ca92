"""Hub inputs, through the real `huggingface_hub` and `datasets` clients against a local stand-in
of the Hub (tests/hub_standin.py, on 127.0.0.1): a hub dataset streamed row by row
(`--dataset ORG/NAME --split train`) and resumed by row identity, a folder of media in a dataset
repo (`hf://datasets/ORG/NAME/PATH`) listed and fetched; and a dataset's path cells naming URLs
(no server).

The clients read their configuration (endpoint, offline mode, caches) when they are imported:
the `hub` fixture points it at the stand-in and a temporary HF_HOME for the test by reloading
their constants, and back afterwards. No test here may reach anything but 127.0.0.1: every
other name lookup or connection fails and fails the test.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gemma4u_batch.config.job import JobConfig
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.errors import UsageError
from gemma4u_batch.records import Modality
from gemma4u_batch.sources.hf_dataset import DatasetSource

from .helpers import jpeg_bytes, photo, png_bytes, records_by_id, run_fake
from .hub_standin import HubStandin

TOKEN = "hf_standin_token"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Name lookups and connections anywhere but the loopback fail (and fail the test)."""
    elsewhere: list[str] = []
    lookup, connect = socket.getaddrinfo, socket.socket.connect

    def guarded_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in LOOPBACK:
            elsewhere.append(f"lookup {name}")
            raise socket.gaierror(socket.EAI_NONAME, f"{name}: the test stays on 127.0.0.1")
        return lookup(host, *args, **kwargs)

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            elsewhere.append(f"connect {address[0]}")
            raise ConnectionRefusedError(f"{address[0]}: the test stays on 127.0.0.1")
        return connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    yield elsewhere
    assert not elsewhere, f"traffic meant to leave 127.0.0.1: {elsewhere}"


def _reload_client_config() -> None:
    """`huggingface_hub` and `datasets` read the environment at import: read it again."""
    import datasets.config
    import huggingface_hub.constants
    from huggingface_hub import HfFileSystem

    importlib.reload(huggingface_hub.constants)
    importlib.reload(datasets.config)
    HfFileSystem.clear_instance_cache()  # an instance keeps its endpoint and listings


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubStandin]:
    """The stand-in, with the clients pointed at it: online, a temporary HF_HOME (nothing of the
    machine's caches or token is used), LFS rather than Xet, no download counts (an S3 request
    of `datasets`) and no dataset viewer (`datasets` asks it on the endpoint's "datasets-server."
    host, which the stand-in is not)."""
    import datasets.config

    env = {
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf-home" / "datasets"),
        "HF_TOKEN": TOKEN,
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    with HubStandin(TOKEN) as standin:
        try:
            with pytest.MonkeyPatch.context() as mp:
                for name, value in {"HF_ENDPOINT": standin.endpoint, **env}.items():
                    mp.setenv(name, value)
                for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "XDG_CACHE_HOME"):
                    mp.delenv(name, raising=False)
                _reload_client_config()
                mp.setattr(datasets.config, "USE_PARQUET_EXPORT", False)
                yield standin
        finally:
            _reload_client_config()  # the session's environment again
    assert not standin.unexpected, f"requests the stand-in does not implement: {standin.unexpected}"
    assert not standin.unauthorized


# ------------------------------------------------------------------------------ test data


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")


def small_jpeg(name: str) -> bytes:
    """A scikit-image photo, a quarter of its size."""
    return jpeg_bytes(photo(name).reduce(4))


def shard(names: list[str], ids: bool) -> bytes:
    """A Parquet shard as `datasets` writes it (the Image feature in its schema): the photos, and
    an `id` column when `ids`."""
    import datasets

    columns: dict[str, Any] = {"image": [{"bytes": small_jpeg(n), "path": f"{n}.jpg"} for n in names]}
    features = {"image": datasets.Image()}
    if ids:
        columns = {"id": [f"photo-{n}" for n in names], **columns}
        features = {"id": datasets.Value("string"), **features}
    columns["caption_hint"] = [f"a photo called {n}" for n in names]
    features["caption_hint"] = datasets.Value("string")
    buf = io.BytesIO()
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).to_parquet(buf)
    return buf.getvalue()


CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
# Photos

scikit-image's public-domain photos, for gemma4u's tests.
"""


def seed_dataset(hub: HubStandin, repo: str, ids: bool) -> dict[str, bytes]:
    """A dataset repo as `push_to_hub` leaves it: two shards (2 + 1 rows) and the card. Its shards."""
    shards = {
        "data/train-00000-of-00002.parquet": shard(list(PHOTOS[:2]), ids),
        "data/train-00001-of-00002.parquet": shard([PHOTOS[2]], ids),
    }
    hub.seed(repo, {**shards, "README.md": CARD}, summary="Upload dataset")
    return shards


def dataset_job(repo: str, out: Path, split: str = "train") -> JobConfig:
    return JobConfig(dataset=repo, split=split, output=out, model="fake-model", workers=0)


def run_dataset(repo: str, out: Path, split: str = "train") -> FakeEngine:
    engine = FakeEngine()
    run_fake(dataset_job(repo, out, split), engine=engine)
    return engine


def copies_in(folder: Path, blobs: dict[str, bytes]) -> list[str]:
    """Files under `folder` that are Parquet/Arrow files or hold one of `blobs`' bytes."""
    digests = {hashlib.sha256(b).hexdigest() for b in blobs.values()}
    sizes = {len(b) for b in blobs.values()}
    found = []
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        if p.suffix in (".parquet", ".arrow") or (
            p.stat().st_size in sizes and hashlib.sha256(p.read_bytes()).hexdigest() in digests
        ):
            found.append(str(p.relative_to(folder)))
    return found


# ----------------------------------------------------------------------- a hub dataset


def test_hub_dataset_is_streamed_one_record_per_row_with_its_id(hub: HubStandin, tmp_path: Path) -> None:
    """`--dataset ORG/NAME --split train`: one record per row, its id the row's `id`, the row's
    small columns as fields; the shards read from the Hub at the commit the run resolved and
    never saved anywhere (streamed, not downloaded first)."""
    shards = seed_dataset(hub, "org/photos", ids=True)
    out = tmp_path / "out"
    engine = run_dataset("org/photos", out)

    recs = records_by_id(out)
    assert sorted(recs) == sorted(f"photo-{n}" for n in PHOTOS[:3])
    assert engine.added == 3
    for name in PHOTOS[:3]:
        rec = recs[f"photo-{name}"]
        assert rec["error"] is None and rec["text"]
        assert rec["content_sha256"] == hashlib.sha256(small_jpeg(name)).hexdigest()
        assert rec["fields"]["caption_hint"] == f"a photo called {name}"

    head = hub.head("org/photos")
    read = {p.rsplit("/resolve/", 1)[1] for p in hub.requests("GET", "/datasets/org/photos/resolve/")}
    assert {p for p in read if p.endswith(".parquet")} == {f"{head}/{name}" for name in shards}  # at the commit
    assert copies_in(tmp_path / "hf-home", shards) == []
    assert (tmp_path / "hf-home").is_dir()  # the clients did use it (the card, their locks)


def test_hub_dataset_rerun_generates_nothing(hub: HubStandin, tmp_path: Path) -> None:
    """A second run over the same dataset finds every row done by its id and content: nothing is
    generated, and OUT still holds one record per row."""
    seed_dataset(hub, "org/photos", ids=True)
    out = tmp_path / "out"
    run_dataset("org/photos", out)
    first = records_by_id(out)

    again = run_dataset("org/photos", out)
    assert again.added == 0
    assert records_by_id(out) == first


def test_hub_dataset_row_added_upstream_is_the_only_new_work(hub: HubStandin, tmp_path: Path) -> None:
    """A new commit upstream adds a third shard with one row: the rerun reads the new revision
    and generates exactly that row; the others keep their records."""
    seed_dataset(hub, "org/photos", ids=True)
    out = tmp_path / "out"
    run_dataset("org/photos", out)
    first = records_by_id(out)

    new_shard = {"data/train-00002-of-00003.parquet": shard([PHOTOS[3]], ids=True)}
    commit = hub.seed("org/photos", new_shard, summary="Add a row")
    again = run_dataset("org/photos", out)

    assert again.added == 1
    recs = records_by_id(out)
    assert set(recs) == set(first) | {f"photo-{PHOTOS[3]}"}
    assert {i: recs[i] for i in first} == first
    assert any(p.endswith(f"/resolve/{commit}/data/train-00002-of-00003.parquet") for m, p in hub.log if m == "GET")


def test_hub_dataset_without_id_column_ids_rows_by_split_and_index(hub: HubStandin, tmp_path: Path) -> None:
    """No `id` column: rows are "train/00000000", … in dataset order (shards by name), the same
    on a rerun, which generates nothing."""
    seed_dataset(hub, "org/plain", ids=False)
    out = tmp_path / "out"
    run_dataset("org/plain", out)
    recs = records_by_id(out)
    assert sorted(recs) == ["train/00000000", "train/00000001", "train/00000002"]
    for i, name in enumerate(PHOTOS[:3]):
        assert recs[f"train/{i:08d}"]["content_sha256"] == hashlib.sha256(small_jpeg(name)).hexdigest()
    assert run_dataset("org/plain", out).added == 0


@pytest.mark.parametrize(
    ("repo", "split", "expected"),
    [
        ("org/nope", "train", "cannot load dataset org/nope: Dataset 'org/nope' doesn't exist on the Hub"),
        ("org/photos", "test", "dataset org/photos: no split 'test' (splits: train)"),
    ],
    ids=["no-such-dataset", "no-such-split"],
)
def test_hub_dataset_or_split_not_there_is_one_line(
    hub: HubStandin, tmp_path: Path, repo: str, split: str, expected: str
) -> None:
    seed_dataset(hub, "org/photos", ids=True)
    with pytest.raises(UsageError) as info:
        run_dataset(repo, tmp_path / "out", split=split)
    message = str(info.value)
    assert message.startswith(expected) and "\n" not in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# -------------------------------------------------------------------- the stand-in itself


def test_standin_serves_what_hffilesystem_reads(hub: HubStandin) -> None:
    """The read API as `HfFileSystem` uses it: paged recursive and one-level listings (LFS facts,
    last commits when expanded), paths-info, byte ranges, and an old commit still readable."""
    from huggingface_hub import HfApi, HfFileSystem

    photos = {f"images/{n}.jpg": small_jpeg(n) for n in PHOTOS[:3]}
    first = hub.seed("org/media", {**photos, "notes.txt": "plain text\n"}, summary="photos")
    second = hub.seed("org/media", {"images/more/rocket.png": png_bytes(photo("rocket").reduce(4))}, summary="more")
    hub.page_size = 2  # the listing takes pages

    fs = HfFileSystem()
    pages = len(hub.requests("GET", "/api/datasets/org/media/tree/"))
    found = fs.find("datasets/org/media/images", detail=True)
    assert len(hub.requests("GET", "/api/datasets/org/media/tree/")) - pages >= 3  # 5 entries, 2 a page
    assert sorted(found) == sorted(f"datasets/org/media/{p}" for p in [*photos, "images/more/rocket.png"])
    chelsea = found["datasets/org/media/images/chelsea.jpg"]
    assert chelsea["size"] == len(photos["images/chelsea.jpg"])
    assert chelsea["lfs"]["sha256"] == hashlib.sha256(photos["images/chelsea.jpg"]).hexdigest()
    top = fs.ls("datasets/org/media", detail=True)
    assert {(e["name"].rsplit("/", 1)[1], e["type"]) for e in top} == {
        (".gitattributes", "file"),
        ("notes.txt", "file"),
        ("images", "directory"),
    }
    assert fs.cat_file("datasets/org/media/images/coffee.jpg", start=10, end=20) == photos["images/coffee.jpg"][10:20]
    assert fs.read_text("datasets/org/media/notes.txt") == "plain text\n"
    assert fs.cat_file(f"datasets/org/media@{first}/images/astronaut.jpg") == photos["images/astronaut.jpg"]
    assert not fs.exists(f"datasets/org/media@{first}/images/more/rocket.png")

    api = HfApi()
    expanded = {e.path: e for e in api.list_repo_tree("org/media", "images", repo_type="dataset", expand=True)}
    assert expanded["images/astronaut.jpg"].last_commit.oid == first
    assert expanded["images/more"].last_commit.oid == second
    info = api.get_paths_info("org/media", ["notes.txt", "images", "missing"], repo_type="dataset")
    assert [i.path for i in info] == ["notes.txt", "images"]
    assert api.dataset_info("org/media").sha == second


# ------------------------------------------------------------ a dataset's cells naming URLs


@pytest.fixture
def url_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A saved dataset (`save_to_disk`) whose Image cells carry no bytes but a URL, beside one
    that carries its bytes. (`save_to_disk` sizes its shards by asking each URL's size: told the
    table's own size instead, it asks nothing.)"""
    import datasets

    monkeypatch.setattr(datasets.Dataset, "_estimate_nbytes", lambda self: self.data.nbytes)

    cells = {
        "s3-in-root": "s3://bucket/photos/a.jpg",
        "hf-in-root": "hf://datasets/org/media/images/b.jpg",
        "https-in-root": "https://cdn.example.org/pub/c.jpg?X-Amz-Signature=s3cr3t",
        "https-outside": "https://user:pa55@cdn.example.org/private/d.jpg?X-Amz-Signature=s3cr3t",
        "climbs-out": "s3://bucket/photos/../secrets/e.jpg",
        "other-bucket": "s3://bucket-photos/f.jpg",
        "ftp": "ftp://files.example.org/g.jpg",
    }
    rows = [{"bytes": None, "path": url} for url in cells.values()]
    rows += [{"bytes": small_jpeg("astronaut"), "path": "https://cdn.example.org/pub/astronaut.jpg"}]
    ds = datasets.Dataset.from_dict(
        {"id": [*cells, "inline"], "image": rows},
        features=datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()}),
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    return tmp_path / "ds"


ROOTS: list[Path | str] = ["s3://bucket/photos/", "hf://datasets/org/media", "https://cdn.example.org/pub/"]


def test_dataset_cells_naming_urls_under_an_allowed_root_are_remote_items(url_rows: Path, tmp_path: Path) -> None:
    """A cell naming a URL under an allowed URL root is a remote item (its `url`, the row's
    source); one outside them is an error naming the URL (credentials and signatures redacted)
    and saying to pass --allow-root; a scheme gemma4u does not read is an error too. Bytes in
    the cell win over its URL. Folders among the roots are for local paths only."""
    items = {i.id: i for i in DatasetSource(url_rows, allow_roots=[*ROOTS, tmp_path])}

    for name, url in [
        ("s3-in-root", "s3://bucket/photos/a.jpg"),
        ("hf-in-root", "hf://datasets/org/media/images/b.jpg"),
        ("https-in-root", "https://cdn.example.org/pub/c.jpg?X-Amz-Signature=s3cr3t"),
    ]:
        item = items[name]
        assert (item.url, item.error, item.path, item.data, item.modality) == (url, None, None, None, Modality.IMAGE)
        assert item.source.startswith(f"{url_rows}[train]#")

    for name, shown in [
        ("https-outside", "https://***@cdn.example.org/private/d.jpg?<redacted>"),
        ("climbs-out", "s3://bucket/photos/../secrets/e.jpg"),
        ("other-bucket", "s3://bucket-photos/f.jpg"),
    ]:
        error = items[name].error
        assert items[name].url is None and error is not None
        assert shown in error and "outside the allowed roots" in error and "pass --allow-root" in error
        assert "s3cr3t" not in error and "pa55" not in error
    ftp = items["ftp"]
    assert ftp.url is None and ftp.error is not None and "unsupported URL scheme ftp://" in ftp.error

    assert items["inline"].data == small_jpeg("astronaut") and items["inline"].url is None


def test_dataset_cells_naming_urls_need_a_url_root(url_rows: Path, tmp_path: Path) -> None:
    """With no URL root given, every URL cell is refused: folders admit none."""
    items = {i.id: i for i in DatasetSource(url_rows, allow_roots=[tmp_path])}
    for name in ("s3-in-root", "hf-in-root", "https-in-root"):
        error = items[name].error
        assert items[name].url is None and error is not None
        assert "outside the allowed roots (none for URLs); pass --allow-root" in error


def test_dataset_url_cell_type_comes_from_the_url_path(tmp_path: Path) -> None:
    """A plain `path` column (no Image feature): a URL's media type is its path's extension, a
    presigned URL's query string aside; a URL with no media extension is an error that does not
    show the signature."""
    import datasets

    urls = ["https://cdn.example.org/pub/a.jpg?sig=abc123", "https://cdn.example.org/pub/notes?sig=abc123"]
    datasets.Dataset.from_dict({"id": ["a", "b"], "path": urls}).save_to_disk(str(tmp_path / "ds"))
    a, b = DatasetSource(tmp_path / "ds", allow_roots=["https://cdn.example.org/pub/"])
    assert (a.url, a.modality, a.error) == (urls[0], Modality.IMAGE, None)
    assert b.url is None and b.error is not None and "abc123" not in b.error


# ------------------------------------------------------------- a folder in a dataset repo


def test_hub_folder_input_is_listed_and_fetched_once(hub: HubStandin, tmp_path: Path) -> None:
    """INPUT `hf://datasets/ORG/NAME/images`: one record per media file under the folder (ids
    relative to it, its `content_sha256` the file's sha256), files beside the folder left out. A
    rerun lists the folder again but fetches nothing; a file changed upstream is the only one
    fetched (and generated) again."""
    files = {
        "images/astronaut.jpg": small_jpeg("astronaut"),
        "images/chelsea.jpg": small_jpeg("chelsea"),
        "images/more/coffee.png": png_bytes(photo("coffee").reduce(4)),
        "images/notes.txt": "not media\n",
        "elsewhere/rocket.jpg": small_jpeg("rocket"),
    }
    hub.seed("org/media", {**files, "README.md": "# Photos\n"}, summary="photos")
    out = tmp_path / "out"
    url = "hf://datasets/org/media/images"

    def run() -> tuple[FakeEngine, set[str]]:
        """A run on a fresh FakeEngine, and the files it fetched (paths in the repo)."""
        engine, before = FakeEngine(), len(hub.requests("GET", "/datasets/org/media/resolve/"))
        run_fake(JobConfig(input=url, output=out, model="fake-model", workers=0), engine=engine)
        resolved = hub.requests("GET", "/datasets/org/media/resolve/")[before:]
        return engine, {p.split("/resolve/", 1)[1].split("/", 1)[1] for p in resolved}

    engine, fetched = run()
    recs = records_by_id(out)
    media = {k: v for k, v in files.items() if k.startswith("images/") and not k.endswith(".txt")}
    assert sorted(recs) == sorted(k.removeprefix("images/") for k in media)
    for path, data in media.items():
        rec = recs[path.removeprefix("images/")]
        assert rec["error"] is None and rec["content_sha256"] == hashlib.sha256(data).hexdigest()
    assert engine.added == 3
    assert fetched == set(media)

    engine, fetched = run()
    assert engine.added == 0 and fetched == set()

    changed = small_jpeg("camera")
    hub.seed("org/media", {"images/chelsea.jpg": changed}, summary="a new chelsea")
    engine, fetched = run()
    assert engine.added == 1 and fetched == {"images/chelsea.jpg"}
    assert records_by_id(out)["chelsea.jpg"]["content_sha256"] == hashlib.sha256(changed).hexdigest()

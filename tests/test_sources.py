"""Sources: folder walk, manifest rows (good and bad), the media column, Hugging Face datasets
built locally."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gemma4u_batch.errors import UsageError
from gemma4u_batch.records import Modality
from gemma4u_batch.sources.folder import FolderSource
from gemma4u_batch.sources.hf_dataset import (
    DatasetSource,
    looks_like_saved_dataset,
    looks_like_shard_folder,
)
from gemma4u_batch.sources.manifest import ManifestSource

from .helpers import EXAMPLES, records_by_task, run_fake


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """datasets reads the offline flags at import; force them in case it was imported earlier."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)


def png_bytes(color: str = "red", size: int = 4) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


def wav_bytes(n: int = 160, value: float = 0.0) -> bytes:
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.full(n, value, dtype="float32"), 16000, format="WAV")
    return buf.getvalue()


def by_id(items):
    return {i.id: i for i in items}


# --------------------------------------------------------------------------- folder


def test_folder_recursive_order_hidden_and_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / ".hiddendir").mkdir()
    (root / "b.png").write_bytes(png_bytes())
    (root / "a" / "c.wav").write_bytes(wav_bytes())
    (root / "a" / "z.mp4").write_bytes(b"video")
    (root / ".hidden.png").write_bytes(png_bytes())
    (root / ".hiddendir" / "x.png").write_bytes(png_bytes())
    (root / "notes.txt").write_text("not media")
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes())
    (root / "link_out.png").symlink_to(outside)
    (root / "link_in.png").symlink_to(root / "b.png")

    items = list(FolderSource(root))
    assert [i.id for i in items] == ["a/c.wav", "a/z.mp4", "b.png", "link_in.png"]
    assert [i.modality for i in items] == [Modality.AUDIO, Modality.VIDEO, Modality.IMAGE, Modality.IMAGE]
    assert Path(items[3].path).read_bytes() == png_bytes()
    assert all(i.error is None for i in items)

    only_audio = list(FolderSource(root, modalities=frozenset({Modality.AUDIO})))
    assert [i.id for i in only_audio] == ["a/c.wav"]


def test_folder_chunks_are_the_items_as_columns(tmp_path, monkeypatch):
    """A folder is walked into chunks (what the quick check decides on without an item per
    file): a run of one folder's files up to the next subfolder, at most CHUNK_ITEMS; their
    items are the items iteration gives; sources as INPUT names them, files absolute."""
    from gemma4u_batch.sources import folder as folder_module
    from gemma4u_batch.sources.chunks import Chunk

    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    for name in ("a1.png", "a2.wav", "m/y.png", "z.mp4", ".hidden.png", "notes.txt"):
        (root / name).write_bytes(b"x")
    chunks = list(FolderSource(root).chunks())
    assert [c.ids for c in chunks] == [["a1.png", "a2.wav"], ["m/y.png"], ["z.mp4"]]
    assert [c.item(i) for c in chunks for i in range(len(c))] == list(FolderSource(root))
    assert chunks[0].modalities == [Modality.IMAGE, Modality.AUDIO] and not chunks[0].others

    monkeypatch.chdir(tmp_path)
    for given, prefix in ((Path("root"), "root/"), (Path("root/"), "root/"), (Path("root/m/.."), "root/m/../")):
        [first, *_] = FolderSource(given).chunks()
        assert first.item(0).source == f"{prefix}a1.png"  # as INPUT names it
        assert first.files[0] == str(root / "a1.png")  # the stat cache's key: absolute and normal
    monkeypatch.chdir(root)
    [first, *_] = FolderSource(Path(".")).chunks()
    assert first.item(0).source == "a1.png" and first.files[0] == str(root / "a1.png")

    monkeypatch.setattr(folder_module, "CHUNK_ITEMS", 2)
    for i in range(5):
        (root / "m" / f"w{i}.png").write_bytes(b"x")
    assert [len(c) for c in FolderSource(root / "m").chunks()] == [2, 2, 2]

    speech = Chunk.of_files(["v.mp4"], ["v.mp4"], [str(root / "z.mp4")], [Modality.VIDEO]).sent_as_audio()
    assert speech.modalities == [Modality.AUDIO] and speech.item(0).modality is Modality.AUDIO


# ------------------------------------------------------------------------- manifest


@pytest.fixture
def media(tmp_path):
    """A manifest folder with a few media files and one file outside it."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "img1.png").write_bytes(png_bytes())
    (data / "sub" / "snd.wav").write_bytes(wav_bytes())
    (data / "clip.mp4").write_bytes(b"video")
    (data / "clip.bin").write_bytes(b"video")
    (tmp_path / "outside.png").write_bytes(png_bytes("blue"))
    return data


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_manifest_jsonl_good_and_bad_rows(media):
    abs_wav = str(media / "sub" / "snd.wav")
    manifest = write_jsonl(
        media / "list.jsonl",
        [
            json.dumps(
                {"path": "img1.png", "id": "a", "caption": "x", "n": 3, "prompt": "Describe", "task": "caption"}
            ),
            "",
            "{not json",
            "[1, 2]",
            json.dumps({"id": "m", "caption": "no path"}),
            json.dumps({"path": "../outside.png", "lang": "en"}),
            json.dumps({"path": "img1.png", "id": "a"}),
            json.dumps({"path": "weird.xyz"}),
            json.dumps({"path": abs_wav, "id": 5, "meta": {"k": [1, 2.5]}}),
            json.dumps({"path": "clip.bin", "modality": "VIDEO"}),
            json.dumps({"path": "img1.png", "modality": "hologram", "id": "h"}),
            json.dumps({"path": 42}),
            json.dumps({"path": ""}),
            json.dumps({"file": "sub/snd.wav"}),
        ],
    )
    src = ManifestSource(manifest)
    assert src.root == media
    items = list(src)
    ids = [i.id for i in items]
    assert ids == [
        "a",
        "list.jsonl:line3",
        "list.jsonl:line4",
        "m",
        "../outside.png",
        "a#dup7",
        "weird.xyz",
        "5",
        "clip.bin",
        "h",
        "list.jsonl:line12",
        "list.jsonl:line13",
        "sub/snd.wav",
    ]
    assert len(set(ids)) == len(ids)
    it = by_id(items)

    good = it["a"]
    assert good.error is None
    assert good.path == os.path.realpath(media / "img1.png")
    assert good.modality is Modality.IMAGE
    assert good.prompt == "Describe" and good.task == "caption"
    assert good.fields == {"caption": "x", "n": 3}
    assert good.source == f"{manifest}:1"

    assert it["list.jsonl:line3"].error.startswith("manifest line 3: invalid JSON")
    assert it["list.jsonl:line3"].source == f"{manifest}:3"
    assert it["list.jsonl:line4"].error == "manifest line 4: expected a JSON object, got list"
    assert it["m"].error.startswith("manifest line 5: missing path")
    out = it["../outside.png"]
    assert out.error.startswith("manifest line 6: path '../outside.png' is outside the allowed roots (")
    assert out.error.endswith("pass --allow-root to allow it")
    assert out.path is None and out.modality is Modality.IMAGE and out.fields == {"lang": "en"}
    assert it["a#dup7"].error == "manifest line 7: duplicate id 'a' (first on line 1)"
    assert it["weird.xyz"].error == "manifest line 8: unknown media type for extension '.xyz'"
    wav = it["5"]
    assert wav.error is None and wav.modality is Modality.AUDIO
    assert Path(wav.path).read_bytes() == wav_bytes()
    assert wav.fields == {"meta": {"k": [1, 2.5]}}
    assert it["clip.bin"].error is None and it["clip.bin"].modality is Modality.VIDEO
    assert it["h"].error.startswith("manifest line 11: unknown modality 'hologram'")
    assert it["list.jsonl:line12"].error == "manifest line 12: path in 'path' must be a string, got int"
    assert it["list.jsonl:line13"].error == "manifest line 13: empty path in 'path'"
    assert it["sub/snd.wav"].error is None and it["sub/snd.wav"].path == str(Path(abs_wav).resolve())

    # Iterating again gives the same items (deterministic, nothing consumed).
    assert [i.id for i in src] == ids


def test_manifest_allow_roots_and_symlink_escape(media, tmp_path):
    (media / "escape.png").symlink_to(tmp_path / "outside.png")
    manifest = write_jsonl(
        media / "m.jsonl",
        [json.dumps({"path": "../outside.png"}), json.dumps({"path": "escape.png"}), json.dumps({"path": "img1.png"})],
    )
    items = list(ManifestSource(manifest))
    assert [i.error is not None for i in items] == [True, True, False]
    assert "outside the allowed roots" in items[1].error

    allowed = list(ManifestSource(manifest, allow_roots=[tmp_path]))
    assert [i.error for i in allowed] == [None, None, None]
    assert allowed[0].path == str((tmp_path / "outside.png").resolve())
    assert Path(allowed[1].path).read_bytes() == png_bytes("blue")


def test_manifest_modality_filter_skips_not_errors(media):
    manifest = write_jsonl(
        media / "m.jsonl",
        [
            json.dumps({"path": "img1.png"}),
            json.dumps({"path": "sub/snd.wav"}),
            json.dumps({"path": "clip.mp4"}),
            "oops",
            json.dumps({"path": "img1.png", "id": "x", "modality": "audio"}),
        ],
    )
    items = list(ManifestSource(manifest, modalities=frozenset({Modality.AUDIO})))
    assert [(i.id, i.error is None) for i in items] == [("sub/snd.wav", True), ("m.jsonl:line4", False), ("x", True)]
    assert items[2].modality is Modality.AUDIO


def test_manifest_filtered_row_still_counts_for_duplicates(media):
    manifest = write_jsonl(
        media / "m.jsonl", [json.dumps({"path": "sub/snd.wav", "id": "k"}), json.dumps({"path": "img1.png", "id": "k"})]
    )
    items = list(ManifestSource(manifest, modalities=frozenset({Modality.IMAGE})))
    assert [i.id for i in items] == ["k#dup2"]
    assert "duplicate id 'k'" in items[0].error


def test_manifest_jsonl_bad_utf8_bom_and_crlf(media):
    manifest = media / "m.jsonl"
    manifest.write_bytes(
        b'\xef\xbb\xbf{"path": "img1.png"}\r\n\xff\xfe garbage\r\n\r\n{"path": "sub/snd.wav", "prompt": "Say"}\r\n'
    )
    items = list(ManifestSource(manifest))
    assert [i.id for i in items] == ["img1.png", "m.jsonl:line2", "sub/snd.wav"]
    assert items[0].error is None
    assert items[1].error == "manifest line 2: not valid UTF-8"
    assert items[2].prompt == "Say" and items[2].error is None


def test_manifest_csv(media):
    abs_img = media / "img1.png"
    manifest = media / "list.csv"
    manifest.write_text(
        "file,id,prompt,speaker,task\n"
        f"img1.png,one,,alice,\n"
        f'sub/snd.wav,two,"Transcribe\nthis",bob,transcribe\n'
        f"{abs_img},,Caption it,carol,caption\n"
        "\n"
        "clip.mp4,four,p,dave,t,EXTRA\n"
        "../outside.png,five,,eve,\n"
        "clip.mp4,one,,frank,\n"
        "nothing.doc,six,,,\n",
        encoding="utf-8",
    )
    items = list(ManifestSource(manifest))
    assert [i.id for i in items] == ["one", "two", str(abs_img), "list.csv:line7", "five", "one#dup9", "six"]
    one, two, three, bad, outside, dup, unknown = items
    assert one.error is None and one.prompt is None and one.task is None
    assert one.fields == {"speaker": "alice"}
    assert two.prompt == "Transcribe\nthis" and two.task == "transcribe" and two.modality is Modality.AUDIO
    assert Path(two.path).read_bytes() == wav_bytes()
    assert three.error is None and three.path == str(abs_img.resolve()) and three.prompt == "Caption it"
    assert three.source == f"{manifest}:5"
    assert bad.error == "manifest line 7: row has 6 fields but the header has 5"
    assert outside.error.startswith("manifest line 8: path '../outside.png' is outside")
    assert dup.error == "manifest line 9: duplicate id 'one' (first on line 2)"
    assert unknown.error == "manifest line 10: unknown media type for extension '.doc'"


def test_manifest_tsv_with_path_column(media):
    manifest = media / "list.tsv"
    manifest.write_text("audio_file\tnote\nsub/snd.wav\thello, world\nimg1.png\t\n", encoding="utf-8")
    items = list(ManifestSource(manifest, path_column="audio_file"))
    assert [(i.id, i.modality, i.fields) for i in items] == [
        ("sub/snd.wav", Modality.AUDIO, {"note": "hello, world"}),
        ("img1.png", Modality.IMAGE, {"note": ""}),
    ]


def test_manifest_parquet(media, tmp_path):
    table = pa.table(
        {
            "image": ["img1.png", None, str(media / "clip.mp4"), "../outside.png", "sub/snd.wav"],
            "id": ["p1", "p2", None, "p4", "p5"],
            "score": [0.5, 1.0, float("nan"), 2.0, 3.0],
            "tags": [["a"], [], None, ["b", "c"], []],
            "blob": [b"x", b"y", b"z", b"w", b"v"],
            "prompt": [None, None, "What happens?", None, None],
        }
    )
    manifest = media / "list.parquet"
    pq.write_table(table, manifest, row_group_size=2)
    items = list(ManifestSource(manifest, modalities=frozenset({Modality.IMAGE, Modality.VIDEO})))
    assert [i.id for i in items] == ["p1", "p2", str(media / "clip.mp4"), "p4"]
    p1, p2, clip, p4 = items
    assert p1.error is None and p1.fields == {"score": 0.5, "tags": ["a"]}
    assert Path(p1.path).read_bytes() == png_bytes()
    assert p2.error == "manifest row 2: empty path in 'image'"
    assert clip.modality is Modality.VIDEO and clip.prompt == "What happens?" and clip.fields["score"] is None
    assert clip.source == f"{manifest}:3"
    assert "outside the allowed roots" in p4.error


def test_manifest_parquet_inline_media_struct(media):
    table = pa.table(
        {
            "image": [{"bytes": png_bytes("green"), "path": "g.png"}, {"bytes": None, "path": "img1.png"}],
            "id": ["g", "f"],
        }
    )
    manifest = media / "inline.parquet"
    pq.write_table(table, manifest)
    g, f = list(ManifestSource(manifest))
    assert g.data == png_bytes("green") and g.path is None and g.modality is Modality.IMAGE and g.error is None
    assert f.error is not None and "must be a string" in f.error


def test_manifest_empty_files_give_no_items(media):
    for name in ("e.jsonl", "e.csv", "e.tsv"):
        (media / name).write_text("")
        assert list(ManifestSource(media / name)) == []
    (media / "blank.jsonl").write_text("\n\n  \n")
    assert list(ManifestSource(media / "blank.jsonl")) == []
    (media / "header_only.csv").write_text("path,id\n")
    assert list(ManifestSource(media / "header_only.csv")) == []
    pq.write_table(pa.table({"path": pa.array([], pa.string())}), media / "e.parquet")
    assert list(ManifestSource(media / "e.parquet")) == []


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "needle"),
    [
        ("missing.jsonl", None, {}, "not found"),
        ("list.txt", "img1.png\n", {}, "unsupported format"),
        ("noheader.csv", "img1.png,a cat\nsub/snd.wav,a dog\n", {}, "no path column"),
        ("wrongcol.csv", "path,id\nimg1.png,a\n", {"path_column": "media"}, "path column 'media' not found"),
        ("bad.parquet", b"this is not parquet at all", {}, "not a readable Parquet file"),
        ("nocol.parquet", "PARQUET_NO_PATH", {}, "no path column"),
        ("dir.jsonl", "DIR", {}, "not a regular file"),
    ],
)
def test_manifest_unparseable_raises_usage_error(media, name, content, kwargs, needle):
    target = media / name
    if content == "DIR":
        target.mkdir()
    elif content == "PARQUET_NO_PATH":
        pq.write_table(pa.table({"caption": ["x"]}), target)
    elif isinstance(content, bytes):
        target.write_bytes(content)
    elif content is not None:
        target.write_text(content)
    with pytest.raises(UsageError) as info:
        ManifestSource(target, **kwargs)
    message = str(info.value)
    assert needle in message
    assert str(target) in message
    assert "\n" not in message


def test_column_chooses_the_manifest_media_column(tmp_path: Path) -> None:
    from gemma4u_batch.sources import open_source

    shutil.copy(EXAMPLES / "images" / "shapes.png", tmp_path / "a.png")
    shutil.copy(EXAMPLES / "images" / "sunset.jpg", tmp_path / "b.jpg")
    man = tmp_path / "m.jsonl"
    # `image` would be picked by name; --column media says the media is elsewhere.
    man.write_text(json.dumps({"id": "x", "image": "a.png", "media": "b.jpg"}) + "\n")
    assert Path(next(iter(open_source(man))).path).name == "a.png"
    assert Path(next(iter(open_source(man, column="media"))).path).name == "b.jpg"
    csv = tmp_path / "m.csv"
    csv.write_text("id,image,media\nx,a.png,b.jpg\n")
    assert Path(next(iter(open_source(csv, column="media"))).path).name == "b.jpg"
    with pytest.raises(UsageError, match=r"path column 'nope' not found .*--column"):
        open_source(csv, column="nope")
    bare = tmp_path / "bare.csv"
    bare.write_text("where\na.png\n")
    with pytest.raises(UsageError, match="name it with --column") as info:
        open_source(bare)
    assert "--path-column" not in str(info.value)
    run_fake(man, tmp_path / "out", column="media")
    rec = records_by_task(tmp_path / "out")[("x", "caption")]
    assert rec["content_sha256"] == hashlib.sha256((tmp_path / "b.jpg").read_bytes()).hexdigest()
    assert rec["fields"] == {"image": "a.png"}  # the other column is just a field now


# -------------------------------------------------------------------------- datasets


@pytest.fixture
def image_dataset():
    import datasets

    images = [png_bytes("red"), png_bytes("green", 5), None]
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": b, "path": None} if b else None for b in images],
            "id": ["r", "g", "none"],
            "label": ["red", "green", "nothing"],
            "score": [1, 2, 3],
            "tags": [["a"], ["b"], []],
        }
    ).cast_column("image", datasets.Image())
    return ds, images


def test_saved_dataset_image(tmp_path, image_dataset):
    ds, images = image_dataset
    folder = tmp_path / "saved"
    ds.save_to_disk(str(folder))
    assert looks_like_saved_dataset(folder)
    assert not looks_like_shard_folder(folder)

    src = DatasetSource(folder)
    assert src.root == folder and src.column == "image" and src.split == "train"
    items = list(src)
    assert [i.id for i in items] == ["r", "g", "none"]
    assert items[0].data == images[0] and items[1].data == images[1]
    assert all(i.modality is Modality.IMAGE for i in items)
    assert items[0].fields == {"label": "red", "score": 1}
    assert items[0].source == f"{folder}[train]#0"
    assert items[2].error == "row 2: empty media cell" and items[2].data is None

    assert list(DatasetSource(folder, modalities=frozenset({Modality.AUDIO}))) == []


def test_saved_dataset_dict_audio_split_selection(tmp_path):
    import datasets

    waves = [wav_bytes(160, 0.1), wav_bytes(320, 0.2), wav_bytes(480, 0.3)]

    def make(ws, texts):
        return datasets.Dataset.from_dict(
            {"audio": [{"bytes": w, "path": None} for w in ws], "text": texts}
        ).cast_column("audio", datasets.Audio())

    dd = datasets.DatasetDict({"train": make(waves[:2], ["a", "b"]), "test": make(waves[2:], ["c"])})
    folder = tmp_path / "dd"
    dd.save_to_disk(str(folder))
    assert looks_like_saved_dataset(folder)

    with pytest.raises(UsageError, match=r"has splits .*test.*pass --split"):
        DatasetSource(folder)
    with pytest.raises(UsageError, match="no split 'nope'"):
        DatasetSource(folder, split="nope")

    test_items = list(DatasetSource(folder, split="test"))
    assert [(i.id, i.modality, i.fields) for i in test_items] == [("test/00000000", Modality.AUDIO, {"text": "c"})]
    assert test_items[0].data == waves[2]
    assert test_items[0].source == f"{folder}[test]#0"
    train = list(DatasetSource(folder, split="train", streaming=True))
    assert [i.id for i in train] == ["train/00000000", "train/00000001"]
    assert [i.data for i in train] == waves[:2]


def test_saved_dataset_string_path_column_relative_to_root(tmp_path):
    import datasets

    folder = tmp_path / "paths"
    datasets.Dataset.from_dict({"path": ["x.png", "sub/y.wav", "", "/abs/z.mp4"], "id": [1, 2, 3, 1]}).save_to_disk(
        str(folder)
    )
    items = list(DatasetSource(folder))
    assert [i.id for i in items] == ["1", "2", "3", "1#dup3"]
    assert items[0].path == str(folder / "x.png") and items[0].modality is Modality.IMAGE
    assert items[1].path == str(folder / "sub" / "y.wav") and items[1].modality is Modality.AUDIO
    assert items[2].error == "row 2: empty media cell"
    assert items[3].error == "row 3: duplicate id '1' (first on row 0)"


def test_parquet_shard_folder(tmp_path, image_dataset):
    ds, images = image_dataset
    folder = tmp_path / "shards"
    (folder / "data").mkdir(parents=True)
    ds.select([0, 1]).to_parquet(str(folder / "data" / "train-00000-of-00002.parquet"))
    ds.select([2]).to_parquet(str(folder / "data" / "train-00001-of-00002.parquet"))
    (folder / "README.md").write_text("# card")
    assert looks_like_shard_folder(folder)
    assert not looks_like_saved_dataset(folder)

    items = list(DatasetSource(folder))
    assert [i.id for i in items] == ["r", "g", "none"]
    assert [i.data for i in items[:2]] == images[:2]
    assert items[2].error == "row 2: empty media cell"
    assert items[0].fields == {"label": "red", "score": 1}
    assert items[1].source == f"{folder}[train]#1"

    with pytest.raises(UsageError, match="no split 'test'"):
        DatasetSource(folder, split="test")
    with pytest.raises(UsageError, match="no column 'pixels'"):
        DatasetSource(folder, column="pixels")


def test_imagefolder_loader(tmp_path):
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    originals = {"a.png": png_bytes("red"), "sub/b.png": png_bytes("blue", 6)}
    for rel, data in originals.items():
        (folder / rel).write_bytes(data)
    (folder / "metadata.csv").write_text("file_name,caption\na.png,red square\nsub/b.png,blue square\n")
    assert not looks_like_shard_folder(folder)
    assert not looks_like_saved_dataset(folder)

    items = list(DatasetSource(f"imagefolder:{folder}"))
    assert [i.id for i in items] == ["train/00000000", "train/00000001"]
    assert all(i.modality is Modality.IMAGE and i.error is None for i in items)
    got = {str(Path(i.path).relative_to(folder)): (Path(i.path).read_bytes(), i.fields) for i in items}
    assert got == {
        "a.png": (originals["a.png"], {"caption": "red square"}),
        "sub/b.png": (originals["sub/b.png"], {"caption": "blue square"}),
    }


def test_dataset_usage_errors(tmp_path):
    with pytest.raises(UsageError) as info:
        DatasetSource("someone/not-a-real-dataset-xyz")
    assert "\n" not in str(info.value) and "someone/not-a-real-dataset-xyz" in str(info.value)
    with pytest.raises(UsageError, match="give the folder as imagefolder:DIR"):
        DatasetSource("imagefolder")
    with pytest.raises(UsageError, match="folder not found"):
        DatasetSource(f"imagefolder:{tmp_path / 'nope'}")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.png").write_bytes(png_bytes())
    with pytest.raises(UsageError, match="not a saved dataset"):
        DatasetSource(plain)


def test_shard_detection_negatives(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not looks_like_shard_folder(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(pa.table({"file_name": ["a.png"]}), mixed / "metadata.parquet")
    (mixed / "a.png").write_bytes(png_bytes())
    assert not looks_like_shard_folder(mixed)
    assert not looks_like_shard_folder(tmp_path / "missing")
    assert not looks_like_saved_dataset(tmp_path / "missing")

"""`gemma4u export` (#15): a Hub-layout folder with the original media that
`datasets.load_dataset` loads (pictures decode to the original pixels, audio to the original
samples), its dataset card from the run manifest, and flat .jsonl/.parquet/.csv files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageOps
from typer.testing import CliRunner

from gemma4u_batch.cli.app import app
from gemma4u_batch.config.languages import DETECT_CODES
from gemma4u_batch.errors import UsageError
from gemma4u_batch.export.dataset import ExportOptions, export
from gemma4u_batch.job.job import JobSummary

from .helpers import EXAMPLES, GEMMA4U, jpeg_bytes, make_images, photo, png_bytes, records, run_fake
from .hub_standin import GITATTRIBUTES, HubStandin


def run(inp: Path, out: Path, **settings) -> JobSummary:
    """A FakeEngine job committing every 3 records (several parts, compacted at the end)."""
    return run_fake(inp, out, commit_every=3, **settings)


def load(folder: Path, tmp_path: Path):
    import datasets

    return datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "hf-cache"))


def card_header(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture
def image_out(tmp_path: Path) -> tuple[Path, Path]:
    """Real photos (scikit-image), the example images and video, and one broken file."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "astronaut.jpg").write_bytes(jpeg_bytes(photo("astronaut")))
    (inp / "coffee.png").write_bytes(png_bytes(photo("coffee")))
    for p in (EXAMPLES / "images").iterdir():
        shutil.copy(p, inp / p.name)
    shutil.copy(EXAMPLES / "video" / "moving_square.mp4", inp / "moving_square.mp4")
    (inp / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    run(inp, out, format="both")
    return inp, out


def test_image_folder_export_loads_with_original_pixels(image_out, tmp_path: Path) -> None:
    import datasets

    inp, out = image_out
    dest = tmp_path / "ds"
    res = export(out, dest)
    assert res.excluded_errors == 1 and res.rows == 8 and res.media == {"image": 7, "video": 1}
    assert [p.name for p in sorted((dest / "data").iterdir())] == ["train-00000-of-00001.parquet"]
    ds = load(dest, tmp_path)
    assert isinstance(ds.features["image"], datasets.Image) and ds.features["video"] == datasets.Value("binary")
    assert ds.num_rows == 8 and "broken.jpg" not in ds["id"]
    for row in ds:
        if row["modality"] == "video":
            assert row["image"] is None and row["video"] == (inp / row["id"]).read_bytes()
            continue
        with Image.open(inp / row["id"]) as original:
            upright = ImageOps.exif_transpose(original)  # as datasets' Image decodes it
            assert row["image"].mode == upright.mode and row["image"].size == upright.size
            assert np.array_equal(np.asarray(row["image"]), np.asarray(upright)), row["id"]
        assert row["text"].startswith("fake ") and row["run_id"]
        assert row["mean_logprob"] <= 0 and row["logprobs"] is None  # per-token ones only with --logprobs

    header = card_header(dest)
    assert header["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train-*"}
    assert header["dataset_info"]["splits"][0]["num_examples"] == 8
    assert "image-to-text" in header["task_categories"] and "license" in header
    names = {f["name"]: f for f in header["dataset_info"]["features"]}
    assert names["image"]["dtype"] == "image" and names["video"]["dtype"] == "binary"
    card = (dest / "README.md").read_text()
    man = json.loads((out / ".gemma4u" / "run.json").read_text())
    assert "`fake-model`" in card and man["run_id"] in card and "gemma4u run recipe.yaml" in card
    assert "rows with errors (item and task): 1 (" in card and "left out" in card
    assert "`mean_logprob`" in card and names["mean_logprob"]["dtype"] == "float64"
    raw = load(dest, tmp_path).cast_column("image", datasets.Image(decode=False))
    assert all(r["image"] is None or r["image"]["bytes"] == (inp / r["id"]).read_bytes() for r in raw)

    with pytest.raises(UsageError, match="not empty"):
        export(out, dest)
    res = export(out, dest, ExportOptions(include_errors=True, overwrite=True))
    assert res.rows == 9 and load(dest, tmp_path).filter(lambda r: r["id"] == "broken.jpg")[0]["image"] is None


def test_shards_respect_max_shard_size_and_no_media(image_out, tmp_path: Path) -> None:
    """Through the CLI: --max-shard-size, --split, --no-media, --include-errors. A shard is over
    the limit only when it holds one row whose file alone is (coffee.png, 449 kB)."""
    import datasets
    import pyarrow.parquet as pq

    inp, out = image_out
    dest = tmp_path / "sharded"
    runner = CliRunner()
    args = ["export", str(out), "--to", str(dest), "--max-shard-size", "200kB", "--split", "validation"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    paths = sorted((dest / "data").iterdir())
    n = len(paths)
    assert n > 2 and [p.name for p in paths] == [f"validation-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    ids = []
    for p in paths:
        rows = pq.read_table(p, columns=["id"]).column("id").to_pylist()
        assert p.stat().st_size <= 200_000 or (len(rows) == 1 and (inp / rows[0]).stat().st_size > 150_000), rows
        ids += rows
    assert (inp / "coffee.png").stat().st_size > 200_000 and "coffee.png" in ids
    ds = datasets.load_dataset(str(dest), split="validation", cache_dir=str(tmp_path / "c"))
    assert ds.num_rows == len(ids) == 8 and sorted(ds["id"]) == sorted(ids)

    small = tmp_path / "captions"
    r = runner.invoke(app, ["export", str(out), "--to", str(small), "--no-media", "--include-errors"])
    assert r.exit_code == 0, r.output
    ds = load(small, tmp_path)
    assert "image" not in ds.column_names and "video" not in ds.column_names and ds.num_rows == 9
    assert ds.filter(lambda row: row["id"] == "broken.jpg")[0]["error_kind"]


def assert_same_audio(decoded: dict, path: Path) -> None:
    """`decoded` (a row's `audio`, decoded by `datasets` with torchcodec + FFmpeg) holds the file's
    samples at its sampling rate: exact for PCM up to float rounding, well below one 16-bit step."""
    import soundfile as sf

    want, sr = sf.read(path, dtype="float32", always_2d=True)
    assert decoded["sampling_rate"] == sr
    got = np.asarray(decoded["array"])
    # datasets averages the channels into one array (the examples are mono)
    np.testing.assert_allclose(got, want.mean(axis=1), rtol=0, atol=1e-6)


def test_audio_export_decodes_to_the_original_files(tmp_path: Path) -> None:
    import datasets
    import soundfile as sf

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for p in (EXAMPLES / "audio").iterdir():  # espeak-ng speech: a short wav and a 95 s flac
        shutil.copy(p, inp / p.name)
    run(inp, out, task="transcribe", format="parquet", subtitles=["srt"])
    dest = tmp_path / "asr"
    res = export(out, dest)
    assert res.media == {"audio": 2}
    ds = load(dest, tmp_path)
    assert isinstance(ds.features["audio"], datasets.Audio)
    assert sorted(ds["id"]) == sorted(p.name for p in inp.iterdir())
    for row in ds:  # decoded by datasets (torchcodec + the system's FFmpeg libraries)
        assert row["segments"] and row["text"]
        assert row["language"] in DETECT_CODES and all(s["language"] in DETECT_CODES for s in row["segments"])
        audio = row["audio"]
        assert np.sqrt(np.mean(np.square(audio["array"]))) > 0.01  # speech, not silence
        assert_same_audio(audio, inp / row["id"])
    # The check tells the files apart and notices a resampled or requantized copy.
    first = inp / "hello.wav"
    want, sr = sf.read(first, dtype="float32")
    for other in ({"array": want[::2], "sampling_rate": sr // 2}, {"array": want.round(2), "sampling_rate": sr}):
        with pytest.raises(AssertionError):
            assert_same_audio(other, first)
    with pytest.raises(AssertionError):
        assert_same_audio(next(r["audio"] for r in ds if r["id"] != first.name), first)
    # The stored bytes are the original files themselves.
    for row in ds.cast_column("audio", datasets.Audio(decode=False)):
        assert row["audio"]["bytes"] == (inp / row["id"]).read_bytes()
    header = card_header(dest)
    assert header["task_categories"] == ["automatic-speech-recognition"]
    assert "spoken language: identified by the model" in (dest / "README.md").read_text()


def test_export_joins_manifest_columns(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    make_images(inp, 4)
    man = inp / "manifest.jsonl"
    man.write_text(
        "".join(json.dumps({"path": f"img_{i:04d}.png", "title": f"t{i}", "score": i}) + "\n" for i in range(4))
    )
    out = tmp_path / "out"
    run(man, out)
    res = export(out, tmp_path / "ds")
    ds = load(tmp_path / "ds", tmp_path)
    assert res.rows == 4 and ds.num_rows == 4 and res.media == {"image": 4}
    rows = {r["id"]: r for r in ds}
    assert rows["img_0003.png"]["title"] == "t3" and rows["img_0003.png"]["score"] == 3
    assert rows["img_0003.png"]["text"].startswith("fake ")
    assert rows["img_0003.png"]["image"].size == Image.open(inp / "img_0003.png").size


def test_flat_file_exports_through_the_cli(image_out, tmp_path: Path) -> None:
    import pandas as pd

    _, out = image_out
    runner = CliRunner()
    for suffix in (".jsonl", ".parquet", ".csv"):
        dest = tmp_path / f"table{suffix}"
        r = runner.invoke(app, ["export", str(out), "--to", str(dest), "--columns", "id,text,segments,mean_logprob"])
        assert r.exit_code == 0, r.output
        df = {
            ".jsonl": lambda p: pd.read_json(p, lines=True),
            ".parquet": pd.read_parquet,
            ".csv": pd.read_csv,
        }[suffix](dest)
        assert list(df.columns) == ["id", "text", "segments", "mean_logprob"] and len(df) == 8
        assert (df["mean_logprob"] <= 0).all()
    r = runner.invoke(app, ["export", str(out), "--to", str(tmp_path / "x.csv"), "--columns", "nope"])
    assert isinstance(r.exception, UsageError) and "no column nope" in str(r.exception)  # main() exits 2
    r = runner.invoke(app, ["export", str(out), "--to", str(tmp_path / "f.csv"), "--push-to-hub", "me/x"])
    assert isinstance(r.exception, UsageError) and "uploads a folder" in str(r.exception)


def test_dataset_input_exports_its_image_bytes(tmp_path: Path) -> None:
    import datasets

    out, dest = tmp_path / "out", tmp_path / "ds"
    run(EXAMPLES / "dataset", out)
    res = export(out, dest)
    src = datasets.load_from_disk(str(EXAMPLES / "dataset")).cast_column("image", datasets.Image(decode=False))
    original = {r["id"]: r["image"]["bytes"] for r in src}
    ds = load(dest, tmp_path)
    assert res.media == {"image": 3} and sorted(ds["title"]) == sorted(src["title"])
    raw = ds.cast_column("image", datasets.Image(decode=False))
    assert {r["id"]: r["image"]["bytes"] for r in raw} == original
    for row in ds:
        assert np.array_equal(
            np.asarray(row["image"]), np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(original[row["id"]]))))
        )


def test_structured_output_exports_typed_and_refuses_a_folder_inside_out(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}}
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 3)
    run(inp, out, json_schema=schema)
    export(out, tmp_path / "ds")
    ds = load(tmp_path / "ds", tmp_path)
    assert ds.num_rows == 3 and all(r["data_typed"]["tags"] == json.loads(r["data"])["tags"] for r in ds)
    assert any(f["name"] == "data_typed" for f in card_header(tmp_path / "ds")["dataset_info"]["features"])
    with pytest.raises(UsageError, match="inside"):
        export(out, out / "export")


def test_per_token_logprobs_export(tmp_path: Path) -> None:
    """--logprobs N: the `logprobs` column (list of structs) survives Parquet, the flat export and datasets."""
    import pyarrow.parquet as pq

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 2)
    run(inp, out, format="parquet", sampling={"max_tokens": 8, "logprobs": 1})
    (part,) = [p for p in out.iterdir() if p.suffix == ".parquet"]
    rows = pq.read_table(part).to_pylist()
    assert all(len(r["logprobs"]) == 3 and r["logprobs"][0]["top"][0]["logprob"] <= 0 for r in rows)
    export(out, tmp_path / "flat.parquet")
    flat = pq.read_table(tmp_path / "flat.parquet").to_pylist()
    assert [r["logprobs"] for r in flat] == [r["logprobs"] for r in rows]
    export(out, tmp_path / "ds")
    ds = load(tmp_path / "ds", tmp_path)
    assert ds[0]["logprobs"][0].keys() == {"token", "logprob", "top"}


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_to_hub_uploads_the_folder_through_the_hub_api(image_out, tmp_path: Path) -> None:
    """`--push-to-hub` runs the real `huggingface_hub` client (create_repo, create_branch,
    upload_folder) against a local stand-in of the Hub's API (tests/hub_standin.py, on 127.0.0.1;
    LFS transfer, as HF_HUB_DISABLE_XET=1 makes the client use): the repo and branch it asks for,
    the exported folder's bytes in the commit, the card's header validated, the token sent, and a
    re-export replacing the shards it pushed before."""
    _, out = image_out
    token = "hf_standin_token"
    with HubStandin(token) as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_TOKEN": token,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }

        def push(dest: str, repo: str, *extra: str, env: dict[str, str] = env) -> str:
            args = [GEMMA4U, "export", str(out), "--to", str(tmp_path / dest), "--push-to-hub", repo, *extra]
            r = subprocess.run(args, env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-3000:]
            return r.stderr

        err = push("a", "me/captions", "--private", "--revision", "v1", "--max-shard-size", "200KB")
        repo = hub.repos["datasets/me/captions"]
        a = folder_files(tmp_path / "a")
        assert repo.visibility == "private" and sum(n.startswith("data/") for n in a) > 1
        assert hub.files("me/captions", "v1") == {".gitattributes": GITATTRIBUTES, **a}
        assert hub.files("me/captions") == {".gitattributes": GITATTRIBUTES}  # main untouched
        shards = {hashlib.sha256(b).hexdigest() for n, b in a.items() if n.endswith(".parquet")}
        assert set(hub.lfs_uploads) == shards  # the Parquet files went through LFS, checked by sha256
        assert hub.validated[-1] == card_header(tmp_path / "a")  # the client has the Hub validate the card first
        assert repo.commits[-1]["summary"] == "gemma4u export" and repo.commits[-1]["branch"] == "v1"
        assert f"{hub.endpoint}/datasets/me/captions/commit/{repo.commits[-1]['oid']}" in err
        assert "huggingface.co" not in err  # the URL is the endpoint's

        push("b", "me/captions", "--revision", "v1")  # the repo and the branch exist: one shard now
        b = folder_files(tmp_path / "b")
        assert hub.files("me/captions", "v1") == {".gitattributes": GITATTRIBUTES, **b}  # no stale shard
        assert repo.visibility == "private" and len(repo.commits) == 2

        (tmp_path / "hf-home").mkdir(exist_ok=True)  # the client makes it only when it caches something
        (tmp_path / "hf-home" / "token").write_text(token)  # as `hf auth login` saves it
        logged_in = {k: v for k, v in env.items() if k != "HF_TOKEN"}
        push("c", "me/public", env=logged_in)  # no --private: the Hub's default visibility (an org's may be private)
        assert hub.repos["datasets/me/public"].visibility is None
        assert hub.files("me/public") == {".gitattributes": GITATTRIBUTES, **folder_files(tmp_path / "c")}
        assert not hub.unexpected and not hub.unauthorized

    arrived = tmp_path / "arrived"  # what the Hub holds on v1 loads as the dataset
    for name, data in hub.files("me/captions", "v1").items():
        (arrived / name).parent.mkdir(parents=True, exist_ok=True)
        (arrived / name).write_bytes(data)
    ds = load(arrived, tmp_path)
    assert ds.num_rows == 8 and ds[0]["image"].size


def test_card_renders_the_run_facts(tmp_path: Path) -> None:
    """The card's body is the run's facts: model and fingerprint, run id and start, tasks with
    their rows and prompts, sampling, errors by kind, versions, and a recipe that loads as the
    run's config."""
    import re
    import time

    from gemma4u_batch.plan.recipes import load_recipe

    inp = tmp_path / "in"
    make_images(inp, 3)
    (inp / "broken.png").write_bytes(b"\x89PNG not really")
    out, dest = tmp_path / "out", tmp_path / "ds"
    run(inp, out, tasks=["caption", "tags"], sampling={"max_tokens": 33, "temperature": 0.5})
    man_rows = [{"path": f"in/img_{i:04d}.png", "title": f"t{i}"} for i in range(3)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in man_rows))
    out2 = tmp_path / "out2"
    run(tmp_path / "m.jsonl", out2, prompt="Caption the photo titled '{{ title }}'.")
    export(out, dest)
    export(out2, tmp_path / "ds2")

    man = json.loads((out / ".gemma4u" / "run.json").read_text())
    body = (dest / "README.md").read_text().split("\n---\n", 1)[1]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(man["started_at"]))
    assert f"with the model `fake-model` (fingerprint `{man['model_fingerprint']}`)" in body
    assert f"* run id: `{man['run_id']}`, started {started}" in body
    assert "* split `train`: 6 rows (one per item and task) in 1 Parquet file(s)" in body
    assert "* tasks: `caption` (3 rows), `tags` (3 rows)" in body
    prompts = {r["task"]: r["prompt"] for r in records(out)}
    assert all(f"* prompt of `{task}`: {prompts[task]!r}" in body for task in ("caption", "tags"))
    assert "* sampling: max_tokens=33, temperature=0.5," in body
    kinds = {r["error_kind"] for r in records(out) if r["error_kind"]}
    assert kinds and f"* rows with errors (item and task): 2 ({kinds.pop()}: 2), left out" in body
    assert "gemma4u-batch 0.1.0" in body and f"datasets {man['versions']['datasets']}" in body
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(re.search(r"```yaml\n(.*?)```", body, re.S).group(1))
    assert load_recipe(recipe).model_dump(mode="json") == man["config"]  # the recipe is the run

    body2 = (tmp_path / "ds2" / "README.md").read_text()
    assert "* prompts of `caption`: 3 different (the template \"Caption the photo titled '{{ title }}'.\"" in body2
    assert "e.g. \"Caption the photo titled 't0'.\"" in body2 and "with errors" not in body2


def test_exports_keep_every_record_column(tmp_path: Path) -> None:
    """Nothing of a record is dropped: the flat and the folder export have every column OUT's
    Parquet has (`fields` becomes the input's own columns), with the same values — after an
    incremental run, `supersedes` names the record replaced."""
    import pyarrow.parquet as pq

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, 3)
    run(inp, out, format="parquet")
    first = {r["id"]: r["key"] for r in records(out)}
    Image.new("RGB", (40, 30), (9, 9, 9)).save(inp / "img_0001.png")
    run(inp, out, format="parquet")
    table = pq.read_table(next(out.glob("*.parquet")))
    want = {r["id"]: r for r in table.to_pylist()}
    assert want["img_0001.png"]["supersedes"] == first["img_0001.png"]
    export(out, tmp_path / "flat.parquet")
    export(out, tmp_path / "ds")
    ds = load(tmp_path / "ds", tmp_path)
    for got in (pq.read_table(tmp_path / "flat.parquet"), ds.data.table):
        assert set(table.column_names) - {"fields"} <= set(got.column_names)
        for row in got.to_pylist():
            for col in ("decode_seconds", "supersedes", "retried", "key", "run_id", "created_at"):
                assert row[col] == want[row["id"]][col], col

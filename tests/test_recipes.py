"""Recipes (`gemma4u run RECIPE.yaml`): loading, overrides, refusals, dry-run plans, estimates.

Everything here runs without the engine except the one `engine`-marked estimate test."""

from __future__ import annotations

import inspect
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from gemma4u_batch.config.job import JobConfig
from gemma4u_batch.config.tasks import TASKS
from gemma4u_batch.console import Reporter
from gemma4u_batch.engine.fake import FakeEngine
from gemma4u_batch.errors import UsageError
from gemma4u_batch.job.job import run_job
from gemma4u_batch.plan.estimate import estimate, print_estimate
from gemma4u_batch.plan.plan import plan, print_plan
from gemma4u_batch.plan.recipes import load_recipe
from gemma4u_batch.records import Modality
from gemma4u_batch.sources import open_source

from .conftest import GEMMA4U, REPO

RECIPES = REPO / "recipes"
EXAMPLES = REPO / "examples"
SHIPPED = sorted(RECIPES.glob("*.yaml"))
REQUIRED = {
    "image_captions",
    "alt_text",
    "tags_json",
    "podcast_srt",
    "video_description",
    "nightly_incremental",
}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _refusal(path: Path, sets: list[str] | None = None, model: str | None = None) -> str:
    with pytest.raises(UsageError) as info:
        load_recipe(path, sets or [], model)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}: "), msg
    return msg


# ------------------------------------------------------------------ shipped recipes


def test_required_recipes_are_shipped() -> None:
    assert {p.stem for p in SHIPPED} >= REQUIRED


@pytest.mark.parametrize("recipe", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_recipe_passes_dry_run(
    recipe: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the recipe, not the working directory
    as_shipped = load_recipe(recipe, model=str(tiny_model))
    assert as_shipped.model == str(tiny_model)
    assert as_shipped.input is not None and as_shipped.input.is_relative_to(EXAMPLES)
    assert as_shipped.output.is_relative_to(REPO / "out")
    # plan into a fresh OUT (whatever the repository's out/ holds), decoding inline
    config = load_recipe(recipe, ["workers=0", f"output={tmp_path / 'out'}"], model=str(tiny_model))
    p = plan(config, sample=4, recipe=str(recipe))
    assert p.items > 0 and p.prompt_tokens > 0 and p.refused is None
    for row in p.modalities.values():
        assert row.sample_errors == 0 and row.decoded == row.sampled > 0, row
        assert row.over_limit == 0
    console = Console(file=io.StringIO(), width=120)
    print_plan(p, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "estimated prompt tokens" in text and str(config.output) in text
    json.dumps(p.to_dict(), default=str)
    assert not config.output.exists()  # a dry run writes nothing


def test_shipped_recipes_say_what_they_do() -> None:
    c = {p.stem: load_recipe(p) for p in SHIPPED}
    assert c["podcast_srt"].task == "transcribe" and c["podcast_srt"].subtitles == ["srt"]
    assert c["podcast_srt"].format == "jsonl"
    assert c["video_description"].task == "video-description" and c["video_description"].video_frames == 8
    assert c["tags_json"].task == "tags" and isinstance(c["tags_json"].json_schema, dict)
    assert c["alt_text"].task == "alt-text"
    assert c["image_captions"].task == "caption"
    nightly = c["nightly_incremental"]
    assert nightly.overwrite is False and nightly.input == EXAMPLES
    for p in SHIPPED:
        assert p.read_text().lstrip().startswith("#"), f"{p.name} should start with a comment"


# -------------------------------------------------------------------- refusals

BASE = "input: {examples}\noutput: {out}\n"

BROKEN: list[tuple[str, str, list[str]]] = [
    ("unknown_top", "outptu: x\n", ["unknown key 'outptu'", "did you mean 'output'"]),
    ("unknown_nested", "sampling:\n  temprature: 0.5\n", ["unknown key 'sampling.temprature'", "'temperature'"]),
    ("unknown_engine", "engine:\n  max_seqs: 4\n", ["unknown key 'engine.max_seqs'", "max_num_seqs"]),
    ("misplaced", "temperature: 0.2\n", ["unknown key 'temperature'", "did you mean 'sampling.temperature'"]),
    ("wrong_type", "sampling:\n  temperature: hot\n", ["sampling.temperature: expected a number ≥ 0, got 'hot'"]),
    ("out_of_range", "video_frames: 40\n", ["video_frames: expected an integer between 1 and 32, got 40"]),
    ("bad_literal", "format: csv\n", ["format: expected one of jsonl, parquet, both, got 'csv'"]),
    ("bad_bool", "overwrite: maybe\n", ["overwrite: expected true or false, got 'maybe'"]),
    ("bad_list_item", "modalities: [image, smell]\n", ["modalities[1]: expected one of image, audio, video"]),
    ("scalar_for_list", "subtitles: srt\n", ["subtitles: expected a list", "got 'srt'"]),
    ("scalar_for_mapping", "sampling: 5\n", ["sampling: expected a mapping", "temperature", "got 5"]),
    ("image_budget", "image_tokens: 100\n", ["image_tokens: must be one of 70, 140, 280, 560, 1120"]),
    ("bad_yaml", "task: caption\n  prompt: [\n", ["invalid YAML at line 4"]),
    ("duplicate_key", "task: caption\ntask: tags\n", ["invalid YAML at line 4", "duplicate key 'task'"]),
    (
        "schema_and_choices",
        "json_schema: {type: object}\nchoices: [a, b]\n",
        ["json_schema and choices cannot be used together"],
    ),
    ("task_and_tasks", "task: caption\ntasks: [caption, tags]\n", ["task and tasks cannot be used together"]),
    (
        "speech_on_images",
        "task: transcribe\nmodalities: [image]\n",
        ["modalities: task 'transcribe' works on audio, video, not image"],
    ),
    ("subtitles_without_speech", "subtitles: [srt]\n", ["subtitles only come from the transcribe and translate"]),
    ("one_choice", "choices: [cat]\n", ["choices needs at least two labels"]),
    ("yaml_bool_for_text", "choices: [yes, no]\n", ["choices[0]: expected a string, got true", "quote"]),
    ("missing_schema_file", "json_schema: schemas/nope.json\n", ["json_schema: file not found", "nope.json"]),
    ("invalid_schema", "json_schema: {type: 12}\n", ["json_schema: not a valid JSON schema"]),
    ("unknown_task", "task: captoin\n", ["task: unknown task 'captoin'", "did you mean 'caption'"]),
    ("unknown_task_in_tasks", "tasks: [caption, sumarize]\n", ["tasks[1]: unknown task 'sumarize'"]),
    ("bad_template", "prompt: 'Describe {{ title'\n", ["prompt: invalid template at line 1"]),
    ("bad_version", "version: 2\n", ["version: expected 1, got 2"]),
    ("bad_description", "description: [a]\n", ["description: expected a string"]),
    ("non_string_key", "1: x\n", ["keys must be names"]),
]


@pytest.mark.parametrize("name,body,expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_recipe_is_refused_naming_file_and_field(
    tmp_path: Path, name: str, body: str, expected: list[str]
) -> None:
    path = _write(tmp_path / "recipes" / f"{name}.yaml", BASE.format(examples=EXAMPLES / "images", out="out") + body)
    msg = _refusal(path)
    for part in expected:
        assert part in msg, msg


@pytest.mark.parametrize(
    "body,expected",
    [
        ("- a\n- b\n", "expected a mapping of settings (key: value lines) at the top level, got a list"),
        ("just text\n", "expected a mapping of settings (key: value lines) at the top level, got 'just text'"),
        ("", "the recipe is empty"),
        ("# only a comment\n", "the recipe is empty"),
        ("input: /x\n", "missing required key 'output'"),
        ("output: out\n", "input (a folder, manifest or saved dataset) or dataset is required"),
        ("input: nowhere\noutput: out\n", "input: not found"),
    ],
)
def test_recipe_that_is_not_a_job_is_refused(tmp_path: Path, body: str, expected: str) -> None:
    path = _write(tmp_path / "r.yaml", body)
    assert expected in _refusal(path)


def test_missing_unreadable_and_binary_recipes(tmp_path: Path) -> None:
    assert "recipe file not found" in _refusal(tmp_path / "none.yaml")
    assert "is a folder" in _refusal(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00input")
    assert "invalid UTF-8" in _refusal(binary)


def test_input_not_found_points_at_the_recipe_folder(tmp_path: Path) -> None:
    path = _write(tmp_path / "jobs" / "r.yaml", "input: ../media\noutput: ../out\n")
    msg = _refusal(path)
    assert f"input: not found: {tmp_path / 'media'}" in msg and "resolved against its folder" in msg


def test_schema_file_problems(tmp_path: Path) -> None:
    _write(tmp_path / "schemas" / "bad.json", "{not json")
    _write(tmp_path / "schemas" / "list.json", "[1, 2]")
    base = BASE.format(examples=EXAMPLES / "images", out="out")
    msg = _refusal(_write(tmp_path / "a.yaml", base + "json_schema: schemas/bad.json\n"))
    assert "json_schema:" in msg and "is not valid JSON" in msg and "line 1" in msg
    msg = _refusal(_write(tmp_path / "b.yaml", base + "json_schema: schemas/list.json\n"))
    assert "json_schema: the file must hold a JSON object" in msg


# ------------------------------------------------------------------------- --set


@pytest.fixture
def base_recipe(tmp_path: Path) -> Path:
    return _write(tmp_path / "r.yaml", BASE.format(examples=EXAMPLES / "images", out="out"))


def test_set_overrides_with_yaml_values(base_recipe: Path) -> None:
    c = load_recipe(
        base_recipe,
        [
            "sampling.temperature=0.7",
            "modalities=[image]",
            "format=both",
            "engine.max_num_seqs=4",
            "subtitles=[]",
            "retry_flagged={temperature: 0.5}",
            "choices=[cat, dog]",
        ],
    )
    assert c.sampling.temperature == 0.7 and c.sampling.max_tokens == 256  # siblings keep their defaults
    assert [m.value for m in c.modalities or []] == ["image"]
    assert c.format == "both" and c.engine.max_num_seqs == 4
    assert c.retry_flagged is not None and c.retry_flagged.temperature == 0.5
    assert c.choices == ["cat", "dog"]


def test_set_takes_text_fields_as_written(base_recipe: Path) -> None:
    c = load_recipe(base_recipe, ["prompt=Describe: the scene", "language=no", "system_prompt=null"])
    assert c.prompt == "Describe: the scene" and c.language == "no" and c.system_prompt is None


def test_set_later_wins_and_model_flag_wins(base_recipe: Path) -> None:
    c = load_recipe(base_recipe, ["sampling.seed=1", "sampling.seed=2", "model=a/b"], model="c/d")
    assert c.sampling.seed == 2 and c.model == "c/d"


@pytest.mark.parametrize(
    "sets,expected",
    [
        (["nokey"], "--set 'nokey': expected KEY=VALUE"),
        (["=3"], "--set '=3': expected KEY=VALUE with a key"),
        (["sampling.temprature=1"], "unknown key 'sampling.temprature' (did you mean 'temperature'?)"),
        (["task.x=1"], "--set 'task.x=1': 'task' has no keys inside it"),
        (["sampling.temperature=[1"], "--set 'sampling.temperature=[1': invalid YAML"),
        (["sampling.temperature=hot"], "sampling.temperature: expected a number ≥ 0, got 'hot'"),
        (["sampling={temprature: 1}"], "unknown key 'sampling.temprature'"),
        (["format=csv"], "format: expected one of jsonl, parquet, both, got 'csv'"),
    ],
)
def test_bad_set_is_refused(base_recipe: Path, sets: list[str], expected: str) -> None:
    assert expected in _refusal(base_recipe, sets)


def test_set_into_a_recipe_scalar_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.yaml", BASE.format(examples=EXAMPLES, out="out") + "sampling: null\n")
    assert load_recipe(path, ["sampling.temperature=0.3"]).sampling.temperature == 0.3
    path = _write(tmp_path / "b.yaml", BASE.format(examples=EXAMPLES, out="out") + "engine: 3\n")
    assert "'engine' is 3 in the recipe, not a mapping" in _refusal(path, ["engine.dtype=float32"])


# ------------------------------------------------------------------------ paths


def test_relative_paths_resolve_against_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    media = tmp_path / "data" / "media"
    shutil.copytree(EXAMPLES / "images", media)
    _write(tmp_path / "data" / "jobs" / "schemas" / "s.json", json.dumps({"type": "object"}))
    recipe = _write(
        tmp_path / "data" / "jobs" / "r.yaml",
        "input: ../media\noutput: ../out/r\nallow_roots: [../media, /abs]\njson_schema: schemas/s.json\n"
        "model: ./models/tiny\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    c = load_recipe(recipe)
    assert c.input == media and c.output == tmp_path / "data" / "out" / "r"
    assert c.allow_roots == [media, Path("/abs")]
    assert c.json_schema == {"type": "object"}  # the file is read and validated at load time
    assert c.model == str(tmp_path / "data" / "jobs" / "models" / "tiny")
    # --set values are command-line values: relative to the working directory
    c = load_recipe(recipe, ["output=o", "allow_roots=[r]"])
    assert c.output == elsewhere / "o" and c.allow_roots == [elsewhere / "r"]
    # ~ expands; a hub id stays as it is
    c = load_recipe(recipe, ["model=google/gemma-4-12B-it"])
    assert c.model == "google/gemma-4-12B-it"


def test_translate_to_makes_transcribe_translate(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", BASE.format(examples=EXAMPLES / "audio", out="out") + "task: transcribe\n")
    assert load_recipe(path, ["translate_to=French"]).task == "translate"
    assert "translate_to only applies" in _refusal(path, ["task=caption", "translate_to=French"])


def test_unknown_task_is_fine_with_a_prompt(base_recipe: Path) -> None:
    c = load_recipe(base_recipe, ["task=my-labels", "prompt=Is there a {{ what }}?"])
    assert c.task == "my-labels"


def test_recipe_and_flags_resolve_into_the_same_config(tmp_path: Path) -> None:
    from gemma4u_batch.cli.app import config_from_flags
    from gemma4u_batch.cli.options import job_options

    flags = {n: p.default for n, p in inspect.signature(job_options).parameters.items() if n != "progress"}
    flags.update(
        input=EXAMPLES / "audio",
        output=tmp_path / "out",
        task="transcribe",
        modality=["audio"],
        max_tokens=448,
        format="jsonl,srt",
    )
    from_flags = config_from_flags(flags)
    recipe = _write(
        tmp_path / "r.yaml",
        f"input: {EXAMPLES / 'audio'}\noutput: out\ntask: transcribe\nmodalities: [audio]\n"
        "sampling: {max_tokens: 448}\nsubtitles: [srt]\n",
    )
    assert load_recipe(recipe) == from_flags


# ---------------------------------------------------------------------- planning


def test_plan_counts_per_modality_and_maps_speech_videos(tmp_path: Path) -> None:
    both = tmp_path / "in"
    shutil.copytree(EXAMPLES / "audio", both / "audio")
    shutil.copytree(EXAMPLES / "video", both / "video")
    shutil.copytree(EXAMPLES / "images", both / "images")
    p = plan(JobConfig(input=both, output=tmp_path / "out", workers=0), sample=2)
    assert p.found == {"audio": 2, "image": 5, "video": 1} and p.items == 8
    assert {k: v.items for k, v in p.modalities.items()} == {"audio": 2, "image": 5, "video": 1}
    assert p.modalities["image"].sampled == 2 and p.modalities["image"].decoded == 2
    assert p.modalities["image"].estimated_prompt_tokens > 0
    assert any("deterministic sample" in n for n in p.notes)
    speech = plan(
        JobConfig(input=both, output=tmp_path / "out", task="transcribe", workers=0, modalities=["audio", "video"]),
        sample=4,
    )
    assert set(speech.modalities) == {"audio"} and speech.modalities["audio"].items == 3
    assert any("soundtrack" in n for n in speech.notes)
    # the 95 s lecture is cut into windows: more than one request per audio item
    assert speech.modalities["audio"].requests > speech.modalities["audio"].decoded


def test_plan_is_deterministic(tmp_path: Path) -> None:
    c = JobConfig(input=EXAMPLES / "images", output=tmp_path / "o", workers=0)
    a, b = plan(c, sample=2).to_dict(), plan(c, sample=2).to_dict()
    assert a == b


def test_plan_counts_one_request_per_task(tmp_path: Path) -> None:
    one = plan(JobConfig(input=EXAMPLES / "images", output=tmp_path / "o", workers=0), sample=2)
    two = plan(
        JobConfig(input=EXAMPLES / "images", output=tmp_path / "o", workers=0, tasks=["caption", "tags"]), sample=2
    )
    assert two.tasks == ["caption", "tags"]
    assert two.modalities["image"].requests == 2 * two.modalities["image"].decoded
    assert two.prompt_tokens > 1.8 * one.prompt_tokens


def test_plan_of_a_manifest_and_a_saved_dataset(tmp_path: Path) -> None:
    p = plan(JobConfig(input=EXAMPLES / "manifest.jsonl", output=tmp_path / "o", workers=0), sample=4)
    assert p.found == {"image": 2, "audio": 1, "video": 1} and p.source.startswith("manifest ")
    d = plan(JobConfig(input=EXAMPLES / "dataset", output=tmp_path / "o", workers=0), sample=4)
    assert d.found == {"image": 3} and d.modalities["image"].decoded == 3


def test_plan_counts_bad_rows_and_empty_input_is_refused(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "images" / "shapes.png", tmp_path / "shapes.png")
    _write(tmp_path / "m.jsonl", '{"path": "shapes.png"}\n{"nopath": 1}\nnot json\n')
    p = plan(JobConfig(input=tmp_path / "m.jsonl", output=tmp_path / "o", workers=0))
    assert p.items == 3 and p.bad_rows == 2 and any("unusable" in n for n in p.notes)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no media files found"):
        plan(JobConfig(input=tmp_path / "empty", output=tmp_path / "o"))


def test_plan_flags_items_over_max_model_len(tmp_path: Path) -> None:
    c = JobConfig(
        input=EXAMPLES / "images", output=tmp_path / "o", workers=0, image_tokens=1120, engine={"max_model_len": 512}
    )
    p = plan(c, sample=2)
    assert p.modalities["image"].over_limit == 2
    assert any("max_model_len=512" in n for n in p.notes)


def test_plan_reads_an_existing_out_incrementally(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("sunset.jpg", "shapes.png"):
        shutil.copy(EXAMPLES / "images" / name, inp / name)
    config = JobConfig(input=inp, output=tmp_path / "out", model="fake-model", workers=0)
    run_job(config, FakeEngine(), reporter=Reporter("quiet"))
    p = plan(config, sample=2)
    assert p.existing is not None and p.existing["records"] == 2 and p.existing["complete"]
    assert p.new_items == 0 and p.refused is None
    shutil.copy(EXAMPLES / "images" / "banner.webp", inp / "banner.webp")
    assert plan(config, sample=1).new_items == 1
    changed = config.model_copy(update={"prompt": "Something else."})
    refused = plan(changed, sample=1).refused
    assert refused is not None and "different prompt" in refused
    assert plan(changed.model_copy(update={"overwrite": True}), sample=1).refused is None
    console = Console(file=io.StringIO(), width=120)
    print_plan(plan(config, sample=1), console)
    assert "2 records" in console.file.getvalue()  # type: ignore[attr-defined]


def test_plan_refuses_what_a_run_refuses(tmp_path: Path) -> None:
    """--dry-run names the same refusal the run would stop with (OUT is a file; --overwrite with --shard)."""
    a_file = tmp_path / "out.txt"
    a_file.write_text("not a folder")
    base = JobConfig(input=EXAMPLES / "images", output=tmp_path / "out", model="fake-model", workers=0)
    for config in (
        base.model_copy(update={"output": a_file}),
        base.model_copy(update={"overwrite": True, "shard": "0/2"}),
    ):
        refused = plan(config, sample=1).refused
        with pytest.raises(UsageError) as run_refusal:
            run_job(config, FakeEngine(), reporter=Reporter("quiet"))
        assert refused is not None and refused == str(run_refusal.value)


# ---------------------------------------------------------------------- estimate


def test_estimate_sends_sampled_items_as_found(tmp_path: Path) -> None:
    """Sampled manifest rows and dataset rows reach the engine with their ids, prompts,
    tasks and fields (inline bytes included), as in a real run."""
    for src in (EXAMPLES / "manifest.jsonl", EXAMPLES / "dataset"):
        items = {i.id: i for i in open_source(src) if i.error is None}
        seen: list = []
        engine = FakeEngine(text_for=lambda req, text, seen=seen: seen.append(req.payload[0].decoded) or text)
        config = JobConfig(input=src, output=tmp_path / src.stem, model="fake-model", workers=0)
        est = estimate(config, 3, engine=engine)
        assert est.records == 3 and len(seen) >= 3
        for d in seen:
            want = items[d.item.id]
            assert (d.item.prompt, d.item.task, d.item.fields) == (want.prompt, want.task, want.fields)
            assert d.error is None and d.content_sha256 is not None


def test_estimate_runs_a_sample_and_projects(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = JobConfig(input=EXAMPLES, output=out, model="fake-model", workers=0)
    est = estimate(config, 3, engine=FakeEngine())
    assert est.sampled == 3 and est.records == 3 and est.total_items == 8
    assert est.projected_s >= est.startup_s and est.per_item_s >= 0
    assert not out.exists()  # the sample ran into a temporary folder
    assert any("uniformly" in a for a in est.assumptions)
    console = Console(file=io.StringIO(), width=120)
    print_estimate(est, console)
    assert "projected: whole job" in console.file.getvalue()  # type: ignore[attr-defined]
    with pytest.raises(UsageError):
        estimate(config, 0, engine=FakeEngine())


def test_estimate_names_the_modalities_its_sample_missed(tmp_path: Path) -> None:
    """Modalities as sent: under speech tasks a video is audio, so a sample of audio misses nothing."""
    config = JobConfig(input=EXAMPLES, output=tmp_path / "out", model="fake-model", workers=0)
    est = estimate(config, 1, engine=FakeEngine())
    (missed,) = [a for a in est.assumptions if "was sampled" in a]
    assert {"image", "audio", "video"} - set(est.sample_modalities) == {
        m for m in ("image", "audio", "video") if m in missed
    }
    speech_config = config.model_copy(update={"task": "transcribe", "modalities": [Modality.AUDIO, Modality.VIDEO]})
    speech = estimate(speech_config, 1, engine=FakeEngine())
    assert set(speech.sample_modalities) == {"audio"}
    assert not [a for a in speech.assumptions if "was sampled" in a]


@pytest.mark.engine
def test_estimate_on_the_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    config = load_recipe(
        RECIPES / "image_captions.yaml",
        [
            f"output={tmp_path / 'out'}",
            "engine.dtype=float32",
            "engine.max_model_len=4096",
            "engine.max_num_seqs=8",
            "sampling.max_tokens=8",
            "workers=1",
        ],
        model=str(tiny_model),
    )
    est = estimate(config, 2)
    assert est.records == 2 and est.errors == 0 and est.total_items == 5
    assert est.startup_s > 0 and est.per_item_s > 0
    assert est.projected_s == pytest.approx(est.startup_s + 5 * est.per_item_s)


# ------------------------------------------------------------------------- CLI

SHIM = """
import sys
from gemma4u_batch.cli.app import app, main
from gemma4u_batch.cli.run_cmd import run
if not any(c.name == "run" for c in app.registered_commands):
    app.command("run")(run)
sys.argv[0] = "gemma4u"
main()
"""


def _run_registered() -> bool:
    from gemma4u_batch.cli.app import app

    return any(c.name == "run" for c in app.registered_commands)


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`gemma4u run ...` (through the real main(); registered on the fly until app.py has it)."""
    cmd = [GEMMA4U, *args] if _run_registered() else [sys.executable, "-c", SHIM, *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_dry_run(tiny_model: Path, tmp_path: Path) -> None:
    r = _cli(
        "run",
        "recipes/nightly_incremental.yaml",
        "--dry-run",
        "--model",
        str(tiny_model),
        "--set",
        f"output={tmp_path / 'nightly'}",
    )
    assert r.returncode == 0, r.stderr
    assert "gemma4u plan" in r.stdout and "resolved config" in r.stdout
    for mod in ("image", "audio", "video"):
        assert mod in r.stdout
    assert not (tmp_path / "nightly").exists()
    r = _cli("run", str(RECIPES / "podcast_srt.yaml"), "--dry-run", "--json", "--model", str(tiny_model), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["tasks"] == ["transcribe"] and data["subtitles"] == ["srt"]
    assert data["modalities"]["audio"]["items"] == 2 and data["estimated_prompt_tokens"] > 0
    assert data["config"]["model"] == str(tiny_model)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["BROKEN", "--dry-run"], "sampling.temperature: expected a number ≥ 0, got 'hot'"),
        (["recipes/image_captions.yaml", "--dry-run", "--set", "sampling.temprature=1"], "did you mean 'temperature'?"),
        (["recipes/image_captions.yaml", "--dry-run", "--estimate", "2"], "cannot be used together"),
    ],
)
def test_cli_usage_errors_are_one_line_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    broken = _write(tmp_path / "broken.yaml", f"input: {EXAMPLES}\noutput: out\nsampling:\n  temperature: hot\n")
    r = _cli("run", *[str(broken) if a == "BROKEN" else a for a in args])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr
    if args[0] == "BROKEN":
        assert str(broken) in lines[0]


# -------------------------------------------------------------------------- docs


def test_recipe_reference_documents_every_key_and_task() -> None:
    doc = (REPO / "docs" / "recipes.md").read_text()
    missing = [f for f in JobConfig.model_fields if f"`{f}`" not in doc]
    for nested in ("sampling", "engine"):
        model = JobConfig.model_fields[nested].annotation
        missing += [f"{nested}.{f}" for f in model.model_fields if f"`{nested}.{f}`" not in doc]  # type: ignore[union-attr]
    assert not missing, f"docs/recipes.md does not mention: {', '.join(missing)}"
    tasks_doc = (REPO / "docs" / "tasks.md").read_text()
    missing_tasks = [t for t in TASKS if f"`{t}`" not in tasks_doc]
    assert not missing_tasks, f"docs/tasks.md does not mention: {', '.join(missing_tasks)}"


def test_scheduling_doc_covers_the_schedulers_and_exit_codes() -> None:
    doc = (REPO / "docs" / "scheduling.md").read_text()
    for needle in (
        "crontab",
        "OnCalendar",
        "kind: CronJob",
        "concurrencyPolicy: Forbid",
        "recipes/nightly_incremental.yaml",
        "exit-codes.md",
    ):
        assert needle in doc, needle
    codes = (REPO / "docs" / "exit-codes.md").read_text()
    for needle in ("| 0 |", "| 2 |", "| 73 |", "| 74 |", "| 75 |", "| 130 |"):
        assert needle in codes, needle

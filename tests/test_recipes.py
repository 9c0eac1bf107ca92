"""Recipes (`gemma4u run RECIPE.yaml`): loading, overrides, refusals, the shipped recipes' dry
runs, and the recipe reference. Plans and estimates themselves are in test_planning.py."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from gemma4u_batch.config.job import JobConfig
from gemma4u_batch.config.tasks import TASKS
from gemma4u_batch.errors import UsageError
from gemma4u_batch.plan.plan import plan, print_plan
from gemma4u_batch.plan.recipes import load_recipe

from .helpers import EXAMPLES, GEMMA4U, REPO, job_flags

RECIPES = REPO / "recipes"
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
    from gemma4u_batch.cli.launch import config_from_flags

    flags = job_flags(
        EXAMPLES / "audio",
        tmp_path / "out",
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


# ------------------------------------------------------------------------- CLI


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`gemma4u run ...` from `cwd` (the recipes' relative paths resolve against their own folder)."""
    return subprocess.run([GEMMA4U, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


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

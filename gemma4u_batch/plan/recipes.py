"""Recipes: a YAML file that fully describes a job, resolved into the one typed JobConfig.

A recipe's top level is JobConfig's fields (`sampling:` and `engine:` are nested
mappings), plus an optional `version: 1` and `description:`. Everything is checked
here, before any engine starts; every problem is a UsageError of one line naming the
file, the field and what was expected:

    recipes/x.yaml: sampling.temperature: expected a number ≥ 0, got 'hot'
    recipes/x.yaml: unknown key 'sampling.temprature' (did you mean 'temperature'?)

Relative paths in the file (input, output, allow_roots, a json_schema file, a model
folder starting with ./ or ../) resolve against the recipe's folder, so a recipe works
from any working directory (cron, systemd, a container). Values given with `--set`
are command-line values: their relative paths resolve against the working directory.
"""

from __future__ import annotations

import difflib
import enum
import os
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from ..config.job import JobConfig
from ..config.tasks import TASKS, is_speech_task, resolve_task
from ..config.urls import is_url
from ..errors import InvalidField, UsageError, validation_message

RECIPE_VERSION = 1
META_KEYS = ("version", "description")
"""Top-level keys a recipe may carry that are not JobConfig fields."""

PATH_FIELDS = ("input", "output")


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{context}: {problem}" if context and "duplicate" not in problem else problem
    text = " ".join(str(text).split())
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {text}"
    return f"invalid YAML: {text}"


# ------------------------------------------------------------------ introspection


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel a field holds (SamplingConfig for `sampling`, also through `| None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _strip_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_text_field(annotation: Any) -> bool:
    return _strip_none(annotation) in (str, Path)


def _choices_text(values: Iterable[Any]) -> str:
    return ", ".join(str(v.value if isinstance(v, enum.Enum) else v) for v in values)


def _describe_type(annotation: Any) -> str:
    ann = _strip_none(annotation)
    origin = get_origin(ann)
    if ann is bool:
        return "true or false"
    if ann is int:
        return "an integer"
    if ann is float:
        return "a number"
    if ann is str:
        return "a string"
    if ann is Path:
        return "a path"
    if origin is Literal:
        return f"one of {_choices_text(get_args(ann))}"
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return f"one of {_choices_text(ann)}"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"a mapping with keys {', '.join(ann.model_fields)}"
    if origin is list:
        (inner,) = get_args(ann) or (Any,)
        inner = _strip_none(inner)
        if inner is str:
            return "a list of strings"
        if inner is Path:
            return "a list of paths"
        if get_origin(inner) is Literal or (isinstance(inner, type) and issubclass(inner, enum.Enum)):
            values = get_args(inner) if get_origin(inner) is Literal else list(inner)
            return f"a list with items from: {_choices_text(values)}"
        return f"a list whose items are each {_describe_type(inner)}"
    if origin is dict or ann is dict:
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in get_args(ann) if a is not type(None))
    return "a valid value"


def _describe_constraints(metadata: Sequence[Any]) -> str:
    bounds: dict[str, Any] = {}
    for m in metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if getattr(m, attr, None) is not None:
                bounds[attr] = getattr(m, attr)
    bounds = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in bounds.items()}
    if "ge" in bounds and "le" in bounds:
        return f"between {bounds['ge']} and {bounds['le']}"
    parts = []
    for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        if attr in bounds:
            parts.append(f"{sign} {bounds[attr]}")
    return " and ".join(parts)


FIELD_HINTS = {
    "json_schema": "a JSON schema (a mapping) or the path of a .json file holding one",
    "image_tokens": "one of 70, 140, 280, 560, 1120",
}


def describe_field(name: str, info: Any) -> str:
    """What a field expects, in words: 'a number ≥ 0', 'one of jsonl, parquet, both'."""
    if name in FIELD_HINTS:
        return FIELD_HINTS[name]
    base = _describe_type(info.annotation)
    bounds = _describe_constraints(info.metadata)
    return f"{base} {bounds}" if bounds else base


def _show(value: Any) -> str:
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return str(value)


def _field_at(loc: Sequence[Any]) -> tuple[str, str | None]:
    """(dotted field path, what it expects) for a pydantic error location."""
    model: type[BaseModel] | None = JobConfig
    info: Any = None
    name = ""
    path = ""
    in_item = False
    for comp in loc:
        if isinstance(comp, str) and model is not None and comp in model.model_fields:
            info = model.model_fields[comp]
            name = comp
            path = f"{path}.{comp}" if path else comp
            model = _nested_model(info.annotation)
            in_item = False
        elif isinstance(comp, int) and info is not None and not in_item:
            path += f"[{comp}]"
            in_item = True
            model = None
        else:
            break  # a union member's tag, or a key inside a free-form mapping
    if info is None:
        return path, None
    if in_item:
        (inner,) = get_args(_strip_none(info.annotation)) or (Any,)
        return path, _describe_type(inner)
    return path, describe_field(name, info)


def _recipe_wording(error: InvalidField) -> str:
    """A JobConfig validation error in a recipe's words: the dotted key, what it expects, YAML's pitfalls."""
    kind, msg, got = error.kind, error.msg, error.value
    path, expected = _field_at(error.loc)
    if not path:
        return msg
    if kind == "missing":
        return f"missing required key '{path}'" + (" (the output folder)" if path == "output" else "")
    if kind == "extra_forbidden":
        return f"unknown key '{'.'.join(str(p) for p in error.loc)}'"
    if kind in ("value_error", "assertion_error") or expected is None:
        return f"{path}: {msg}"
    hint = (
        " (YAML reads yes/no/on/off as true/false: quote the text)"
        if kind == "string_type" and got in (True, False) and isinstance(got, bool)
        else ""
    )
    return f"{path}: expected {expected}, got {_show(got)}{hint}"


# ---------------------------------------------------------------------- key checks


def _did_you_mean(key: str, candidates: Iterable[str]) -> str | None:
    pool = list(candidates)
    normalized = key.replace("-", "_").lower()
    if normalized in pool and normalized != key:
        return normalized
    match = difflib.get_close_matches(normalized, pool, n=1, cutoff=0.6)
    return match[0] if match else None


def _all_dotted_fields() -> list[str]:
    out: list[str] = []
    names = sorted(JobConfig.model_fields, key=lambda n: n not in ("sampling", "engine"))
    for name in names:
        info = JobConfig.model_fields[name]
        nested = _nested_model(info.annotation)
        if nested is not None:
            out.extend(f"{name}.{sub}" for sub in nested.model_fields)
    return out


def _unknown_key(dotted: str, leaf: str, model: type[BaseModel], top: bool) -> str:
    fields = list(model.model_fields) + (list(META_KEYS) if top else [])
    hint = _did_you_mean(leaf, fields)
    if hint is None and top:
        # `temperature:` at the top level belongs under `sampling:`
        dotted_fields = _all_dotted_fields()
        hint = next((d for d in dotted_fields if d.split(".", 1)[1] == leaf.replace("-", "_")), None)
        hint = hint or _did_you_mean(leaf, dotted_fields)
    if hint is not None:
        return f"unknown key '{dotted}' (did you mean '{hint}'?)"
    if top:
        return f"unknown key '{dotted}' (see docs/recipes.md for the recipe keys)"
    return f"unknown key '{dotted}' (expected one of {', '.join(model.model_fields)})"


def _check_keys(data: dict[Any, Any], model: type[BaseModel], prefix: str = "") -> None:
    for key, value in data.items():
        if not isinstance(key, str):
            raise _RecipeProblem(f"{prefix}{key!r}: keys must be names, got {_show(key)}")
        dotted = f"{prefix}{key}"
        if prefix == "" and key in META_KEYS:
            continue
        if key not in model.model_fields:
            raise _RecipeProblem(_unknown_key(dotted, key, model, top=prefix == ""))
        nested = _nested_model(model.model_fields[key].annotation)
        if nested is not None and isinstance(value, dict):
            _check_keys(value, nested, f"{dotted}.")


class _RecipeProblem(Exception):
    """A problem with the recipe; load_recipe prefixes the file name."""


# --------------------------------------------------------------------- --set


def _field_for(parts: list[str], raw: str) -> Any:
    model: type[BaseModel] | None = JobConfig
    info: Any = None
    for i, part in enumerate(parts):
        dotted = ".".join(parts[: i + 1])
        if model is None:
            raise _RecipeProblem(f"--set {raw!r}: '{'.'.join(parts[:i])}' has no keys inside it")
        if i == 0 and part in META_KEYS and len(parts) == 1:
            return None
        if part not in model.model_fields:
            raise _RecipeProblem(f"--set {raw!r}: " + _unknown_key(dotted, part, model, top=i == 0))
        info = model.model_fields[part]
        model = _nested_model(info.annotation)
    return info


def apply_set(data: dict[str, Any], raw: str, cwd: Path | None = None) -> None:
    """Apply one `dotted.key=value` override (value parsed as YAML) to recipe data."""
    if "=" not in raw:
        raise _RecipeProblem(f"--set {raw!r}: expected KEY=VALUE (e.g. --set sampling.temperature=0.7)")
    key, _, text = raw.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise _RecipeProblem(f"--set {raw!r}: expected KEY=VALUE with a key like sampling.temperature")
    info = _field_for(parts, raw)
    try:
        value = yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError as exc:
        raise _RecipeProblem(f"--set {raw!r}: {_yaml_error(exc)}") from None
    # A string field takes the text as written (`--set prompt=Describe: the scene`, `language=no`).
    if info is not None and _is_text_field(info.annotation) and value is not None and not isinstance(value, str):
        value = text.strip()
    if len(parts) == 1:
        value = _resolve_paths({key: value}, cwd or Path.cwd())[key]
    target = data
    for part in parts[:-1]:
        nxt = target.get(part)
        if nxt is None:
            nxt = target[part] = {}
        if not isinstance(nxt, dict):
            raise _RecipeProblem(f"--set {raw!r}: '{part}' is {_show(nxt)} in the recipe, not a mapping")
        target = nxt
    target[parts[-1]] = value


# ------------------------------------------------------------------------ paths


def _resolve_one(value: Any, base: Path) -> Any:
    """A relative path against the recipe's folder; a URL stays as written."""
    if isinstance(value, str) and value and not is_url(value):
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (base / p)
    return value


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative input/output/allow_roots/json_schema/model-folder (and engine lora/download_dir/
    tokenizer-folder) paths → absolute against `base`."""
    out = dict(data)
    for key in PATH_FIELDS:
        if key in out:
            out[key] = _resolve_one(out[key], base)
    if isinstance(out.get("allow_roots"), list):
        out["allow_roots"] = [_resolve_one(v, base) for v in out["allow_roots"]]
    elif isinstance(out.get("allow_roots"), str):
        out["allow_roots"] = [_resolve_one(out["allow_roots"], base)]
    if isinstance(out.get("json_schema"), str):
        out["json_schema"] = _resolve_one(out["json_schema"], base)
    model = out.get("model")
    if isinstance(model, str) and model.startswith(("./", "../", "~")):
        out["model"] = str(_resolve_one(model, base))
    if isinstance(out.get("engine"), dict):
        engine = out["engine"] = dict(out["engine"])
        for key in ("lora", "download_dir", "tokenizer"):  # folders (a tokenizer may be a hub id)
            value = engine.get(key)
            if isinstance(value, str) and (key != "tokenizer" or value.startswith(("./", "../", "~"))):
                engine[key] = str(_resolve_one(value, base))
    return out


def _normalize(p: Any) -> Any:
    return Path(os.path.normpath(p)) if isinstance(p, Path) else p


# ---------------------------------------------------------------- semantic checks


def _load_schema(value: Any) -> Any:
    from ..prompting.structured import load_schema

    try:
        return load_schema(value)
    except UsageError as exc:
        raise _RecipeProblem(str(exc)) from None


def _check_template(text: Any) -> None:
    from ..prompting.prompts import check_template

    if isinstance(text, str):
        try:
            check_template(text)
        except UsageError as exc:
            raise _RecipeProblem(str(exc)) from None


def _check_task_name(field: str, name: str) -> None:
    if resolve_task(name) is None:
        hint = _did_you_mean(name, TASKS)
        raise _RecipeProblem(
            f"{field}: unknown task '{name}'"
            + (f" (did you mean '{hint}'?)" if hint else f" (built-in tasks: {', '.join(TASKS)}; or give a prompt)")
        )


def _check_semantics(data: dict[str, Any], config: JobConfig) -> None:
    """Combinations JobConfig cannot check on its own."""
    if config.prompt is None:
        if config.tasks:
            for i, name in enumerate(config.tasks):
                _check_task_name(f"tasks[{i}]", name)
        else:
            _check_task_name("task", config.task)
    if "task" in data and data.get("tasks"):
        raise _RecipeProblem("task and tasks cannot be used together (tasks runs several tasks per item)")
    names = [t.name for n in config.task_list() if (t := resolve_task(n)) is not None]
    speech = [n for n in names if is_speech_task(n)]
    if config.translate_to and config.prompt is None and names and not speech:
        raise _RecipeProblem(
            f"translate_to only applies to the transcribe and translate tasks, not '{', '.join(names)}'"
        )
    local_input = config.input if isinstance(config.input, Path) else None
    manifest_input = local_input is not None and local_input.is_file()
    if config.subtitles and names and not speech and not manifest_input:
        raise _RecipeProblem(f"subtitles only come from the transcribe and translate tasks, not '{', '.join(names)}'")
    if config.modalities and config.prompt is None and names:
        for n in names:
            task = TASKS[n]
            if not set(task.instructions) & set(config.modalities):
                works = ", ".join(m.value for m in task.instructions)
                asked = ", ".join(m.value for m in config.modalities)
                raise _RecipeProblem(f"modalities: task '{n}' works on {works}, not {asked}")
    if local_input is not None and not local_input.exists():
        raise _RecipeProblem(
            f"input: not found: {config.input} (relative paths in a recipe are resolved against its folder)"
        )
    if isinstance(config.output, Path) and config.output.exists() and not config.output.is_dir():
        raise _RecipeProblem(f"output: exists and is not a folder: {config.output}")


# ------------------------------------------------------------------------ loading


def read_recipe(path: Path) -> dict[str, Any]:
    """The recipe file's mapping (not yet validated)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _RecipeProblem("recipe file not found") from None
    except IsADirectoryError:
        raise _RecipeProblem("is a folder, not a recipe file") from None
    except UnicodeDecodeError:
        raise _RecipeProblem("not a text file (invalid UTF-8)") from None
    except OSError as exc:
        raise _RecipeProblem(f"cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise _RecipeProblem(_yaml_error(exc)) from None
    if data is None:
        raise _RecipeProblem("the recipe is empty (expected a mapping of settings such as input:, output:, task:)")
    if not isinstance(data, dict):
        raise _RecipeProblem(f"expected a mapping of settings (key: value lines) at the top level, got {_show(data)}")
    return data


def resolve(
    data: dict[str, Any],
    base: Path,
    sets: Sequence[str] = (),
    model: str | None = None,
    cwd: Path | None = None,
) -> JobConfig:
    """Recipe data → JobConfig (raises _RecipeProblem)."""
    data = dict(data)
    version = data.pop("version", RECIPE_VERSION)
    if version != RECIPE_VERSION or isinstance(version, bool):
        raise _RecipeProblem(f"version: expected {RECIPE_VERSION}, got {_show(version)}")
    description = data.pop("description", None)
    if description is not None and not isinstance(description, str):
        raise _RecipeProblem(f"description: expected a string, got {_show(description)}")
    _check_keys(data, JobConfig)
    data = _resolve_paths(data, base)
    for raw in sets or ():
        apply_set(data, raw, cwd)
    data.pop("version", None)
    data.pop("description", None)
    _check_keys(data, JobConfig)  # a --set may have brought in a whole mapping
    if model is not None:
        data["model"] = model
    for key in ("input", "output"):
        if key in data:
            data[key] = _normalize(data[key])
    if isinstance(data.get("allow_roots"), list):
        data["allow_roots"] = [_normalize(p) for p in data["allow_roots"]]
    if "json_schema" in data and data["json_schema"] is not None:
        data["json_schema"] = _load_schema(data["json_schema"])
    _check_template(data.get("prompt"))
    try:
        config = JobConfig(**data)
    except ValidationError as exc:
        raise _RecipeProblem(validation_message(exc, _recipe_wording)) from None
    except (TypeError, ValueError) as exc:  # e.g. a non-string key in a nested mapping
        raise _RecipeProblem(" ".join(str(exc).split())) from None
    _check_semantics(data, config)
    return config


def load_recipe(path: Path, sets: Sequence[str] = (), model: str | None = None) -> JobConfig:
    """Read, override and validate a recipe; any problem is a one-line UsageError naming the file."""
    path = Path(path)
    try:
        data = read_recipe(path)
        base = path.resolve().parent
        return resolve(data, base, sets, model)
    except _RecipeProblem as exc:
        raise UsageError(f"{path}: {exc}") from None


def recipe_description(path: Path) -> str | None:
    try:
        data = read_recipe(path)
    except _RecipeProblem:
        return None
    desc = data.get("description")
    return desc if isinstance(desc, str) else None


__all__ = ["RECIPE_VERSION", "apply_set", "describe_field", "load_recipe", "read_recipe", "recipe_description"]

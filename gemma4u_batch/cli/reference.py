"""docs/cli.md, generated from the Typer app so the option reference cannot drift from the CLI.

    python -m gemma4u_batch.cli.reference           rewrite docs/cli.md
    python -m gemma4u_batch.cli.reference --check   exit 1 (one line) if docs/cli.md is stale

The text depends only on the commands' declarations (names, types, defaults, help): no
terminal width, no absolute paths, commands in the order they are registered.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

REPO = Path(__file__).resolve().parents[2]
CLI_MD = REPO / "docs" / "cli.md"
CLI_MD_NAME = "docs/cli.md"
REGENERATE = "python -m gemma4u_batch.cli.reference"

_TYPE_NAMES: dict[Any, str] = {str: "text", int: "integer", float: "number", bool: "flag", Path: "path"}


@dataclass(frozen=True)
class CommandDoc:
    """One leaf or group command with its full path (`gemma4u model verify`)."""

    path: tuple[str, ...]
    command: Any

    @property
    def name(self) -> str:
        return " ".join(self.path)

    @property
    def is_group(self) -> bool:
        return hasattr(self.command, "commands")

    @property
    def anchor(self) -> str:
        """GitHub's heading slug for `## \\`gemma4u model verify\\``."""
        return "-".join(self.path)


def root_command() -> Any:
    """The click command Typer builds for `gemma4u`."""
    import typer

    from .app import app

    return typer.main.get_command(app)


def walk(command: Any | None = None, path: tuple[str, ...] = ("gemma4u",)) -> Iterator[CommandDoc]:
    """Every visible command, depth first, in registration order (groups before their commands)."""
    command = root_command() if command is None else command
    yield CommandDoc(path, command)
    if hasattr(command, "commands"):
        for name in command.list_commands(None):
            sub = command.commands[name]
            if not getattr(sub, "hidden", False):
                yield from walk(sub, (*path, name))


def _options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option" and not getattr(p, "hidden", False)]


def _arguments(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "argument"]


def option_names(param: Any) -> list[str]:
    return [*param.opts, *param.secondary_opts]


def command_options() -> dict[str, set[str]]:
    """`gemma4u caption` → every option string it accepts (including --help), for the docs tests."""
    return {
        doc.name: {n for p in _options(doc.command) for n in option_names(p)} | {"--help"}
        for doc in walk()
        if not doc.is_group or _options(doc.command)
    }


def _annotation(param: Any) -> Any:
    td = getattr(param, "type_descriptor", None)
    return getattr(td, "annotation", None)


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _type_text(param: Any) -> str:
    """`integer`, `path (repeatable)`, `one of: a, b`, `flag`, … (the metavar when one is declared)."""
    annotation = _strip_optional(_annotation(param))
    repeatable = bool(param.multiple) or get_origin(annotation) is list
    if get_origin(annotation) is list:
        annotation = _strip_optional(get_args(annotation)[0])
    choices = getattr(getattr(param, "type_descriptor", None), "choices", None)
    if choices is None:
        choices = getattr(getattr(param, "type", None), "choices", None)
    if getattr(param, "is_flag", False):
        text = "flag"
    elif param.metavar:
        text = param.metavar
    elif choices:
        text = "one of: " + ", ".join(str(getattr(c, "value", c)) for c in choices)
    elif annotation in _TYPE_NAMES:
        text = _TYPE_NAMES[annotation]
    else:
        click_type = getattr(param, "type", None)
        text = str(getattr(click_type, "name", None) or getattr(annotation, "__name__", "value")).lower()
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None and high is not None:
        text += f" {low}–{high}"
    elif low is not None:
        text += f" ≥ {low}"
    elif high is not None:
        text += f" ≤ {high}"
    return text + (" (repeatable)" if repeatable else "")


def _value_text(value: Any) -> str:
    if isinstance(value, Path):
        value = value.as_posix()
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value}`"


def _default_text(param: Any) -> str:
    if param.required:
        return "required"
    default = param.default
    if callable(default):
        return "computed"
    if getattr(param, "is_flag", False):
        return _value_text(bool(default))
    if default is None or (isinstance(default, list | tuple) and not default):
        return "—"
    if isinstance(default, list | tuple):
        return ", ".join(_value_text(v) for v in default)
    return _value_text(default)


def _cell(text: str | None) -> str:
    """One Markdown table cell: a single line; pipes and angle brackets escaped (`<id>` is not HTML)."""
    cell = " ".join((text or "").split())
    return cell.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _usage(doc: CommandDoc) -> str:
    pieces = [doc.name, "[OPTIONS]"]
    if doc.is_group:
        pieces += ["COMMAND", "[ARGS]..."]
    for arg in _arguments(doc.command):
        name = (arg.metavar or arg.name).upper()
        name += "..." if arg.nargs != 1 else ""
        pieces.append(name if arg.required else f"[{name}]")
    return " ".join(pieces)


def _help(command: Any) -> str:
    return inspect.cleandoc(command.help or "").strip()


def _render_command(doc: CommandDoc) -> list[str]:
    cmd = doc.command
    lines = [f"## `{doc.name}`", ""]
    if _help(cmd):
        lines += [_help(cmd), ""]
    lines += ["```", _usage(doc), "```", ""]
    if doc.is_group:
        lines += ["| command | description |", "| --- | --- |"]
        for name in cmd.list_commands(None):
            sub = cmd.commands[name]
            if not getattr(sub, "hidden", False):
                summary = _help(sub).split("\n\n")[0]
                lines.append(f"| [`{name}`](#{doc.anchor}-{name}) | {_cell(summary)} |")
        lines.append("")
        return lines + _render_options(cmd)  # `gemma4u --version`, shell completion
    arguments = _arguments(cmd)
    if arguments:
        lines += ["### Arguments", "", "| argument | type | default | description |", "| --- | --- | --- | --- |"]
        for arg in arguments:
            name = (arg.metavar or arg.name).upper()
            lines.append(f"| `{name}` | {_type_text(arg)} | {_default_text(arg)} | {_cell(getattr(arg, 'help', ''))} |")
        lines.append("")
    return lines + _render_options(cmd)


def _render_options(cmd: Any) -> list[str]:
    """A command's options, one table per help panel (none: no lines)."""
    lines: list[str] = []
    panels: dict[str | None, list[Any]] = {None: []}
    for opt in _options(cmd):
        panels.setdefault(getattr(opt, "rich_help_panel", None), []).append(opt)
    for panel, opts in panels.items():
        if not opts:
            continue
        lines += [f"### Options: {panel}" if panel else "### Options", ""]
        lines += ["| option | type | default | description |", "| --- | --- | --- | --- |"]
        for opt in opts:
            names = ", ".join(f"`{n}`" for n in option_names(opt))
            lines.append(f"| {names} | {_type_text(opt)} | {_default_text(opt)} | {_cell(opt.help)} |")
        lines.append("")
    return lines


def render() -> str:
    """The full text of docs/cli.md."""
    docs = list(walk())
    lines = [
        f"<!-- Generated from the Typer app by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "# Command-line reference",
        "",
        "Every command and option of `gemma4u`, generated from the CLI itself (`gemma4u COMMAND --help` "
        "shows the same). Every command also takes `--help`. Options of `caption` and `transcribe` "
        "map one to one onto recipe keys: see [recipes.md](recipes.md#keys).",
        "",
    ]
    lines += [f"* [`{d.name}`](#{d.anchor})" for d in docs[1:]]
    lines.append("")
    for doc in docs:
        lines += _render_command(doc)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description="Generate docs/cli.md from the gemma4u CLI.")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is not up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = CLI_MD.read_text(encoding="utf-8") if CLI_MD.exists() else None
        if current != text:
            print(f"{CLI_MD_NAME} is out of date: regenerate it with `{REGENERATE}`", file=sys.stderr)
            return 1
        print(f"{CLI_MD_NAME} is up to date")
        return 0
    CLI_MD.parent.mkdir(parents=True, exist_ok=True)
    CLI_MD.write_text(text, encoding="utf-8")
    print(f"wrote {CLI_MD_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

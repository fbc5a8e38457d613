#!/usr/bin/env bash
# Create bench/.venv: the benchmark's own environment, with TRL and the transformers version it supports.
# TRL stays out of the project's environment; our package is installed editable with --no-deps on top.
# Usage (from the repo root):  bash bench/setup.sh      (PYTHON=python3.11 bash bench/setup.sh to pick python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=bench/.venv
TORCH="${TORCH:-torch==2.13.0}"
# extra pip arguments for torch, e.g. TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH_INDEX="${TORCH_INDEX:-}"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# 1) torch first, so nothing below can swap it for another build
$PIP install -q "$TORCH" $TORCH_INDEX
# 2) TRL and the libraries it was released against (pinned in bench/requirements.txt);
#    the torch pin is repeated as a constraint so pip never replaces it
$PIP install -q -r bench/requirements.txt -c <(echo "$TORCH")
# 3) our package without its pins (it asks for transformers>=4.46 only for Trainer-API names the benchmark does not use)
$PIP install -q --no-deps -e .
echo "bench/.venv ready:"
$VENV/bin/python -c "import torch, transformers, trl, open_chatgpt; print('torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"

#!/usr/bin/env bash
# Create bench/.venv-trl-new: a second benchmark environment with a recent TRL (GRPOTrainer, RLOOTrainer, the
# current DPOTrainer) for the DPO/GRPO agreement checks. bench/.venv (bench/setup.sh) keeps TRL 0.11.4 for the
# classic PPOTrainer; TRL stays out of the project's environment. Our package is installed editable with --no-deps.
# Usage (from the repo root):  bash bench/setup_trl_new.sh      (PYTHON=python3.11 bash bench/setup_trl_new.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-bench/.venv-trl-new}"
TORCH="${TORCH:-torch==2.13.0}"
# extra pip arguments for torch, e.g. TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH_INDEX="${TORCH_INDEX:-}"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
echo "*" > "$VENV/.gitignore"   # never committed, even where .gitignore does not list it
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# 1) torch first, so nothing below can swap it for another build
$PIP install -q "$TORCH" $TORCH_INDEX
# 2) TRL and the libraries it runs with (bench/requirements-trl-new.txt); the torch pin is a constraint
$PIP install -q -r bench/requirements-trl-new.txt -c <(echo "$TORCH")
# 3) our package without its pins
$PIP install -q --no-deps -e .
echo "$VENV ready:"
$VENV/bin/python -c "import torch, transformers, trl, open_chatgpt; print('torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__)"

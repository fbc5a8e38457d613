#!/usr/bin/env bash
# Run one stage's script on every GPU with the deepspeed launcher, or in CPU mode when there is no GPU.
#   scripts/launch.sh sft|reward|ppo [script args...]
#   NGPUS=4 scripts/launch.sh ppo --deepspeed scripts/ds_configs/zero3.json --model-config opt-125m --bf16
#   NPROC=2 scripts/launch.sh sft --deepspeed zero2 --max-steps 2      # CPU: two gloo processes via torchrun
set -euo pipefail
stage="${1:?usage: scripts/launch.sh sft|reward|ppo [args...]}"; shift
case "$stage" in sft|reward|ppo) ;; *) echo "unknown stage '$stage': use sft, reward or ppo" >&2; exit 2;; esac
here="$(cd "$(dirname "$0")" && pwd)"
script="$here/train_$stage.py"
ngpus="${NGPUS:-$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)}"
if [ "$ngpus" -gt 0 ]; then
  exec deepspeed --num_gpus "$ngpus" --master_port "${MASTER_PORT:-29500}" "$script" "$@"
elif [ "${NPROC:-1}" -gt 1 ]; then
  exec torchrun --nproc_per_node "$NPROC" --master_port "${MASTER_PORT:-29500}" "$script" --cpu "$@"
else
  exec python "$script" --cpu "$@"
fi

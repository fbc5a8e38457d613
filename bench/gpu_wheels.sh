#!/usr/bin/env bash
# What a call of bench/gpu.py on an offline GPU machine (Python 3.12, its own torch) needs from here:
#   .whl/trl   the benchmark's environment (TRL 0.11.4, transformers 4.45.2, ...) as wheels, no dependencies
#   .whl/ours  what the project's DeepSpeed scripts need beyond the machine's image (DeepSpeed, pydantic, datasets...)
#   .gpu/      SmolLM2's and MiniLM's config and tokenizer files, without weights (--random-init builds them)
# Run once in the repository root (with the project's .venv and the converted models in ~/.cache/open_chatgpt), then
# on the GPU machine (both folders ignored by git, so name them in the call's carry):
#   pip install -q --no-index --no-deps --target /tmp/site-trl .whl/trl/*.whl
#   pip install -q --no-index --no-deps --target /tmp/site-ours .whl/ours/*.whl
#   python3 bench/gpu.py --out $OUT --ours-path /tmp/site-ours --trl-path /tmp/site-trl --random-init .gpu --deadline 450
set -euo pipefail
PY=${PY:-.venv/bin/python}
CACHE=${OPEN_CHATGPT_CACHE:-$HOME/.cache/open_chatgpt}
plat=""; for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64 manylinux_2_34_x86_64; do plat="$plat --platform $p"; done
get() { $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d "$@"; }
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.gpu/\n' >> .git/info/exclude
get .whl/trl trl==0.11.4 transformers==4.45.2 tokenizers==0.20.3 accelerate==1.1.1 datasets==3.6.0 dill==0.3.8 \
    multiprocess==0.70.16 huggingface_hub==0.36.2 peft==0.13.2 fsspec==2025.3.0 tyro==1.0.17 docstring_parser==0.18.0 \
    typeguard==4.6.1 gguf==0.19.0
# DeepSpeed publishes no wheel: build a pure-Python one (its CUDA ops are compiled on first use, on the GPU machine)
DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps -w .whl/ours "deepspeed==$($PY -c 'import importlib.metadata as m; print(m.version("deepspeed"))')"
get .whl/ours hjson==3.1.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 gguf==0.19.0
for m in smollm2-135m-instruct minilm-l6; do
  mkdir -p .gpu/$m; (cd "$CACHE/$m" && tar cf - --exclude='model*.safetensors' .) | (cd .gpu/$m && tar xf -)
done
du -sh .whl .gpu

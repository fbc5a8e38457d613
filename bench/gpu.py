#!/usr/bin/env python
"""The GPU measurements of issue 17 in one run, for a lent GPU machine with a time limit:
  1. chapter 11's DeepSpeed scripts (scripts/train_{sft,reward,ppo}.py) under ZeRO-2 and ZeRO-3, bf16, on an
     OPT-125m-shaped and an OPT-1.3b-shaped model built from config: steady-state samples/s and tokens/s, peak GPU
     memory, against the chapter's estimate of the model states (`zero_memory`, `rlhf_memory`);
  2. the benchmark's real-model mode on the GPU (`bench/run.py --real --device cuda`): PPO and reward-model steps,
     ours vs TRL 0.11.4, after bench/generation_overhead.py on the GPU at the real widths (our sampler, variants of
     its loop and HF generate per token, with profiler tables).
Each measurement runs in its own process; the two parts use two Python environments (the project's, with DeepSpeed;
the benchmark's, with TRL 0.11.4 and transformers 4.45), given as extra import paths or as interpreters.

    python bench/gpu.py --out runs/gpu                        # both environments already active / installed
    python bench/gpu.py --out $OUT --ours-path /tmp/site --trl-path /tmp/site-trl --random-init .gpu --deadline 420

--random-init DIR: no weights can be downloaded (an offline GPU machine): build SmolLM2-135M-Instruct and MiniLM-L6
from their config and tokenizer files in DIR/<name>/ with random weights. Timings do not depend on the weights, except
that random weights never stop early, so every response runs to the token limit. Writes OUT/gpu-ds.json,
OUT/gpu-ds.md, OUT/results-real-gpu.md (+ .json, the measurements), OUT/generation-overhead-gpu.md,
OUT/generation-profile-{ours,hf}.md and OUT/gpu-log.txt.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZES = {"opt-125m": dict(sft=30, reward=30, ppo=5), "opt-1.3b": dict(sft=15, reward=15, ppo=4)}   # steps per run
STAGES = ("zero2", "zero3")


def log(*a, file=None):
    print(*a, flush=True)
    if file: print(*a, file=file, flush=True)


def env_for(path: str, extra: dict = None) -> dict:
    "This process's environment with `path` (a folder of installed wheels) and the repository first on PYTHONPATH."
    parts = [p for p in (path, str(REPO), os.environ.get("PYTHONPATH", "")) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(parts), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            **(extra or {})}


def make_random_models(src: Path, cache: Path, env: dict):
    "Write SmolLM2-135M-Instruct and MiniLM-L6 with random weights from the config + tokenizer files under `src`."
    code = (
        "import shutil, sys, torch\nfrom pathlib import Path\n"
        "from transformers import AutoConfig, AutoModel, AutoModelForCausalLM\n"
        "src, cache = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "for name, cls in (('smollm2-135m-instruct', AutoModelForCausalLM), ('minilm-l6', AutoModel)):\n"
        "    out = cache / name; shutil.copytree(src / name, out, dirs_exist_ok=True)\n"
        "    torch.manual_seed(0); m = cls.from_config(AutoConfig.from_pretrained(out))\n"
        "    m.save_pretrained(out); print(name, sum(p.numel() for p in m.parameters()), 'parameters (random)')\n")
    subprocess.run([sys.executable, "-c", code, str(src), str(cache)], env=env, check=True)


def estimate_gb(m: dict, stage: int) -> float:
    "The chapter's estimate of the model states on one GPU (bf16 mixed precision, Adam), without activations."
    from open_chatgpt.distributed import GB, rlhf_memory, total_gb, zero_memory
    if m["script"] == "train_ppo":
        n = m["n_params"]
        return total_gb(rlhf_memory(n["actor"], n["critic"], 1, stage, "bf16"))
    return zero_memory(m["n_params"], 1, stage, "bf16").total / GB


def run_ds(script: str, size: str, cfg: str, steps: int, env: dict, port: int, timeout: int, smoke: bool = False,
           cap: int = 180) -> dict:
    "One DeepSpeed script run in its own process; its metrics.json plus the wall time (imports and set-up included)."
    out = Path(tempfile.mkdtemp(prefix=f"gpu-{script}-{size}-{cfg}-"))
    cmd = [sys.executable, str(REPO / "scripts" / f"train_{script}.py"), "--deepspeed", cfg, "--model-config", size,
           "--cpu" if smoke else "--bf16", "--max-steps", str(steps), "--output-dir", str(out)]
    t0 = time.perf_counter()
    try: p = subprocess.run(cmd, env={**env, "MASTER_PORT": str(port)}, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(script=f"train_{script}", model_config=size, deepspeed=cfg, wall=time.perf_counter() - t0,
                    error=f"not measured: stopped after {timeout} s (its timeout: at most {cap} s, or the time left "
                          "before the call's deadline)")
    wall = time.perf_counter() - t0
    if p.returncode: return dict(script=f"train_{script}", model_config=size, deepspeed=cfg, error=p.stderr[-1500:], wall=wall)
    m = json.loads((out / "metrics.json").read_text())
    m.pop("history", None)
    return {**m, "wall": wall}


def ds_table(rows: list, device: str) -> str:
    "The Markdown table of the DeepSpeed runs."
    head = ["script", "shape", "params (M; PPO: 4 models)", "ZeRO", "steps x batch", "samples/s (steady)", "tokens/s (steady)",
            "peak GPU memory (GB)", "estimate: states (GB)", "wall s (incl. imports, set-up)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in rows:
        if "error" in m:
            err = m["error"].strip().splitlines()[-1][:120] if m["error"].strip() else "?"
            lines.append(f"| {m['script']} | {m['model_config']} | | {m['deepspeed']} | "
                         f"{err if err.startswith('not measured') else 'failed: ' + err} | | | | | {m['wall']:.0f} |")
            continue
        n = m["n_params"]
        n_m = sum(n.values()) / 1e6 if isinstance(n, dict) else n / 1e6
        sps = m.get("steady_samples_per_second") or m["samples_per_second"]
        tps = m.get("steady_tokens_per_second") or sps * m["tokens_per_second"] / m["samples_per_second"]   # else the
        # run's tokens per sample (as the script counted them) times the steady samples/s
        lines.append(f"| {m['script']} | {m['model_config']} | {n_m:.0f} | {m['zero_stage']} | {m['steps']} x "
                     f"{m['batch_size_per_process']} | {sps:.1f} | {tps:,.0f} | {m['peak_memory_gb']:.1f} | "
                     f"{m['estimate_gb']:.1f} | {m['wall']:.0f} |")
    return "\n".join([f"DeepSpeed scripts on **{device}** (one GPU, one process), bf16:", ""] + lines)


def render(paths: list, out: Path):
    "Merge the gpu-ds.json of several calls (one device each) into OUT.json and the table OUT.md."
    runs = [json.loads(Path(x).read_text()) for x in paths]
    devices = {r["device"] for r in runs}
    if len(devices) != 1: raise SystemExit(f"the runs were made on different devices {devices}: render them separately")
    order = {k: i for i, k in enumerate(f"{s}|{sc}|{c}" for s in SIZES for sc in ("train_sft", "train_reward", "train_ppo")
                                        for c in STAGES)}
    key = lambda m: f"{m['model_config']}|{m['script']}|{m['deepspeed']}"
    best = {}                         # one row per run: a measured one replaces an earlier call's failed or stopped one
    for m in (m for r in runs for m in r["runs"]):
        if key(m) not in best or "error" in best[key(m)]: best[key(m)] = m
    rows = sorted(best.values(), key=lambda m: order.get(key(m), len(order)))
    out.with_suffix(".json").write_text(json.dumps(dict(device=devices.pop(), runs=rows), indent=1) + "\n")
    out.with_suffix(".md").write_text(ds_table(rows, runs[0]["device"]) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the results (--render: the merged files' path, no suffix)")
    p.add_argument("--render", nargs="+", default=None, help="gpu-ds.json files of earlier calls: merge and render only")
    p.add_argument("--ours-path", default="", help="extra import path of the project's environment (DeepSpeed)")
    p.add_argument("--trl-path", default="", help="extra import path of the benchmark's environment (TRL 0.11.4)")
    p.add_argument("--random-init", default="", help="folder with <model>/config + tokenizer files: random weights")
    p.add_argument("--deadline", type=float, default=1e9, help="seconds: skip what would start after this")
    p.add_argument("--repeats", type=int, default=3, help="bench/run.py repeats")
    p.add_argument("--sizes", default=",".join(SIZES), help="comma list of model shapes for the DeepSpeed runs")
    p.add_argument("--scripts", default="sft,reward,ppo", help="comma list of the DeepSpeed scripts to run")
    p.add_argument("--stages", default=",".join(STAGES), help="comma list of the ZeRO configs to run (zero2,zero3)")
    p.add_argument("--ds-timeout", type=int, default=180, help="seconds allowed to one DeepSpeed run")
    p.add_argument("--no-generation", action="store_true", help="skip bench/generation_overhead.py")
    p.add_argument("--bench-first", action="store_true", help="run bench/run.py before the DeepSpeed scripts")
    p.add_argument("--smoke", action="store_true", help="a test of this script without a GPU: CPU mode, tiny sizes")
    a = p.parse_args(argv)
    if a.smoke: a.sizes, a.repeats = "tiny", 1
    if a.render: return render(a.render, Path(a.out))
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    t_start, logf = time.perf_counter(), open(out / "gpu-log.txt", "a")
    left = lambda: a.deadline - (time.perf_counter() - t_start)
    import torch
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (smoke test)"
    ours, trl_env = env_for(a.ours_path), env_for(a.trl_path)
    cache = Path(tempfile.mkdtemp(prefix="occache-"))
    if a.random_init:
        make_random_models(Path(a.random_init), cache, ours)
        trl_env["OPEN_CHATGPT_CACHE"] = ours["OPEN_CHATGPT_CACHE"] = str(cache)
        trl_env["BENCH_RANDOM_WEIGHTS"] = "1"   # bench/run.py says so in its report
    log(f"device: {device}; torch {torch.__version__}; {time.perf_counter() - t_start:.0f} s", file=logf)
    sys.path.insert(0, str(REPO))
    rows, port = [], 29700
    def ds(size):
        for script in a.scripts.split(","):
            for cfg in a.stages.split(","):
                if left() < 40: log(f"skip {script} {size} {cfg}: deadline", file=logf); continue
                nonlocal port; port += 1
                m = run_ds(script, size, cfg, 2 if a.smoke else SIZES[size][script], ours, port,
                           timeout=int(min(a.ds_timeout, left() - 10)), smoke=a.smoke, cap=a.ds_timeout)
                if "error" not in m: m["estimate_gb"] = estimate_gb(m, m["zero_stage"])
                rows.append(m)
                log(f"{script} {size} {cfg}: " + (f"FAILED {m['error'][-600:]}" if "error" in m else
                    f"{m.get('steady_samples_per_second') or 0:.1f} samples/s, peak {m['peak_memory_gb']:.2f} GB "
                    f"(states {m['estimate_gb']:.2f}), wall {m['wall']:.0f} s") + f"  [{time.perf_counter() - t_start:.0f} s]",
                    file=logf)
                (out / "gpu-ds.json").write_text(json.dumps(dict(device=device, runs=rows), indent=1))
                (out / "gpu-ds.md").write_text(ds_table(rows, device) + "\n")
    sizes = [] if a.sizes == "none" else a.sizes.split(",")
    if sizes and not a.bench_first: ds(sizes[0])
    if a.bench_first: sizes = [None] + sizes
    if left() > 90 and not (a.smoke or a.no_generation):   # where the generation gap comes from, at the real widths
        cmd = [sys.executable, str(REPO / "bench" / "generation_overhead.py"), "--device", "cuda", "--threads", "0",
               "--shape", "real", "--variants", "--repeats", "3", "--profile", str(out),
               "--out", str(out / "generation-overhead-gpu.md")]
        try: r = subprocess.run(cmd, env=trl_env, timeout=min(150, left() - 60), capture_output=True, text=True)
        except subprocess.TimeoutExpired: log("generation_overhead.py: timed out", file=logf)
        else: log(f"generation_overhead.py exit {r.returncode}\n{r.stdout[-2500:]}\n{r.stderr[-1500:]}", file=logf)
    if left() > 120:
        cmd = [sys.executable, str(REPO / "bench" / "run.py"), "--real", "--device", "cpu" if a.smoke else "cuda",
               "--only", "reward,ppo", "--repeats", str(a.repeats), "--threads", "1" if a.smoke else "0",
               "--out", str(out / "results-real-gpu.md")] + (["--quick"] if a.smoke else [])
        n_later = len(a.scripts.split(",")) * len(a.stages.split(",")) * len(sizes[1:])   # the larger shapes' DeepSpeed runs
        reserve = max(45 * n_later, a.ds_timeout if n_later else 0)                         # seconds kept for them
        try: r = subprocess.run(cmd, env=trl_env, timeout=min(3600, max(60, left() - reserve)), capture_output=True, text=True)
        except subprocess.TimeoutExpired: log("bench/run.py: timed out", file=logf)
        else: log(f"bench/run.py exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}", file=logf)
    for size in sizes[1:]: ds(size)
    log(f"done in {time.perf_counter() - t_start:.0f} s", file=logf)


if __name__ == "__main__":
    main()

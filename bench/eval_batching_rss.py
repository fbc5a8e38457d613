#!/usr/bin/env python
"""Peak memory of an evaluation's sampling at 32 and 64 answers per rollout (chapter 7's `sample_answers`): untouched
SmolLM2-135M-Instruct, REAL_RUN's sampling settings, one answer to each of the first 128 held-out prompts, one torch
thread, each batch size in its own process (peak RSS is per process).

    .venv/bin/python bench/eval_batching_rss.py > bench/eval-batching-rss.md     # about 2 minutes here
"""
import os, resource, subprocess, sys, time
import torch

def measure(batch_size: int) -> str:
    torch.set_num_threads(1)
    from open_chatgpt.data import get_tokenizer, sample_prompts
    from open_chatgpt.evaluation import sample_answers
    from open_chatgpt.pipeline import REAL_RUN
    from open_chatgpt.ppo import PPOConfig
    from open_chatgpt.sft import load_policy
    tok = get_tokenizer("smollm2-135m-instruct"); policy = load_policy("smollm2-135m-instruct", tokenizer=tok).eval()
    s = REAL_RUN["ppo"]
    cfg = PPOConfig(max_new_tokens=s["max_new_tokens"], max_prompt_length=s["max_prompt_length"],
                    generation_dtype=s["generation_dtype"])
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter(); sample_answers(policy, tok, list(sample_prompts("test")["prompt"][:128]), cfg,
                                             batch_size=batch_size, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return f"| {batch_size} | {loaded:.2f} | {peak:.2f} | {peak - loaded:.2f} | {time.perf_counter() - t0:.0f} |"

if __name__ == "__main__":
    if len(sys.argv) > 1: print(measure(int(sys.argv[1]))); sys.exit()
    from open_chatgpt.plumbing import machine_name
    print(f"# Peak RSS of the evaluation's sampling\n\nmachine: {machine_name()}; torch {torch.__version__}, 1 thread; "
          f"load average at the start {os.getloadavg()[0]:.1f}\n")
    print("| answers per rollout | RSS after loading (GiB) | peak RSS (GiB) | added by sampling (GiB) | wall s |\n|---|---|---|---|---|")
    for b in (32, 64):
        out = subprocess.run([sys.executable, __file__, str(b)], capture_output=True, text=True, check=True).stdout
        print(out.strip().splitlines()[-1], flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}; one run each")

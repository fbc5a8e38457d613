#!/usr/bin/env python
"""What sorting the prompts by length and larger rollouts save in an evaluation's sampling (chapter 7's
`sample_answers`): untouched SmolLM2-135M-Instruct, REAL_RUN's sampling settings (up to 64 new tokens, prompts up to 192,
`generation_dtype="auto"`), the first 128 held-out prompts with one answer each, and the first 16 with 16 answers each
(best-of-n), wall seconds on every core torch uses. 'given order, 32' is how sample_answers sampled before: the rows
in the order given, 32 answers per rollout. No judges: scoring costs the same either way.

    .venv/bin/python bench/eval_batching.py > bench/eval-batching.md     # about 4 minutes here
"""
import os, time
import torch
from open_chatgpt.data import get_tokenizer, sample_prompts
from open_chatgpt.evaluation import prompt_lengths, sample_answers
from open_chatgpt.pipeline import REAL_RUN
from open_chatgpt.plumbing import machine_name
from open_chatgpt.ppo import PPOConfig, resolve_generation_dtype, rollout
from open_chatgpt.sft import load_policy

tok = get_tokenizer("smollm2-135m-instruct")
policy = load_policy("smollm2-135m-instruct", tokenizer=tok).eval()
s = REAL_RUN["ppo"]
cfg = PPOConfig(max_new_tokens=s["max_new_tokens"], max_prompt_length=s["max_prompt_length"],
                generation_dtype=s["generation_dtype"])
prompts = list(sample_prompts("test")["prompt"][:128])
lens = prompt_lengths(tok, prompts, cfg, policy).float()
print(f"# Evaluation sampling: prompts sorted by length, larger rollouts\n\nmachine: {machine_name()}; torch "
      f"{torch.__version__}, {torch.get_num_threads()} threads; sampling in "
      f"{resolve_generation_dtype(cfg.generation_dtype, torch.device('cpu'))}; load average at the start "
      f"{os.getloadavg()[0]:.1f}\n\nprompts: {len(prompts)}, {lens.mean():.1f} tokens on average, {int(lens.max())} at most\n")

def given_order(ps, n, size=32, seed=0):
    "The old sample_answers: rows in the order given, `size` answers per rollout."
    rows, lengths = [p for p in ps for _ in range(n)], []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for i in range(0, len(rows), size):
            lengths.append(rollout(policy, tok, rows[i:i + size], cfg)["response_mask"].sum(1).float())
    return torch.cat(lengths)

print("| answers | sampled as | wall s | ms per answer | mean answer length (tokens) |\n|---|---|---|---|---|")
for ps, n in ((prompts, 1), (prompts[:16], 16)):
    runs = [("given order, 32 per rollout (before)", lambda: given_order(ps, n))]
    runs += [(f"shortest first, {b} per rollout", lambda b=b: sample_answers(policy, tok, ps, cfg, n=n, batch_size=b,
                                                                              seed=0)["length"]) for b in (64, 128)]
    for name, fn in runs:
        t0 = time.perf_counter(); length = fn(); dt = time.perf_counter() - t0
        print(f"| {len(ps)} prompts x {n} | {name} | {dt:.1f} | {1000 * dt / len(length):.0f} | {length.mean():.1f} |", flush=True)
print(f"\nload average at the end {os.getloadavg()[0]:.1f}. One run each; the draws differ between rows (a different "
      "order draws different tokens), so the answer lengths, which set how long decoding runs, differ too.")

#!/usr/bin/env python
"""How a token is drawn (`PPOConfig.sampler`, chapter 6): 'inverse_cdf' (one uniform per row, the default) against
'multinomial' (`torch.multinomial`, HF generate's draws) on the real model: SmolLM2-135M-Instruct, sampling as the
real run does (`REAL_RUN["ppo"]`, bf16 where native), the torch threads `make demo` uses. Each repeat times, for both
samplers in alternating order from the same seed: a PPO rollout (8 training prompts) and an evaluation batch as the
best-of-n evaluation samples it (`sample_answers`, 2 held-out prompts x 16 answers). Both samplers draw from the same
distribution, so answer lengths differ only by chance; the table gives seconds per answer token too.

    .venv/bin/python bench/sampler.py > bench/sampler.md     # about 4 minutes here
"""
import os, statistics, sys, time
import torch
from open_chatgpt.data import get_tokenizer, sample_prompts
from open_chatgpt.evaluation import sample_answers
from open_chatgpt.pipeline import REAL_RUN
from open_chatgpt.plumbing import machine_name
from open_chatgpt.ppo import PPOConfig, resolve_generation_dtype, rollout
from open_chatgpt.sft import load_policy

REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 6
load0 = os.getloadavg()[0]
tok = get_tokenizer("smollm2-135m-instruct")
policy = load_policy("smollm2-135m-instruct", tokenizer=tok).eval()
base = {k: v for k, v in REAL_RUN["ppo"].items() if k not in ("total_steps", "save_every", "sampler")}
cfgs = {s: PPOConfig(**base, sampler=s) for s in ("multinomial", "inverse_cdf")}
train, test = list(sample_prompts("train")["prompt"]), list(sample_prompts("test")["prompt"])
rows = {s: dict(rollout=[], rollout_tokens=[], eval=[], eval_tokens=[], ended=[]) for s in cfgs}
for r in range(REPEATS):
    for s in (("multinomial", "inverse_cdf") if r % 2 == 0 else ("inverse_cdf", "multinomial")):
        torch.manual_seed(r); t = time.perf_counter()
        b = rollout(policy, tok, train[8 * r:8 * r + 8], cfgs[s])
        rows[s]["rollout"].append(time.perf_counter() - t); rows[s]["rollout_tokens"].append(int(b["response_mask"].sum()))
        t = time.perf_counter()
        a = sample_answers(policy, tok, test[2 * r:2 * r + 2], cfgs[s], n=16, seed=r)
        rows[s]["eval"].append(time.perf_counter() - t); rows[s]["eval_tokens"].append(int(a["length"].sum()))
        rows[s]["ended"].append(float(a["has_eos"].float().mean()))
        print(f"repeat {r} {s}: rollout {rows[s]['rollout'][-1]:.1f} s, eval {rows[s]['eval'][-1]:.1f} s", file=sys.stderr)
med, tot = statistics.median, lambda s, k: sum(rows[s][k])
print("# Drawing tokens: inverse CDF against torch.multinomial (`bench/sampler.py`)\n")
print(f"Machine: {machine_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; sampling in "
      f"{resolve_generation_dtype(cfgs['inverse_cdf'].generation_dtype, 'cpu')} (`REAL_RUN[\"ppo\"]`, up to "
      f"{cfgs['inverse_cdf'].max_new_tokens} new tokens); load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} "
      f"at the end. Model: SmolLM2-135M-Instruct; {REPEATS} repeats, the two samplers alternating, the same seed and "
      f"prompts for both in each repeat; wall seconds.\n")
print("| | multinomial | inverse CDF | inverse CDF / multinomial |\n|---|---|---|---|")
for k, n, what in (("rollout", "rollout_tokens", "PPO rollout, 8 prompts"), ("eval", "eval_tokens", "evaluation batch, 2 prompts x 16 answers")):
    a, c = med(rows["multinomial"][k]), med(rows["inverse_cdf"][k])
    print(f"| {what}: s (median) | {a:.2f} | {c:.2f} | **{c / a:.2f}** |")
    a, c = tot("multinomial", k) / tot("multinomial", n) * 1e3, tot("inverse_cdf", k) / tot("inverse_cdf", n) * 1e3
    print(f"| {what}: ms per answer token (all repeats) | {a:.1f} | {c:.1f} | {c / a:.2f} |")
for k, what in (("rollout_tokens", "rollout: answer tokens (all repeats)"), ("eval_tokens", "evaluation: answer tokens (all repeats)")):
    print(f"| {what} | {tot('multinomial', k)} | {tot('inverse_cdf', k)} | |")
print(f"| evaluation: answers that end (mean) | {statistics.mean(rows['multinomial']['ended']):.2f} | "
      f"{statistics.mean(rows['inverse_cdf']['ended']):.2f} | |")
print(f"\nEach repeat's seconds: " + "; ".join(f"{s}: rollout {', '.join(f'{x:.1f}' for x in rows[s]['rollout'])}, "
      f"eval {', '.join(f'{x:.1f}' for x in rows[s]['eval'])}" for s in rows) + ".")

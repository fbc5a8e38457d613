#!/usr/bin/env python
"""What the evaluation's KL estimate costs on the real model (chapter 7's `answer_kl`): SmolLM2-135M-Instruct with
REAL_RUN's LoRA, 32 held-out prompts, up to 64 new tokens, one torch thread, CPU seconds:
  sampling (rollout, the sampler's log-probs kept), the two batched forward passes the estimate used to take, the
  reference's forward batched, and answer_kl as it runs now (the reference one row per pass); the largest difference between
  the sampler's log-probs and a forward pass's.

    .venv/bin/python bench/eval_kl_cost.py      # about 4 minutes here
"""
import os, time
import torch
from open_chatgpt.data import get_tokenizer, sample_prompts
from open_chatgpt.evaluation import answer_kl
from open_chatgpt.pipeline import REAL_RUN
from open_chatgpt.plumbing import machine_name
from open_chatgpt.ppo import PPOConfig, forward_logprobs_values, make_ppo_models, rollout
from open_chatgpt.sft import load_policy

torch.set_num_threads(1)
print(f"machine: {machine_name()}, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, 1 thread")
tok = get_tokenizer("smollm2-135m-instruct")
pv, ref = make_ppo_models(load_policy("smollm2-135m-instruct", tokenizer=tok, lora=REAL_RUN["lora"]), tok, shared_backbone=True)
policy, cfg = pv.policy, PPOConfig(max_new_tokens=64, max_prompt_length=192)
prompts = sample_prompts("test")["prompt"][:32]
clock = lambda: time.process_time()
torch.manual_seed(0)
t0 = clock(); b = rollout(policy, tok, prompts, cfg, return_logprobs=True); t_sample = clock() - t0
plain = {k: v for k, v in b.items() if k != "logprobs"}
ids, am, P = torch.cat([b["query"], b["response"]], 1), torch.cat([b["query_mask"], b["response_mask"]], 1), b["query"].shape[1]
print(f"{len(prompts)} answers, {int(b['response_mask'].sum())} response tokens; batch width {P} + {b['response'].shape[1]}")
t0 = clock(); old = answer_kl(policy, ref, plain, rows_per_pass=len(ids)); t_old = clock() - t0
with torch.no_grad():
    t0 = clock(); lp_fwd = forward_logprobs_values(policy, ids, am, P)[0]; t_pol = clock() - t0
    t0 = clock(); forward_logprobs_values(ref, ids, am, P); t_ref_batched = clock() - t0
t0 = clock(); new = answer_kl(policy, ref, b); t_new = clock() - t0
m = b["response_mask"].bool()
print(f"sampling (rollout): {t_sample:.1f} CPU s")
print(f"KL, as before (policy + reference forward, batched): {t_old:.1f} CPU s (the policy's alone {t_pol:.1f}, the reference's {t_ref_batched:.1f})")
print(f"KL, now (the sampler's log-probs, the reference one row per pass): {t_new:.1f} CPU s")
print(f"largest |sampler log-prob - forward log-prob| {float((b['logprobs'] - lp_fwd)[m].abs().max()):.2e}; "
      f"largest |KL now - KL before| per answer {float((new - old).abs().max()):.2e} (KL mean {float(old.mean()):.4f})")
print(f"load average at the end {os.getloadavg()[0]:.1f}")

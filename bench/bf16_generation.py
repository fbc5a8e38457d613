#!/usr/bin/env python
"""Sampling in bf16 (`generation_dtype`, chapter 6) against fp32 on the real model: SmolLM2-135M-Instruct with
REAL_RUN's LoRA, one torch thread, CPU seconds, the two precisions alternating in each repeat (same seed, same prompts):
  - the matmul peak of each precision (1024^3);
  - a PPO rollout as the real run samples it (REAL_RUN["ppo"]: 8 training prompts, up to 64 new tokens);
  - an evaluation batch as the checkpoints sample it (`sample_answers` with the KL estimate: 32 held-out prompts);
  - how far the bf16 sampler is from the fp32 policy: KL(pi_bf16 || pi_fp32) per answer (the fp32 forward on the bf16
    samples), the mean |log-ratio| per token, and the KL estimate of a policy against itself (`answer_kl`; since this
    output was made, `answer_kl` scores a bf16 batch with two bf16 forwards, which read exactly 0 there).

    .venv/bin/python bench/bf16_generation.py > bench/bf16-generation.md     # about 8 minutes here
"""
import os, statistics, sys, time
import torch
from open_chatgpt.data import get_tokenizer, sample_prompts
from open_chatgpt.evaluation import answer_kl, sample_answers
from open_chatgpt.pipeline import REAL_RUN
from open_chatgpt.plumbing import machine_name
from open_chatgpt.ppo import PPOConfig, forward_logprobs_values, make_ppo_models, native_bf16, rollout
from open_chatgpt.sft import load_policy

torch.set_num_threads(1)
REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
clock = time.process_time

def peak(dtype, n=1024, k=10):
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b; t = time.perf_counter()
    for _ in range(k): a @ b
    return 2 * n ** 3 * k / (time.perf_counter() - t) / 1e9

load0 = os.getloadavg()[0]
tok = get_tokenizer("smollm2-135m-instruct")
pv, ref = make_ppo_models(load_policy("smollm2-135m-instruct", tokenizer=tok, lora=REAL_RUN["lora"]), tok, shared_backbone=True)
policy = pv.policy.eval()
base = {k: v for k, v in REAL_RUN["ppo"].items() if k not in ("total_steps", "save_every", "generation_dtype")}
cfgs = {d: PPOConfig(**base, generation_dtype=d) for d in ("float32", "bfloat16")}
train, test = list(sample_prompts("train")["prompt"][:8 * REPEATS]), list(sample_prompts("test")["prompt"][:32])
rows = {d: dict(rollout=[], rollout_tokens=[], eval=[], eval_tokens=[], eval_kl=[], ended=[]) for d in cfgs}
for r in range(REPEATS):
    for d in (("float32", "bfloat16") if r % 2 == 0 else ("bfloat16", "float32")):
        torch.manual_seed(r); t = clock()
        b = rollout(policy, tok, train[8 * r:8 * r + 8], cfgs[d])
        rows[d]["rollout"].append(clock() - t); rows[d]["rollout_tokens"].append(int(b["response_mask"].sum()))
        t = clock()
        a = sample_answers(policy, tok, test, cfgs[d], ref_policy=ref, seed=r)
        rows[d]["eval"].append(clock() - t); rows[d]["eval_tokens"].append(int(a["length"].sum()))
        rows[d]["eval_kl"].append(float(a["kl"].mean())); rows[d]["ended"].append(float(a["has_eos"].float().mean()))
        print(f"repeat {r} {d}: rollout {rows[d]['rollout'][-1]:.1f} CPU s, eval {rows[d]['eval'][-1]:.1f} CPU s", file=sys.stderr)

torch.manual_seed(0)                                    # the distance between the bf16 sampler and the fp32 policy
b = rollout(policy, tok, test, cfgs["bfloat16"], return_logprobs=True)
ids, am = torch.cat([b["query"], b["response"]], 1), torch.cat([b["query_mask"], b["response_mask"]], 1)
m, P = b["response_mask"].bool(), b["query"].shape[1]
with torch.no_grad(): lp32 = forward_logprobs_values(policy, ids, am, P)[0]
kl_mismatch = torch.where(m, b["logprobs"] - lp32, 0.0).sum(1)
self_kl = answer_kl(policy, policy, b)
med = lambda x: statistics.median(x)
print(f"# Sampling in bf16 against fp32 (`bench/bf16_generation.py`)\n")
print(f"Machine: {machine_name()}, one torch thread, torch {torch.__version__}; native bf16: {native_bf16('cpu')}; "
      f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (a load above 1 means other "
      f"processes shared the {os.cpu_count()} cores; CPU seconds count this process's work only). Model: SmolLM2-135M-Instruct + "
      f"REAL_RUN's LoRA (untrained adapters); settings of `REAL_RUN[\"ppo\"]`; medians of {REPEATS} repeats, the two "
      f"precisions alternating, the same seed and prompts for both in each repeat.\n")
print(f"Matmul peak (1024^3): fp32 {peak(torch.float32):.0f} GFLOP/s, bf16 {peak(torch.bfloat16):.0f} GFLOP/s.\n")
print("| | fp32 | bf16 | bf16 / fp32 |\n|---|---|---|---|")
for k, what in (("rollout", "PPO rollout, 8 training prompts (CPU s)"),
                ("eval", "evaluation batch, 32 held-out prompts with the KL estimate (CPU s)")):
    a, c = med(rows["float32"][k]), med(rows["bfloat16"][k])
    print(f"| {what} | {a:.1f} | {c:.1f} | **{c / a:.2f}** |")
for k, what in (("rollout_tokens", "rollout: response tokens"), ("eval_tokens", "evaluation: response tokens"),
                ("ended", "evaluation: answers that end"), ("eval_kl", "evaluation: KL to the reference (nats)")):
    a, c = med(rows["float32"][k]), med(rows["bfloat16"][k])
    print(f"| {what} | {a:.3g} | {c:.3g} | {c / a if a else float('nan'):.2f} |")
print(f"\nThe bf16 sampler against the fp32 policy, 32 held-out answers of {float(m.sum(1).float().mean()):.0f} tokens: "
      f"KL(pi_bf16 || pi_fp32) {float(kl_mismatch.mean()):.3f} nats per answer (the fp32 forward on the bf16 samples), "
      f"mean |log-ratio| {float((b['logprobs'] - lp32)[m].abs().mean()):.4f} per token, largest "
      f"{float((b['logprobs'] - lp32)[m].abs().max()):.3f}; `answer_kl` of the policy against itself (both in bf16): "
      f"{float(self_kl.mean()):+.3f} nats per answer (an fp32 reference would read the first number).")
print(f"\nEach repeat's CPU seconds: " + "; ".join(f"{d}: rollout {', '.join(f'{x:.1f}' for x in rows[d]['rollout'])}, "
      f"evaluation {', '.join(f'{x:.1f}' for x in rows[d]['eval'])}" for d in rows) + ".")

#!/usr/bin/env python
"""DPO steps under bf16 autocast on a CPU (`DPOConfig.cpu_bf16`, chapter 8's Appendix) against float32, on the real
model: the untouched SmolLM2-135M-Instruct (not the run's SFT model) with REAL_RUN's LoRA (the reference: the same
weights with the adapters off), REAL_RUN's DPO batch size and max_length (4 comparisons, 8 sequences of up to 192
tokens; the raw sample pairs in the seed's order, without the run's filtering), the torch threads `make demo` uses.
For each of REPEATS batches the two precisions alternate on the same batch from the same weights: wall seconds of the forward passes (policy and reference) and the backward, the loss, and how close the
bf16 gradient is to the float32 one. The adapters are first given one float32 step, so that the policy differs from
its reference (at pi = pi_ref both precisions give exactly log 2).

    .venv/bin/python bench/cpu_bf16_dpo.py > bench/cpu-bf16-dpo.md     # about 2 minutes here
"""
import os, statistics, sys, time
import torch
from open_chatgpt.data import get_tokenizer, load_preferences
from open_chatgpt.dpo import DPOCollator, DPOConfig, dpo_autocast, get_batch_loss_metrics, make_dpo_models
from open_chatgpt.models import prepare_tokenizer
from open_chatgpt.pipeline import REAL_RUN
from open_chatgpt.plumbing import machine_name
from open_chatgpt.sft import add_lora, load_policy, make_optimizer, micro_batch_indices, native_bf16

REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
load0 = os.getloadavg()[0]
tok = get_tokenizer("smollm2-135m-instruct")
torch.manual_seed(0)
policy, ref = make_dpo_models(add_lora(load_policy("smollm2-135m-instruct", tokenizer=tok), REAL_RUN["lora"]), tok)
cfgs = {p: DPOConfig(**{**REAL_RUN["dpo"], "cpu_bf16": p == "bfloat16"}) for p in ("float32", "bfloat16")}
c = cfgs["float32"]
pairs, collate = load_preferences("sample", "train"), DPOCollator(prepare_tokenizer(tok), c.max_length)
batch = lambda k: collate([pairs[i] for i in micro_batch_indices(k, len(pairs), c.batch_size, c.seed)])
opt = make_optimizer(policy, DPOConfig(learning_rate=c.learning_rate))
loss, _ = get_batch_loss_metrics(policy, ref, batch(0), c.beta); loss.backward(); opt.step(); opt.zero_grad()
rows, cos, rel = {p: dict(wall=[], loss=[]) for p in cfgs}, [], []
for step in range(1, REPEATS + 1):
    b, grads = batch(step), {}
    for p in (("float32", "bfloat16") if step % 2 else ("bfloat16", "float32")):
        t = time.perf_counter()
        with dpo_autocast(policy, cfgs[p]): loss, _ = get_batch_loss_metrics(policy, ref, b, c.beta)
        loss.backward()
        rows[p]["wall"].append(time.perf_counter() - t); rows[p]["loss"].append(loss.item())
        grads[p] = torch.cat([q.grad.flatten() for q in policy.parameters() if q.requires_grad])
        policy.zero_grad(set_to_none=True)
        print(f"step {step} {p}: {rows[p]['wall'][-1]:.1f} s, loss {loss.item():.4f}", file=sys.stderr)
    g32, g16 = grads["float32"], grads["bfloat16"]
    cos.append(float(torch.nn.functional.cosine_similarity(g32, g16, 0))); rel.append(float((g16 - g32).norm() / g32.norm()))
med = statistics.median
print("# DPO steps in bf16 autocast against float32 on a CPU (`bench/cpu_bf16_dpo.py`)\n")
print(f"Machine: {machine_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; native bf16: "
      f"{native_bf16('cpu')}; load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end. Model: "
      f"the untouched SmolLM2-135M-Instruct + REAL_RUN's LoRA after one float32 step; REAL_RUN's DPO batch size and "
      f"max_length ({c.batch_size} comparisons of up to {c.max_length} tokens; the raw sample pairs in the seed's order, "
      f"not the run's filtered ones); {REPEATS} batches, the two precisions alternating on each batch from the same "
      f"weights (policy and reference forwards, and the backward).\n")
a, b = med(rows["float32"]["wall"]), med(rows["bfloat16"]["wall"])
print("| | float32 | bf16 autocast | bf16 / float32 |\n|---|---|---|---|")
print(f"| forwards + backward, wall s (median) | {a:.2f} | {b:.2f} | **{b / a:.2f}** |")
print(f"\nLoss per step, float32 / bf16: " + "; ".join(f"{x:.4f} / {y:.4f}" for x, y in zip(rows['float32']['loss'], rows['bfloat16']['loss']))
      + ". LoRA gradient, bf16 against float32: cosine " + ", ".join(f"{x:.4f}" for x in cos)
      + "; |g_bf16 - g_fp32| / |g_fp32| " + ", ".join(f"{x:.3f}" for x in rel) + ".")
print(f"\nEach step's wall seconds: " + "; ".join(f"{p}: {', '.join(f'{x:.2f}' for x in rows[p]['wall'])}" for p in rows) + ".")

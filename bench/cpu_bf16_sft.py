#!/usr/bin/env python
"""SFT steps under bf16 autocast on a CPU (`SFTConfig.cpu_bf16`, chapter 3's Appendix B) against float32, on the real
model: SmolLM2-135M-Instruct with REAL_RUN's LoRA and SFT batch (8 demonstrations of up to 256 tokens), the torch
threads `make demo` uses (all cores). For each of the first REPEATS steps of the real run's data order, the two
precisions alternate on the same batch from the same weights: wall and CPU seconds of forward + backward, the loss,
and how close the bf16 gradient is to the float32 one (cosine and relative norm of the difference).

    .venv/bin/python bench/cpu_bf16_sft.py > bench/cpu-bf16-sft.md     # about 6 minutes here
"""
import os, statistics, sys, time
import torch
from open_chatgpt.data import get_tokenizer, load_sft
from open_chatgpt.models import prepare_tokenizer
from open_chatgpt.pipeline import REAL_RUN
from open_chatgpt.plumbing import machine_name
from open_chatgpt.sft import (SFTCollator, SFTConfig, accumulate_gradients, add_lora, load_policy, native_bf16,
                              sft_datasets, step_batches)

REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
load0 = os.getloadavg()[0]
tok = get_tokenizer("smollm2-135m-instruct")
torch.manual_seed(0)
policy = add_lora(load_policy("smollm2-135m-instruct", tokenizer=tok), REAL_RUN["lora"]).train()
cfg = SFTConfig(**REAL_RUN["sft"])
train, _ = sft_datasets(load_sft("sample", "train"), None, tok, cfg)
collate, cpu = SFTCollator(prepare_tokenizer(tok), cfg.max_length), torch.device("cpu")
rows = {p: dict(wall=[], cpu=[], loss=[]) for p in ("float32", "bfloat16")}
cos, rel = [], []
for step in range(REPEATS):
    batches, grads = step_batches(train, collate, step, cfg), {}
    for p in (("float32", "bfloat16") if step % 2 == 0 else ("bfloat16", "float32")):
        t, c = time.perf_counter(), time.process_time()
        loss, n = accumulate_gradients(policy, batches, cpu, torch.bfloat16 if p == "bfloat16" else None)
        rows[p]["wall"].append(time.perf_counter() - t); rows[p]["cpu"].append(time.process_time() - c)
        rows[p]["loss"].append(loss)
        grads[p] = torch.cat([q.grad.flatten() for q in policy.parameters() if q.requires_grad])
        policy.zero_grad(set_to_none=True)
        print(f"step {step} {p}: {rows[p]['wall'][-1]:.1f} s, loss {loss:.4f}", file=sys.stderr)
    g32, g16 = grads["float32"], grads["bfloat16"]
    cos.append(float(torch.nn.functional.cosine_similarity(g32, g16, 0))); rel.append(float((g16 - g32).norm() / g32.norm()))
med = statistics.median
print("# SFT steps in bf16 autocast against float32 on a CPU (`bench/cpu_bf16_sft.py`)\n")
print(f"Machine: {machine_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; native bf16: "
      f"{native_bf16('cpu')}; load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end. Model: "
      f"SmolLM2-135M-Instruct + REAL_RUN's LoRA (untrained adapters); REAL_RUN's SFT batch ({cfg.batch_size} demonstrations "
      f"of up to {cfg.max_length} tokens); the first {REPEATS} steps of the real run's data order, the two precisions "
      f"alternating on each step's batch from the same weights (forward and backward only; the optimiser step is the "
      f"same AdamW over ~1M LoRA weights in both).\n")
print("| | float32 | bf16 autocast | bf16 / float32 |\n|---|---|---|---|")
for k, what in (("wall", "forward + backward, wall s (median)"), ("cpu", "forward + backward, CPU s (median)")):
    a, b = med(rows["float32"][k]), med(rows["bfloat16"][k])
    print(f"| {what} | {a:.2f} | {b:.2f} | **{b / a:.2f}** |")
gap = [abs(b - a) / a for a, b in zip(rows["float32"]["loss"], rows["bfloat16"]["loss"])]
print(f"\nLoss per step, float32 / bf16: " + "; ".join(f"{a:.4f} / {b:.4f}" for a, b in zip(rows['float32']['loss'], rows['bfloat16']['loss']))
      + f" (largest relative gap {max(gap):.2%}). LoRA gradient, bf16 against float32: cosine "
      + ", ".join(f"{c:.4f}" for c in cos) + "; |g_bf16 - g_fp32| / |g_fp32| " + ", ".join(f"{r:.3f}" for r in rel) + ".")
print(f"\nEach step's wall seconds: " + "; ".join(f"{p}: {', '.join(f'{x:.2f}' for x in rows[p]['wall'])}" for p in rows) + ".")

# Part 2: the real run's whole SFT (REAL_RUN["sft"]: 16 steps) in each precision from the same weights and data
# order, then the held-out loss of both results in float32 on the same 64 test demonstrations.
from open_chatgpt.sft import evaluate_sft, train_sft
test = load_sft("sample", "test").select(range(64))
loss = {}
for p in ("float32", "bfloat16"):
    torch.manual_seed(0)
    model = add_lora(load_policy("smollm2-135m-instruct", tokenizer=tok), REAL_RUN["lora"])
    t = time.perf_counter()
    train_sft(model, tok, load_sft("sample", "train"), None, SFTConfig(**{**REAL_RUN["sft"], "cpu_bf16": p == "bfloat16"}),
              progress=False)
    loss[p] = (evaluate_sft(model.eval(), tok, test, cfg.max_length, cfg.batch_size)["loss"], time.perf_counter() - t)
    print(f"whole SFT {p}: held-out loss {loss[p][0]:.4f} in {loss[p][1]:.0f} s", file=sys.stderr)
torch.manual_seed(0)
start = evaluate_sft(add_lora(load_policy("smollm2-135m-instruct", tokenizer=tok), REAL_RUN["lora"]).eval(), tok, test,
                     cfg.max_length, cfg.batch_size)["loss"]
print(f"\nThe real run's whole SFT ({cfg.max_steps} steps) in each precision, from the same weights and data order, "
      f"evaluated in float32 on the same 64 held-out demonstrations: held-out loss {start:.4f} before SFT, "
      f"{loss['float32'][0]:.4f} after float32 steps ({loss['float32'][1]:.0f} s with its evaluation), "
      f"{loss['bfloat16'][0]:.4f} after bf16 steps ({loss['bfloat16'][1]:.0f} s).")

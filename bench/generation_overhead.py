#!/usr/bin/env python
"""Per-token overhead of our sampler against HF `generate`, with the arithmetic taken away: SmolLM2's shape (30
layers, GQA 4/2 heads here, 49152-token vocabulary, LoRA r=16 on q/v/o) at width 64, so that a decoding step costs
only what Python and the op dispatch cost. On a CPU that is Python and dispatch alone; with --device cuda it includes
the kernel launches and device syncs of each loop, which is what a 135M model's decoding step costs on a GPU. Run in bench/.venv (transformers 4.45, as the benchmark):

    bench/.venv/bin/python bench/generation_overhead.py [--device cuda] [--out bench/generation-overhead.md]
"""
import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="")
    a = p.parse_args()
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from open_chatgpt.ppo import sample_tokens
    if a.threads: torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=30,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=2048)
    torch.manual_seed(0)
    m = get_peft_model(LlamaForCausalLM(cfg).eval(),
                       LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"]))
    m.to(a.device)
    B, P, N = 8, 128, 48                       # the benchmark's batch, prompt and response lengths
    q = torch.randint(5, 49152, (B, P), device=a.device)
    qm = torch.ones(B, P, dtype=torch.long, device=a.device); qm[:4, :20] = 0   # half the rows left-padded
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    fns = {"ours (sample_tokens)": lambda: sample_tokens(m, q, qm, N, eos_token_id=2, pad_token_id=2),
           "HF generate": lambda: m.generate(input_ids=q, attention_mask=qm, max_new_tokens=N, min_new_tokens=1,
                                             do_sample=True, top_k=0, top_p=1.0, temperature=1.0, pad_token_id=2,
                                             eos_token_id=2)}
    times = {k: [] for k in fns}
    for f in fns.values(): f()                 # warm-up
    for r in range(a.repeats):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            sync(); t = time.perf_counter(); fns[k](); sync(); times[k].append((time.perf_counter() - t) / N * 1e3)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or "CPU"
    if not a.device.startswith("cuda"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"): dev = line.split(":", 1)[1].strip(); break
    lines = ["# Generation overhead per token: our sampler vs HF generate", "",
             f"Device: {dev} ({a.device}, {torch.get_num_threads()} torch thread(s), load {os.getloadavg()[0]:.2f}); "
             f"torch {torch.__version__}, transformers {transformers.__version__}. SmolLM2's 30 layers at width 64 + "
             f"LoRA, batch {B}, prompts {P} tokens (half left-padded), {N} new tokens sampled; median of {a.repeats} "
             "runs, order alternating.", "", "| sampler | ms per token (median) | all runs |", "|---|---|---|"]
    lines += [f"| {k} | {statistics.median(v):.2f} | {', '.join(f'{x:.1f}' for x in v)} |" for k, v in times.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out: Path(a.out).write_text(text)


if __name__ == "__main__":
    sys.exit(main())

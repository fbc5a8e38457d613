#!/usr/bin/env python
"""Per-token cost of our sampler against HF `generate`, on the same LoRA model, and where a gap comes from.
--shape tiny (the default): SmolLM2's shape (30 layers, GQA, 49152-token vocabulary, LoRA r=16 on q/v/o) at width 64,
so that a decoding step costs only what Python and the op dispatch cost. --shape real: SmolLM2-135M's own widths
(random weights). With --device cuda a step also pays kernel launches and device syncs, which is what a 135M model's
decoding step costs on a GPU. Besides the two samplers it times variants of our loop (one device sync per token
instead of two; a transformers Cache object from the prefill on instead of the legacy tuples that transformers 4.x
returns and converts at every step), and --profile writes torch.profiler tables of one run of each sampler.
Run in bench/.venv (transformers 4.45, as the benchmark):

    bench/.venv/bin/python bench/generation_overhead.py [--device cuda] [--shape real] [--profile DIR] [--out FILE]
"""
import argparse
import collections
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

SHAPES = {"tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),
          "real": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3)}


@torch.no_grad()
def ours_variant(model, query, query_mask, max_new_tokens, eos_token_id, pad_token_id, one_sync=False, cache_obj=False):
    "A copy of `sample_tokens`'s loop (do_sample, temperature 1) with the two changes under test as switches."
    from open_chatgpt.models import accepts_position_ids, model_inputs, position_ids_from_mask
    from open_chatgpt.ppo import _select_rows, cache_kw, logits_to_keep_kw, sample_next
    ck = cache_kw(model)
    extra = {}
    if cache_obj:
        from transformers import DynamicCache
        extra[ck] = DynamicCache()
    o = model(**model_inputs(model, query, query_mask), use_cache=True, **logits_to_keep_kw(model, 1), **extra)
    cache, logits = o[ck], o.logits[:, -1]
    B = logits.shape[0]
    out = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=query.device)
    rows, am = torch.arange(B, device=query.device), query_mask
    pos, with_pos = position_ids_from_mask(query_mask)[:, -1], accepts_position_ids(model)
    for t in range(max_new_tokens):
        if t < 1: logits[:, eos_token_id] = -math.inf
        tok = sample_next(logits, sampler="multinomial")   # HF generate's draw, as the comparison needs
        out[rows, t] = tok
        live = tok != eos_token_id
        if one_sync:
            n = int(live.sum())                                  # one device sync per token
            if t == max_new_tokens - 1 or n == 0: break
            if n < len(rows):
                keep = live.nonzero().squeeze(1)
                rows, tok, am, pos, cache = rows[keep], tok[keep], am[keep], pos[keep], _select_rows(cache, keep)
        else:
            if t == max_new_tokens - 1 or not live.any(): break
            if not live.all():
                keep = live.nonzero().squeeze(1)
                rows, tok, am, pos, cache = rows[keep], tok[keep], am[keep], pos[keep], _select_rows(cache, keep)
        am, pos = torch.cat([am, am.new_ones(len(rows), 1)], 1), pos + 1
        kw = {"input_ids": tok[:, None], "attention_mask": am, ck: cache, "use_cache": True}
        if with_pos: kw["position_ids"] = pos[:, None]
        o = model(**kw)
        cache, logits = o[ck], o.logits[:, -1]
    return out


def profile_table(fn, sync, n_tokens, device) -> str:
    "One run of `fn` under torch.profiler: the top ops by self CPU time, and the launches and syncs per token."
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as pr:
        fn(); sync()
    counts = collections.Counter(e.name for e in pr.events())
    counts["kernel launches (all kinds)"] = sum(v for k, v in counts.items() if "LaunchKernel" in k)
    keys = ("kernel launches (all kinds)", "cudaLaunchKernel", "cudaStreamSynchronize", "cudaMemcpyAsync", "cudaDeviceSynchronize", "aten::item",
            "aten::nonzero", "aten::cat", "aten::to", "aten::copy_")
    per = ", ".join(f"{k} {counts.get(k, 0) / n_tokens:.1f}" for k in keys)
    return (f"per token (the run's totals, prefill included, / {n_tokens}): {per}\n\n```\n" + pr.key_averages().table(sort_by="self_cpu_time_total", row_limit=25,
                                                                     max_name_column_width=45) + "\n```\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", default="tiny", choices=list(SHAPES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", action="store_true", help="also time the variants of our loop")
    p.add_argument("--profile", default="", help="folder: write a profiler table of one run of each sampler")
    p.add_argument("--out", default="")
    a = p.parse_args()
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from open_chatgpt.ppo import sample_tokens
    if a.threads: torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    cfg = LlamaConfig(vocab_size=49152, num_hidden_layers=30, tie_word_embeddings=True, max_position_embeddings=2048,
                      **SHAPES[a.shape])
    torch.manual_seed(0)
    m = get_peft_model(LlamaForCausalLM(cfg).eval(),
                       LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"]))
    m.to(a.device)
    B, P, N = 8, 128, 48                       # the benchmark's batch, prompt and response lengths
    q = torch.randint(5, 49152, (B, P), device=a.device)
    qm = torch.ones(B, P, dtype=torch.long, device=a.device); qm[:4, :20] = 0   # half the rows left-padded
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    hf = dict(input_ids=q, attention_mask=qm, min_new_tokens=1, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
              pad_token_id=2, eos_token_id=2)
    fns = {"ours (sample_tokens)": lambda n=N: sample_tokens(m, q, qm, n, eos_token_id=2, pad_token_id=2, sampler="multinomial"),
           "HF generate": lambda n=N: m.generate(max_new_tokens=n, **hf)}
    if a.variants:
        fns["ours, one sync per token"] = lambda n=N: ours_variant(m, q, qm, n, 2, 2, one_sync=True)
        fns["ours, Cache object from the prefill"] = lambda n=N: ours_variant(m, q, qm, n, 2, 2, cache_obj=True)
        fns["ours, both"] = lambda n=N: ours_variant(m, q, qm, n, 2, 2, one_sync=True, cache_obj=True)
    times = {k: [] for k in fns}
    for f in fns.values(): f()                 # warm-up
    for r in range(a.repeats):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            sync(); t = time.perf_counter(); fns[k](); sync(); times[k].append((time.perf_counter() - t) / N * 1e3)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or "CPU"
    if not a.device.startswith("cuda"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"): dev = line.split(":", 1)[1].strip(); break
    width = cfg.hidden_size
    lines = ["# Generation cost per token: our sampler vs HF generate", "",
             f"Device: {dev} ({a.device}, {torch.get_num_threads()} torch thread(s), load {os.getloadavg()[0]:.2f}); "
             f"torch {torch.__version__}, transformers {transformers.__version__}. SmolLM2's 30 layers at width {width} "
             f"({a.shape}) + LoRA, random weights, fp32, batch {B}, prompts {P} tokens (half left-padded), {N} new tokens "
             f"sampled (random weights: a row ends early only if it samples the EOS id by chance); median of {a.repeats} "
             "runs, order alternating.", "",
             "| sampler | ms per token (median) | all runs |", "|---|---|---|"]
    lines += [f"| {k} | {statistics.median(v):.2f} | {', '.join(f'{x:.1f}' for x in v)} |" for k, v in times.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out: Path(a.out).write_text(text)
    if a.profile:
        d = Path(a.profile); d.mkdir(parents=True, exist_ok=True)
        for tag, (k, f) in zip(("ours", "hf"), list(fns.items())[:2]):
            (d / f"generation-profile-{tag}.md").write_text(f"# {k}: {dev}, width {width}, 16 tokens\n\n"
                                                             + profile_table(lambda: f(16), sync, 16, a.device))
            print(f"profile of {k} -> {d / f'generation-profile-{tag}.md'}")


if __name__ == "__main__":
    sys.exit(main())

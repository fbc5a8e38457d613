#!/usr/bin/env python
"""Profile our real-model PPO step (SmolLM2-135M-Instruct + LoRA, the settings of `bench/run.py --real`) and measure
candidate speed-ups, without changing the library: each candidate is a context manager that patches one function.

    bench/.venv/bin/python bench/profile_real.py                 # torch.profiler: one step, top ops per phase
    bench/.venv/bin/python bench/profile_real.py --ab            # A/B timings of the candidates (alternating order)
    bench/.venv/bin/python bench/profile_real.py --ab --only logits_to_keep,flush_denormal --repeats 5

Phases: generation (`rollout`), scoring (`score`), old + ref log-probs and values (`batched_forward` inside
`ppo_step`, no grad), update (the rest of `ppo_step`: minibatch forwards with grad, backward, Adam, GAE, stats).
The baseline is run.py's `ppo-ours` worker as it is now, so on a CPU it trains in micro-batches of one row
(`--ppo-micro-batch-size`, default 1 there); the `whole_minibatch` candidate measures one padded pass per minibatch.
Runs in the project's venv too (transformers 5), or in bench/.venv (transformers 4.45, as the benchmark).
Writes bench/profile-real.md (--out to change; '' to skip).
"""
import argparse
import contextlib
import inspect
import math
import os
import statistics
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as R  # noqa: E402  (bench/run.py: sizes, model loading, table helpers)

PHASES = ("generation", "scoring", "old+ref", "update")

# ------------------------------------------------------------------------------------------------------------------
# set-up: the same models, prompts and config as run.py's `ppo-ours` worker
# ------------------------------------------------------------------------------------------------------------------

def build(a):
    import torch
    from open_chatgpt import ppo as P
    from open_chatgpt.ppo_core import AdaptiveKLController
    path = R.real_policy_dir(); tok = R._real_tokenizer(path); prompts = R._real_prompts(a)
    cfg = R._our_ppo_config(a)
    torch.manual_seed(0)
    ours, ref = R._ours_real_models(path, tok)
    opt = torch.optim.Adam([p for p in ours.parameters() if p.requires_grad], lr=cfg.learning_rate, eps=1e-5)
    kl_ctl = AdaptiveKLController(cfg.init_kl_coef, cfg.target, cfg.horizon)
    reward = lambda p, r, b: [R.toy_score(x[m.bool()]) for x, m in zip(b["response"], b["response_mask"])]
    return dict(P=P, tok=tok, prompts=prompts, cfg=cfg, ours=ours, ref=ref, opt=opt, kl_ctl=kl_ctl, reward=reward)

def clock() -> tuple:
    "(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the steadier measure of work."
    return time.perf_counter(), time.process_time()

def step(s, mark=contextlib.nullcontext) -> dict:
    """One PPO step of ours; `mark(name)` wraps each phase (a profiler label or nothing). Returns each phase's wall
    time (`generation`, ...) and CPU time (`cpu/generation`, ...)."""
    import torch
    P = s["P"]
    torch.manual_seed(0)
    nograd = [0.0, 0.0]
    orig = P.batched_forward
    def timed_bf(*args, **kw):
        c0 = clock()
        with mark("old+ref"): out = orig(*args, **kw)
        c1 = clock(); nograd[0] += c1[0] - c0[0]; nograd[1] += c1[1] - c0[1]
        return out
    P.batched_forward = timed_bf                       # ppo_step looks it up in the module at call time
    try:
        c0 = clock()
        with mark("generation"): batch = P.rollout(s["ours"], s["tok"], s["prompts"], s["cfg"])
        c1 = clock()
        with mark("scoring"): _, scores = P.score(s["reward"], batch, s["cfg"])
        c2 = clock()
        with mark("ppo_step"): stats = P.ppo_step(s["ours"], s["ref"], s["opt"], batch, scores, s["kl_ctl"], s["cfg"])
        c3 = clock()
    finally: P.batched_forward = orig
    out = dict(response_tokens=int(batch["response_mask"].sum()), prompt_tokens=int(batch["query_mask"].sum()),
               width=int(batch["query"].shape[1] + batch["response"].shape[1]), stats=stats)
    for i, pre in ((0, ""), (1, "cpu/")):
        out.update({pre + "generation": c1[i] - c0[i], pre + "scoring": c2[i] - c1[i], pre + "old+ref": nograd[i],
                    pre + "update": c3[i] - c2[i] - nograd[i], pre + "total": c3[i] - c0[i]})
    return out

# ------------------------------------------------------------------------------------------------------------------
# 1. torch.profiler: one step, self CPU time of each op attributed to its phase
# ------------------------------------------------------------------------------------------------------------------

def phase_of(ev) -> str:
    "The phase label of a profiler event: its nearest `phase:` ancestor ('ppo_step' outside old+ref is the update)."
    e = ev
    while e is not None:
        if e.name.startswith("phase:"):
            p = e.name[6:]
            return "update" if p == "ppo_step" else p
        e = e.cpu_parent
    return "other"

def profile(a, s, top: int) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile as tprofile, record_function
    step(s)                                                                       # warm-up
    mark = lambda name: record_function("phase:" + name)
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        t = step(s, mark)
    self_us = defaultdict(lambda: defaultdict(float)); calls = defaultdict(lambda: defaultdict(int))
    for ev in prof.events():
        if ev.name.startswith("phase:"): continue
        ph = phase_of(ev)
        self_us[ph][ev.name] += ev.self_cpu_time_total; calls[ph][ev.name] += 1
    lines = [f"One PPO step of ours under torch.profiler (the profiler adds overhead; phase times below are from the "
             f"profiled step): total {t['total']:.2f} s, {t['prompt_tokens']} prompt + {t['response_tokens']} response "
             f"tokens, padded width {t['width']}.", "",
             R.markdown_table(["phase", "wall (s)", "share", "self CPU of its ops (s)"],
                              [[ph, t[ph], f"{100 * t[ph] / t['total']:.0f}%", sum(self_us[ph].values()) / 1e6]
                               for ph in PHASES]), ""]
    for ph in PHASES:
        tot = sum(self_us[ph].values()) or 1.0
        rows = sorted(self_us[ph].items(), key=lambda kv: -kv[1])[:top]
        lines += [f"### {ph}: top {top} ops by self CPU time", "",
                  R.markdown_table(["op", "self CPU (s)", "share of phase", "calls"],
                                   [[n, us / 1e6, f"{100 * us / tot:.1f}%", calls[ph][n]] for n, us in rows]), ""]
    return "\n".join(lines)

# ------------------------------------------------------------------------------------------------------------------
# 2. candidate speed-ups, each a patch of one library function (the proposed change), timed A/B
# ------------------------------------------------------------------------------------------------------------------

def _logits_kw(model, n: int) -> dict:
    "The keyword that makes a causal LM compute logits for its last `n` positions only ({} if it has none)."
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    for k in ("logits_to_keep", "num_logits_to_keep"):      # transformers >= 4.50 / 4.45-4.49
        if k in params: return {k: n}
    return {}

def proposed_forward(keep_logits: bool = True, trim: bool = True, skip_temperature: bool = True):
    """`forward_logprobs_values` as proposed for ppo.py. `keep_logits`: the LM head runs only on the R + 1 positions
    whose log-probs are used (not on the prompt); `trim`: the minibatch's all-padding columns (left padding of the
    prompts, right padding of the responses) are cut before the forward and the outputs padded back with zeros (every
    consumer masks them); `skip_temperature`: no (batch, R, vocab) copy for a division by 1."""
    import torch.nn.functional as F
    from open_chatgpt import ppo as P
    from open_chatgpt.models import model_inputs
    from open_chatgpt.ppo_core import entropy_from_logits, logprobs_from_logits

    def forward_logprobs_values(model, input_ids, attention_mask, context_length, temperature=1.0, with_entropy=False):
        T = input_ids.shape[1]; R_full = T - context_length
        lo, hi = 0, T
        if trim:
            cols = attention_mask.bool().any(0)                                     # (T,) columns with a real token
            lo = min(int(cols.int().argmax()), context_length - 1)
            hi = max(T - int(cols.flip(0).int().argmax()), context_length + 1)
        ids, am, Pc = input_ids[:, lo:hi], attention_mask[:, lo:hi], context_length - lo
        Rc = ids.shape[1] - Pc
        lm = model.policy if isinstance(model, P.PolicyAndValue) else model
        kw = _logits_kw(lm, Rc + 1) if keep_logits else {}
        if isinstance(model, P.PolicyAndValue): logits, values = model(ids, am, **kw)
        else: logits, values = model(**model_inputs(model, ids, am), **kw).logits, None
        logits = logits[:, -(Rc + 1):-1].float()                                      # (batch, Rc, vocab)
        if not (skip_temperature and temperature == 1.0): logits = logits / temperature
        logprobs = logprobs_from_logits(logits, ids[:, Pc:])                           # (batch, Rc)
        values = values[:, Pc - 1:-1] if values is not None else None
        entropy = entropy_from_logits(logits) if with_entropy else None
        pad = lambda x: x if x is None or Rc == R_full else F.pad(x, (0, R_full - Rc))  # zeros past the last response
        return pad(logprobs), pad(values), pad(entropy)
    return forward_logprobs_values

def _pv_forward(self, input_ids, attention_mask, **kw):
    "PolicyAndValue.forward passing extra keywords (logits_to_keep) to the actor."
    from open_chatgpt.models import model_inputs
    out = self.policy(**model_inputs(self.policy, input_ids, attention_mask), output_hidden_states=self.shared, **kw)
    values = self.v_head(out.hidden_states[-1]).squeeze(-1) if self.shared else self.critic(input_ids, attention_mask)
    return out.logits, values.float()

def _prefill_one_logit(orig_sample):
    "sample_tokens whose prefill call computes only the last position's logits (what HF generate does)."
    def sample_tokens(model, query, query_mask, *args, **kw):
        kw1 = _logits_kw(model, 1)
        if not kw1: return orig_sample(model, query, query_mask, *args, **kw)
        calls, cls = [0], model.__class__
        class FirstCallKeepsOne(cls):                      # measurement device only: the proposal is a one-line change
            def __call__(self, *a_, **k_):
                calls[0] += 1
                return super().__call__(*a_, **(dict(k_, **kw1) if calls[0] == 1 else k_))
        model.__class__ = FirstCallKeepsOne
        try: return orig_sample(model, query, query_mask, *args, **kw)
        finally: model.__class__ = cls
    return sample_tokens

@contextlib.contextmanager
def patched(keep_logits=False, trim=False, skip_temperature=False, prefill=False):
    from open_chatgpt import ppo as P
    saved = P.forward_logprobs_values, P.PolicyAndValue.forward, P.sample_tokens
    P.forward_logprobs_values = proposed_forward(keep_logits, trim, skip_temperature)
    P.PolicyAndValue.forward = _pv_forward
    if prefill: P.sample_tokens = _prefill_one_logit(saved[2])
    try: yield
    finally: P.forward_logprobs_values, P.PolicyAndValue.forward, P.sample_tokens = saved

def logits_to_keep():
    "LM head only on the response positions (forward_logprobs_values) and on the last prompt position (prefill)."
    return patched(keep_logits=True, prefill=True)

def trim_padding():
    "Each minibatch's all-padding columns cut before its forward (old, ref and update forwards)."
    return patched(trim=True)

def proposed():
    "All of it: logits_to_keep + trim_padding + no division by temperature 1."
    return patched(keep_logits=True, trim=True, skip_temperature=True, prefill=True)

@contextlib.contextmanager
def ppo_config_override(**changes):
    "`rollout` and `ppo_step` run with these PPOConfig fields changed (the caller's config otherwise)."
    import dataclasses
    from open_chatgpt import ppo as P
    orig_rollout, orig_step = P.rollout, P.ppo_step
    def rollout(model, tok, prompts, config, *args, **kw):
        return orig_rollout(model, tok, prompts, dataclasses.replace(config, **changes), *args, **kw)
    def ppo_step(model, ref, opt, batch, scores, kl_ctl, config):
        return orig_step(model, ref, opt, batch, scores, kl_ctl, dataclasses.replace(config, **changes))
    P.rollout, P.ppo_step = rollout, ppo_step
    try: yield
    finally: P.rollout, P.ppo_step = orig_rollout, orig_step

def grad_checkpointing():
    """`PPOConfig(gradient_checkpointing=True)` (landed: `ppo.checkpointing`, HF non-reentrant checkpointing in the
    update's forwards with grad): each layer's activations are recomputed in the backward pass instead of kept, so the
    update's memory no longer grows with layers x tokens; costs one more forward."""
    return ppo_config_override(gradient_checkpointing=True)

def whole_minibatch():
    """`PPOConfig(micro_batch_size=0)`, the default: the update's forward and backward over the whole padded minibatch
    (the real mode runs ours with `micro_batch_size=1`, as the pipeline's real run)."""
    return ppo_config_override(micro_batch_size=0)

def bf16_sampling():
    """`PPOConfig(generation_dtype="bfloat16")`, what the pipeline's real run asks for ("auto") on a CPU with native
    bf16: the rollout's matmuls under bf16 autocast; old/ref log-probs, values and the update stay fp32."""
    return ppo_config_override(generation_dtype="bfloat16")

@contextlib.contextmanager
def proposed_ckpt():
    "`proposed` + `grad_checkpointing`: the memory-lean variant."
    with proposed(), grad_checkpointing(): yield

@contextlib.contextmanager
def flush_denormal():
    "torch.set_flush_denormal(True) for the step (denormal floats flushed to zero: no slow microcode path)."
    import torch
    torch.set_flush_denormal(True)
    try: yield
    finally: torch.set_flush_denormal(False)

@contextlib.contextmanager
def bf16_autocast():
    "torch.autocast('cpu', bfloat16) around the step (bf16 matmuls; useful only with AVX512-BF16/AMX)."
    import torch
    with torch.autocast("cpu", dtype=torch.bfloat16): yield

@contextlib.contextmanager
def no_old_entropy():
    "The no-grad old forward without the entropy (ppo_step asks for it for the `objective/entropy` log): zeros instead."
    import torch
    from open_chatgpt import ppo as P
    orig = P.forward_logprobs_values
    def fwd(model, input_ids, attention_mask, context_length, temperature=1.0, with_entropy=False):
        lp, v, _ = orig(model, input_ids, attention_mask, context_length, temperature, False)
        return lp, v, (torch.zeros_like(lp) if with_entropy else None)
    P.forward_logprobs_values = fwd
    try: yield
    finally: P.forward_logprobs_values = orig

CANDIDATES = {"flush_denormal": flush_denormal, "logits_to_keep": logits_to_keep, "trim_padding": trim_padding,
              "no_old_entropy": no_old_entropy, "proposed": proposed, "grad_checkpointing": grad_checkpointing,
              "whole_minibatch": whole_minibatch, "bf16_sampling": bf16_sampling,
              "proposed_ckpt": proposed_ckpt, "bf16_autocast": bf16_autocast}

def bf16_matmul_check(seconds: float = 1.0) -> tuple:
    "fp32 and bf16 GFLOP/s of a (512 x 576) @ (576 x 1536) matmul (SmolLM2's MLP shape) on this CPU, this thread count."
    import torch
    out = []
    for dt in (torch.float32, torch.bfloat16):
        x, w = torch.randn(512, 576, dtype=dt), torch.randn(576, 1536, dtype=dt)
        for _ in range(2): x @ w
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2 or n < 2: x @ w; n += 1
        out.append(2 * 512 * 576 * 1536 * n / (time.perf_counter() - t0) / 1e9)
    return tuple(out)

def has_bf16_kernels() -> bool:
    "Whether this CPU has native bf16 matmuls (AVX512-BF16 or AMX); without them torch emulates bf16, slowly."
    flags = ""
    with contextlib.suppress(OSError): flags = open("/proc/cpuinfo").read()
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))

def ab(a, s) -> str:
    """The baseline and every candidate in each round (order reversed every other round, one warm-up round);
    medians of `repeats` rounds per phase, and the peak RSS above each step's start."""
    import torch
    names = [n for n in CANDIDATES if n in a.only]
    lines = [f"A/B of candidate changes on our real PPO step: each round runs the baseline and every candidate once "
             f"(order reversed every other round), after one warm-up step; {a.repeats} round(s); medians.", ""]
    if "bf16_autocast" in names:
        f32, bf = bf16_matmul_check()
        lines += [f"bf16: CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 kernels: "
                  f"{has_bf16_kernels()}; a (512x576)@(576x1536) matmul runs at {f32:.1f} GFLOP/s in fp32 and {bf:.2f} "
                  f"GFLOP/s in bf16 ({f32 / bf:.0f}x slower)"
                  + ("; the bf16 autocast step is therefore not run (it would take hours)." if not has_bf16_kernels() else "."), ""]
        if not has_bf16_kernels(): names.remove("bf16_autocast")
    keys = ["base", *names]
    res = {k: [] for k in keys}
    step(s)                                                                      # warm-up (shared by all variants)
    for r in range(1, a.repeats + 1):
        for k in (keys if r % 2 == 1 else keys[::-1]):
            ctx = CANDIDATES[k]() if k != "base" else contextlib.nullcontext()
            with ctx, R.PeakRSS() as m: t = step(s)
            t["peak_rss"] = m.peak / 2 ** 20
            if r: res[k].append(t)
            R.log(f"  round {r} {k:>16}: CPU s " + ", ".join(f"{p} {t['cpu/' + p]:.2f}" for p in (*PHASES, "total"))
                  + f" (wall {t['total']:.2f})"
                  + f", peak RSS +{t['peak_rss']:.0f} MiB, load {os.getloadavg()[0]:.2f}")
    med = lambda k, p: statistics.median(x[p] for x in res[k])
    for pre, what in (("cpu/", "CPU time of the process (s): the steadier measure on a shared machine"),
                      ("", "wall time (s)")):
        rows = [[k, *[med(k, pre + p) for p in (*PHASES, "total")],
                 "" if k == "base" else f"**{med(k, pre + 'total') / med('base', pre + 'total'):.2f}**"] for k in keys]
        lines += [f"**{what}**", "", R.markdown_table(["", *PHASES, "step", "step / baseline"], rows), ""]
        lines += ["Per phase, candidate / baseline: " + "; ".join(
            f"{k}: " + ", ".join(f"{p} {med(k, pre + p) / med('base', pre + p):.2f}" for p in PHASES
                                 if med('base', pre + p) > 1e-2) for k in names), ""]
    lines += ["Peak RSS above each step's start (MiB): " + ", ".join(f"{k} {med(k, 'peak_rss'):.0f}" for k in keys), ""]
    return "\n".join(lines)

def forward_ab(s, names, repeats: int = 3) -> str:
    """Cheaper A/B for candidates that act inside every op (flush_denormal): the no-grad forward of one minibatch
    (`forward_logprobs_values`, policy + values + entropy) on a full-size rollout, alternating, CPU seconds."""
    import torch
    P = s["P"]
    torch.manual_seed(0)
    batch = P.rollout(s["ours"], s["tok"], s["prompts"], s["cfg"])
    mb = s["cfg"].mini_batch_size
    ids = torch.cat([batch["query"], batch["response"]], 1)[:mb]; am = torch.cat([batch["query_mask"], batch["response_mask"]], 1)[:mb]
    Pw = batch["query"].shape[1]
    def fwd():
        c0 = clock()
        with torch.no_grad(): P.forward_logprobs_values(s["ours"], ids, am, Pw, 1.0, True)
        return clock()[1] - c0[1]
    fwd()
    res = {k: [] for k in ["base", *names]}
    for r in range(repeats):
        for k in (list(res) if r % 2 == 0 else list(res)[::-1]):
            with (CANDIDATES[k]() if k != "base" else contextlib.nullcontext()): res[k].append(fwd())
    med = {k: statistics.median(v) for k, v in res.items()}
    return (f"No-grad forward of one minibatch ({mb} x {ids.shape[1]} positions), median of {repeats}, CPU s: "
            + ", ".join(f"{k} {v:.2f}" + ("" if k == "base" else f" ({v / med['base']:.2f}x)") for k, v in med.items()) + "\n")

def generation_ab(s, repeats: int = 2) -> str:
    """Generation alone (the rollout's sampling, same prompts and lengths), CPU seconds, alternating: our `sample_tokens`
    (DynamicCache, finished rows dropped), the same with a 1-logit prefill, and HF `generate` (what TRL calls) with
    its dynamic cache and with `cache_implementation="static"` (a preallocated cache: fewer allocations, but every
    step attends over the whole preallocated length; without torch.compile nothing is fused)."""
    import torch
    from open_chatgpt.data import PromptCollator
    P, cfg, tok, pol = s["P"], s["cfg"], s["tok"], s["ours"].policy
    enc = PromptCollator(tok, cfg.max_prompt_length)([{"prompt": p} for p in s["prompts"]])
    q, m = enc["input_ids"], enc["attention_mask"]
    args = (cfg.max_new_tokens, tok.eos_token_id, tok.pad_token_id, cfg.temperature, cfg.top_k, cfg.top_p, True)
    def hf(cache):
        kw = dict(cache_implementation="static") if cache == "static" else {}
        return pol.generate(input_ids=q, attention_mask=m, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                            max_new_tokens=cfg.max_new_tokens, min_new_tokens=1, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id, **kw)
    hfdraw = dict(sampler="multinomial")              # HF generate's draws (chapter 6), so both sample the same tokens
    variants = {"sample_tokens (current)": lambda: P.sample_tokens(pol, q, m, *args, **hfdraw),
                "sample_tokens, 1-logit prefill": lambda: _prefill_one_logit(P.sample_tokens)(pol, q, m, *args, **hfdraw),
                "HF generate, dynamic cache": lambda: hf("dynamic"),
                "HF generate, static cache": lambda: hf("static")}
    res = {k: [] for k in variants}
    pol.eval()
    for r in range(repeats + 1):
        for k in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            torch.manual_seed(0)
            c0 = clock()
            with torch.no_grad():
                try: out = variants[k]()
                except Exception as e: res[k] = f"failed: {type(e).__name__}: {str(e)[:80]}"; continue
            dt = clock()[1] - c0[1]
            if r and isinstance(res[k], list): res[k].append(dt)
            R.log(f"  generation {k}: {dt:.2f} CPU s")
    base = statistics.median(res["sample_tokens (current)"])
    rows = [[k, statistics.median(v), f"{statistics.median(v) / base:.2f}"] if isinstance(v, list) else [k, v, ""]
            for k, v in res.items()]
    return (f"Generation alone: {len(q)} prompts (padded to {q.shape[1]}), up to {cfg.max_new_tokens} new tokens, "
            f"sampling at temperature 1; median of {repeats}, CPU s.\n\n"
            + R.markdown_table(["", "CPU s", "vs current"], rows) + "\n")

def ckpt_grad_check(s) -> str:
    "Gradients of one minibatch's PPO-style loss with and without activation checkpointing (should agree to ~1e-6)."
    import torch
    P = s["P"]
    torch.manual_seed(0)
    batch = P.rollout(s["ours"], s["tok"], s["prompts"][:2], s["cfg"])
    ids = torch.cat([batch["query"], batch["response"]], 1); am = torch.cat([batch["query_mask"], batch["response_mask"]], 1)
    Pw, model = batch["query"].shape[1], s["ours"]
    params = [p for p in model.parameters() if p.requires_grad]
    def grads(ckpt):
        lm = model.policy.get_base_model()
        if ckpt: lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        try:
            lp, v, _ = P.forward_logprobs_values(model, ids, am, Pw)
            ((lp * batch["response_mask"]).sum() + (v * batch["response_mask"]).pow(2).sum()).backward()
        finally:
            model.eval(); lm.gradient_checkpointing_disable()
        g = [p.grad.clone() for p in params]
        for p in params: p.grad = None
        return g
    g0, g1 = grads(False), grads(True)
    d = max(float((a - b).abs().max()) for a, b in zip(g0, g1)); gm = max(float(a.abs().max()) for a in g0)
    return f"Activation checkpointing: max |grad diff| {d:.1e} (largest gradient entry {gm:.1e}) on 2 real rollouts.\n"

@contextlib.contextmanager
def reward_split_halves():
    """Proposed change (reward.py `_pair_loss`): two forwards, chosen rows and rejected rows, each cut to its own
    non-padding columns, instead of one forward of all 2B rows padded to the longest of both halves (as TRL)."""
    import torch
    from open_chatgpt import reward as RW
    orig = RW._pair_loss
    def _pair_loss(rm, batch, n_pairs, device, margin=None, bf16=False):
        ids, am = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        def half(rows):                                                   # this half's rows, all-padding columns cut
            real = am[rows].bool().any(0).nonzero()
            cols = slice(int(real[0]), int(real[-1]) + 1)
            return rm(ids[rows, cols], am[rows, cols])                   # (B,)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            chosen, rejected = half(slice(0, n_pairs)), half(slice(n_pairs, None))
        return RW.pairwise_loss(chosen, rejected, margin), (chosen > rejected).float().mean().item()
    RW._pair_loss = _pair_loss
    try: yield
    finally: RW._pair_loss = orig

def reward_ab(a, repeats: int = 3) -> str:
    """Our reward-model training (run.py --real's MiniLM set-up: `train_reward`, rm_steps steps of rm_batch_size pairs,
    max_length rm_max_length) with and without `reward_split_halves`, alternating; CPU s per step, peak RSS above start."""
    import copy
    import torch
    from open_chatgpt.data import sample_pairs
    from open_chatgpt.models import resolve_model
    from open_chatgpt.reward import RewardModel, train_reward, pairwise_loss, prepare_reward_tokenizer, PairwiseCollator
    B, L, N = a.rm_batch_size, a.rm_max_length, a.rm_steps
    torch.manual_seed(0)
    rm0 = RewardModel.from_pretrained(resolve_model(R.REAL_RM)); tok = prepare_reward_tokenizer(rm0.tokenizer)
    pairs = sample_pairs("train").select(range(B * N))
    # agreement: the loss and rewards of one batch, both ways (eval mode: no dropout)
    batch = PairwiseCollator(tok, L, with_prompt=rm0.with_prompt)(list(pairs.select(range(B))))
    from open_chatgpt import reward as RW
    rm0.eval()
    with torch.no_grad():
        l0, _ = RW._pair_loss(rm0, batch, B, "cpu")
        with reward_split_halves(): l1, _ = RW._pair_loss(rm0, batch, B, "cpu")
    rm0.train()
    def run():
        m = copy.deepcopy(rm0); R._trim()
        with R.PeakRSS() as mem:
            c0 = clock(); train_reward(m, tok, pairs, None, R._our_rm_config(B, L, N, a.lr), progress=False); c1 = clock()
        return (c1[1] - c0[1]) / N, mem.peak / 2 ** 20
    run()
    res = {"current": [], "split halves": []}
    for r in range(repeats):
        for k in (list(res) if r % 2 == 0 else list(res)[::-1]):
            with (reward_split_halves() if k != "current" else contextlib.nullcontext()): res[k].append(run())
            R.log(f"  reward {k}: {res[k][-1][0]:.2f} CPU s/step, peak +{res[k][-1][1]:.0f} MiB")
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in res.items()}
    return (f"Reward-model training (MiniLM, {N} steps of {B} pairs, max_length {L}), median of {repeats}: "
            + "; ".join(f"{k} {c:.2f} CPU s/step, peak RSS +{m:.0f} MiB" for k, (c, m) in med.items())
            + f"; split / current: time {med['split halves'][0] / med['current'][0]:.2f}, memory "
            f"{med['split halves'][1] / med['current'][1]:.2f}. Same batch in eval mode: loss {float(l0):.6f} vs "
            f"{float(l1):.6f} (|diff| {abs(float(l0) - float(l1)):.1e}).\n")

def check_candidates(s, names) -> str:
    """Each candidate against the current code on one real rollout: the same sampled tokens, and log-probs, values,
    entropy, reference log-probs of `forward_logprobs_values` (max abs difference, no grad)."""
    import torch
    P = s["P"]
    def run():
        torch.manual_seed(0)
        batch = P.rollout(s["ours"], s["tok"], s["prompts"][:4], s["cfg"])
        ids = torch.cat([batch["query"], batch["response"]], 1); am = torch.cat([batch["query_mask"], batch["response_mask"]], 1)
        Pw = batch["query"].shape[1]
        with torch.no_grad():
            out = P.forward_logprobs_values(s["ours"], ids, am, Pw, 1.0, True)
            ref = P.forward_logprobs_values(s["ref"], ids, am, Pw)[0]
        return batch, (*out, ref)
    b0, o0 = run()
    lines = ["Agreement of each candidate with the current code on 4 real rollouts (response positions only):", "",
             "| candidate | same sampled tokens | log-probs | values | entropy | ref log-probs |", "|---|---|---|---|---|---|"]
    m = b0["response_mask"].bool()
    for n in names:
        if n in ("bf16_autocast", "no_old_entropy"): continue
        with CANDIDATES[n](): b1, o1 = run()
        same = torch.equal(b1["response"], b0["response"])
        d = [f"{float((x[m] - y[m]).abs().max()):.1e}" if same else "n/a" for x, y in zip(o0, o1)]
        lines.append(f"| {n} | {same} | " + " | ".join(d) + " |")
    return "\n".join(lines) + "\n"

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ab", action="store_true", help="A/B timings of the candidate speed-ups instead of the profile")
    p.add_argument("--only", default=",".join(CANDIDATES), help="comma list of candidates for --ab")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--generation", action="store_true", help="A/B of generation alone: ours vs HF generate, static cache")
    p.add_argument("--reward", action="store_true", help="A/B of the reward-model step: one padded forward vs two halves")
    p.add_argument("--forward-only", default="", help="candidates (e.g. flush_denormal) timed on one no-grad forward "
                                                      "instead of whole steps (cheaper)")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--quick", action="store_true", help="run.py's --quick sizes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "profile-real.md"))
    args, rest = p.parse_known_args(argv)
    a = R.parse_args(["--real", *(["--quick"] if args.quick else []), *rest])
    args.only = set(args.only.split(","))
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    args.quick, a.only = args.quick, args.only
    a.repeats = args.repeats
    info = R.machine_info()
    R.log(f"machine: {info['cpu']} | {info['cores']} cores, {info.get('threads')} torch threads | load "
          f"{info['load'][0]:.2f} | torch {info.get('torch')} | transformers {info.get('transformers')}")
    if args.reward:
        info_line = (f"# Reward-model A/B\n\nMachine: {info['cpu']}, {info['cores']} cores, 1 torch thread, SHARED with "
                     f"other jobs (load average {info['load'][0]:.2f} at start).\n\n")
        text = info_line + reward_ab(a, args.repeats) + f"\nLoad average at end {os.getloadavg()[0]:.2f}.\n"
        R.log("\n" + text)
        if args.out: Path(args.out).with_name(Path(args.out).stem + "-reward.md").write_text(text)
        return
    s = build(a)
    head = [f"# Profile of our real PPO step ({'generation A/B' if args.generation else 'A/B' if args.ab else 'torch.profiler'})", "",
            f"Machine: {info['cpu']}, {info['cores']} cores, {info.get('threads')} torch thread(s), SHARED with other "
            f"jobs (load average {info['load'][0]:.2f} at start); torch {info.get('torch')}, transformers "
            f"{info.get('transformers')}. Batch {a.ppo_batch_size}, minibatch {a.ppo_mini_batch_size}, {a.ppo_epochs} "
            f"epoch(s), {a.max_new_tokens} new tokens, prompts cut to {a.max_prompt_length} tokens; "
            f"SmolLM2-135M-Instruct + LoRA r={R.REAL_LORA['r']} on {'/'.join(R.REAL_LORA['target_modules'])}.", ""]
    fwd_only = [n for n in CANDIDATES if n in args.only and n in args.forward_only.split(",")]
    a.only = {n for n in args.only if n not in fwd_only}
    if args.generation:
        body = generation_ab(s, args.repeats)
    elif args.ab and any("ckpt" in n or "checkpoint" in n for n in args.only):
        body = ckpt_grad_check(s) + "\n" + ab(a, s)
    else: body = (check_candidates(s, [n for n in CANDIDATES if n in args.only]) + "\n"
            + (forward_ab(s, fwd_only) + "\n" if fwd_only else "") + ab(a, s)) if args.ab \
        else profile(a, s, args.top)
    text = "\n".join(head) + body + f"\n\nLoad average at end {os.getloadavg()[0]:.2f}.\n"
    R.log("\n" + text)
    if args.out:
        out = Path(args.out)
        if args.ab or args.generation:
            out = out.with_name(out.stem + ("-generation" if args.generation else "-ab") + out.suffix)
        out.write_text(text); R.log(f"wrote {out}")

if __name__ == "__main__":
    main()

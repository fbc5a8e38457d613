#!/usr/bin/env python
"""open-chatgpt vs Hugging Face TRL, side by side in one process on the same tiny model, data and hyperparameters.

Measures (median of --repeats runs, ours and TRL interleaved so load drift on a shared machine hits both):
  1. reward-model training: N steps of our `train_reward` vs TRL's `RewardTrainer`
  2. one PPO step (rollout of B prompts + scoring + the update epochs): ours vs TRL's classic `PPOTrainer`
  3. generation throughput of our tiny policy with and without the KV cache
  4. achieved FLOP/s of our training steps against a measured matmul peak (model FLOPs utilisation)
  5. peak memory (RSS above the phase's start, sampled every 5 ms) per phase
and checks that our losses agree numerically with TRL's on the same batch (PPO policy + value loss and the
intermediate rewards / advantages / returns; the reward model's pairwise loss).

Run it in the benchmark's own environment (TRL is not a project dependency):
    bash bench/setup.sh && bench/.venv/bin/python bench/run.py        # or: make bench
Writes bench/results.md (--out to change).  --quick: tiny sizes, for the smoke test.

--real: the same comparison on the real models (SmolLM2-135M-Instruct + LoRA r=16 on q/v/o for PPO, MiniLM-L6 for the
reward model), each measurement in a fresh worker process, CPU time first (the machine may be shared), phases of the PPO
step, tokens/s, peak RSS, MFU against the measured matmul peak and per-token agreement; writes bench/results-real.md.
`--proposal [NAMES]` also times our PPO step with bench/profile_real.py's patches (the proposed library changes).
"""
import argparse
import contextlib
import copy
import ctypes
import gc
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ------------------------------------------------------------------------------------------------------------------
# generic helpers (no torch/TRL import at module level: tests/test_bench.py imports this file from the project venv)
# ------------------------------------------------------------------------------------------------------------------

def median(xs): return statistics.median(xs)

def fmt(x, nd=3):
    if x is None or (isinstance(x, float) and math.isnan(x)): return "n/a"
    if isinstance(x, str): return x
    if abs(x) >= 1000: return f"{x:,.0f}"
    if abs(x) >= 100: return f"{x:.1f}"
    return f"{x:.{nd}f}"

def markdown_table(header, rows) -> str:
    "A GitHub Markdown table from a header list and rows of cells (numbers formatted with `fmt`)."
    cells = [[fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(out)

def train_flops(n_params: int, n_tokens: int) -> float:
    "FLOPs of one forward + backward pass: 6 * parameters * tokens (Kaplan et al.; attention scores not counted)."
    return 6.0 * n_params * n_tokens

def forward_flops(n_params: int, n_tokens: int) -> float:
    "FLOPs of one forward pass without gradient: 2 * parameters * tokens."
    return 2.0 * n_params * n_tokens

def _rss() -> int:
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def _trim():
    gc.collect()
    with contextlib.suppress(Exception): ctypes.CDLL("libc.so.6").malloc_trim(0)

class PeakRSS:
    "Context manager: peak resident memory above the level at entry, sampled every `interval` s (bytes in `.peak`)."
    def __init__(self, interval: float = 0.005): self.interval, self.peak = interval, 0
    def __enter__(self):
        _trim()
        self.base = self._max = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True); self._t.start()
        return self
    def _run(self):
        while not self._stop.is_set():
            self._max = max(self._max, _rss()); time.sleep(self.interval)
    def __exit__(self, *a):
        self._stop.set(); self._t.join(); self._max = max(self._max, _rss())
        self.peak = self._max - self.base

def machine_info() -> dict:
    "CPU model, cores, load and library versions of this machine."
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"): cpu = line.split(":", 1)[1].strip(); break
    info = dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version(), load=os.getloadavg())
    with contextlib.suppress(OSError):
        info["mem_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    for mod in ("torch", "transformers", "trl", "accelerate", "peft"):
        with contextlib.suppress(ImportError): info[mod] = __import__(mod).__version__
    with contextlib.suppress(ImportError):
        import torch; info["threads"] = torch.get_num_threads()
    return info

def matmul_peak(n: int = 1024, seconds: float = 1.0, rounds: int = 3, clock=None) -> float:
    """Measured fp32 matmul throughput of this machine in FLOP/s: best of `rounds` timed loops of n x n @ n x n.
    `clock`: the timer (default `time.perf_counter`, wall time; `time.process_time` gives FLOPs per CPU second)."""
    import torch
    clock = clock or time.perf_counter
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3): a @ b  # warm-up
    best = 0.0
    for _ in range(rounds):
        k, t0 = 0, clock()
        while clock() - t0 < seconds / rounds or k < 2:
            torch.matmul(a, b); k += 1
        best = max(best, 2.0 * n ** 3 * k / max(clock() - t0, 1e-9))
    return best

def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    "Time each callable `repeats` times, alternating their order each round; return {name: (times, peak_rss_bytes)}."
    res = {k: ([], []) for k in fns}
    names = list(fns)
    for r in range(warmup + repeats):
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            with PeakRSS() as m:
                t0 = time.perf_counter(); fns[k](); dt = time.perf_counter() - t0
            if r >= warmup: res[k][0].append(dt); res[k][1].append(m.peak)
    return res

def log(*a):
    print(*a, flush=True)

# ------------------------------------------------------------------------------------------------------------------
# the set-up shared by both libraries
# ------------------------------------------------------------------------------------------------------------------

def matmul_params(model) -> int:
    "Parameters that take part in matmuls (embedding lookups excluded; a tied LM head counts once, as a matmul)."
    import torch
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    n = sum(p.numel() for p in model.parameters() if id(p) not in emb)
    out = getattr(model, "get_output_embeddings", lambda: None)()
    if out is not None and id(out.weight) in emb: n += out.weight.numel()  # tied LM head: a real matmul
    return n

def pair_features(tok, records, max_length: int) -> list:
    "Tokenise pairs exactly like our PairwiseCollator (one prompt cut per pair, from the left; eos appended) for both libraries."
    from open_chatgpt.data import truncate_pair
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]
    feats = []
    for r in records:
        p, c, j = truncate_pair(enc(r["prompt"]), enc(r["chosen"]) + [tok.eos_token_id],
                                enc(r["rejected"]) + [tok.eos_token_id], max_length)
        f = {}
        for key, resp in (("chosen", c), ("rejected", j)):
            f[f"input_ids_{key}"] = p + resp; f[f"attention_mask_{key}"] = [1] * (len(p) + len(resp))
        feats.append(f)
    return feats

def toy_score(response_ids):
    "A deterministic, nearly free reward shared by both PPO runs: fraction of response tokens with an even id."
    import torch
    return float((torch.as_tensor(response_ids) % 2 == 0).float().mean()) if len(response_ids) else 0.0

# ------------------------------------------------------------------------------------------------------------------
# 1. reward model: our train_reward vs TRL RewardTrainer
# ------------------------------------------------------------------------------------------------------------------

def _our_reward_model(policy, tok):
    from open_chatgpt.reward import RewardModel
    return RewardModel(copy.deepcopy(policy), tok)

def _rm_head(rm):
    import torch
    for k in ("head", "v_head", "score"):
        if isinstance(getattr(rm, k, None), torch.nn.Linear): return getattr(rm, k)
    raise ValueError("cannot find the reward model's linear head")

def _trl_reward_model(rm, tok):
    "GPT2ForSequenceClassification holding exactly the weights of our reward model (backbone + head)."
    import torch
    from transformers import GPT2ForSequenceClassification
    backbone = rm.backbone
    base = getattr(backbone, "transformer", None) or getattr(backbone, "base_model", backbone)
    cfg = copy.deepcopy(base.config); cfg.num_labels = 1; cfg.pad_token_id = tok.pad_token_id
    m = GPT2ForSequenceClassification(cfg)
    m.transformer.load_state_dict(base.state_dict())
    head = _rm_head(rm)
    with torch.no_grad():
        m.score.weight.copy_(head.weight)
    bias = float(head.bias.detach().abs().max()) if head.bias is not None else 0.0
    return m, bias

def _disable_dropout(model):
    import torch
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout): mod.p = 0.0
    return model

def _our_rm_config(B: int, L: int, N: int, lr: float):
    "Our RewardConfig for N steps of B pairs, max_length L: constant lr, no warm-up, no weight decay, clip 1.0, on DEVICE."
    from open_chatgpt import reward as R
    fields = set(getattr(R.RewardConfig, "__dataclass_fields__", {}))
    kw = dict(batch_size=B, learning_rate=lr, max_length=L, max_steps=N, epochs=1, seed=0, eval_every=0, log_every=N,
              warmup=0, weight_decay=0.0, max_grad_norm=1.0, output_dir=None, grad_accum=1, bf16=False, device=DEVICE)
    return R.RewardConfig(**{k: v for k, v in kw.items() if k in fields})

def _trl_rm_args(B: int, L: int, N: int, lr: float):
    "TRL's RewardConfig with the same settings as `_our_rm_config`."
    import trl
    return trl.RewardConfig(output_dir=tempfile.mkdtemp(prefix="bench_rm_"), report_to=[], max_length=L,
                            per_device_train_batch_size=B, learning_rate=lr, max_steps=N, num_train_epochs=1,
                            warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant",
                            logging_steps=N, save_strategy="no", eval_strategy="no", remove_unused_columns=False,
                            use_cpu=DEVICE == "cpu", disable_tqdm=True, seed=0, dataloader_num_workers=0)

def bench_reward(tok, policy, pairs, a, results, timing: bool = True):
    import torch
    from datasets import Dataset
    from open_chatgpt.data import PairwiseCollator
    from open_chatgpt import reward as R
    import trl
    B, L, N = a.rm_batch_size, a.rm_max_length, a.rm_steps
    records = [pairs[i] for i in range(B * N)]
    feats = pair_features(tok, records, L)
    n_real_tokens = sum(len(f["input_ids_chosen"]) + len(f["input_ids_rejected"]) for f in feats)

    # ---- same-batch loss agreement: identical weights, identical tokens ----
    rm = _our_reward_model(policy, tok)
    with torch.no_grad(): torch.nn.init.normal_(_rm_head(rm).weight, std=0.5)  # non-trivial rewards to compare
    if getattr(_rm_head(rm), "bias", None) is not None:
        with torch.no_grad(): _rm_head(rm).bias.zero_()  # GPT2ForSequenceClassification's score has no bias
    trl_rm, _ = _trl_reward_model(rm, tok)
    rm.eval(); trl_rm.eval()
    targs = trl.RewardConfig(output_dir=tempfile.mkdtemp(prefix="bench_rm_"), report_to=[], max_length=L,
                             remove_unused_columns=False, use_cpu=True, disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.RewardTrainer(model=trl_rm, args=targs, tokenizer=tok, train_dataset=Dataset.from_list(feats[:B]))
    batch_trl = trainer.data_collator(feats[:B])
    with torch.no_grad():
        trl_loss, out = trainer.compute_loss(trl_rm, batch_trl, return_outputs=True)
        ours_batch = PairwiseCollator(tok, L)(records[:B])
        r = rm(ours_batch["input_ids"], ours_batch["attention_mask"]).float().flatten()     # (2B,)
        our_loss = R.pairwise_loss(r[:B], r[B:])
    agree = dict(rm_rewards=float((torch.cat([out["rewards_chosen"].flatten(), out["rewards_rejected"].flatten()]) - r).abs().max()),
                 rm_loss=abs(float(trl_loss) - float(our_loss)), rm_loss_value=float(our_loss))
    results["agreement"].update(agree)
    log(f"  reward loss  ours {float(our_loss):.6f}  TRL {float(trl_loss):.6f}  |diff| {agree['rm_loss']:.2e}  "
        f"max |reward diff| {agree['rm_rewards']:.2e}")

    if not timing: return
    # ---- timing: N optimizer steps from the same start, same data, batch size, lr, max_length ----
    ds_trl = Dataset.from_list(feats)
    def ours():
        m = _our_reward_model(policy, tok)
        R.train_reward(m, tok, pairs.select(range(B * N)), None, _our_rm_config(B, L, N, a.lr), progress=False)
    def theirs():
        m, _ = _trl_reward_model(_our_reward_model(policy, tok), tok)
        args = _trl_rm_args(B, L, N, a.lr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = trl.RewardTrainer(model=m, args=args, tokenizer=tok, train_dataset=ds_trl)
            with contextlib.redirect_stdout(io.StringIO()): t.train()  # Trainer prints its log dicts
    res = interleaved(dict(ours=ours, trl=theirs), a.repeats)
    results["reward"] = dict(steps=N, tokens=n_real_tokens, params=matmul_params(_our_reward_model(policy, tok)), **res)

# ------------------------------------------------------------------------------------------------------------------
# 2. PPO: our rollout + ppo_step vs TRL PPOTrainer.generate + step
# ------------------------------------------------------------------------------------------------------------------

def _ppo_common(a) -> dict:
    "The PPO settings both libraries share (TRL 0.11.4's field names, which our PPOConfig uses)."
    return dict(learning_rate=a.lr, batch_size=a.ppo_batch_size, mini_batch_size=a.ppo_mini_batch_size,
                gradient_accumulation_steps=1, ppo_epochs=a.ppo_epochs, gamma=1.0, lam=0.95, cliprange=0.2,
                cliprange_value=0.2, vf_coef=0.1, init_kl_coef=0.2, adap_kl_ctrl=True, target=6.0, horizon=10000,
                max_grad_norm=1.0, whiten_rewards=False)

def _micro_note(a) -> str:
    "How our update splits a minibatch, for the report (nothing if it does not)."
    k = a.ppo_micro_batch_size
    if not k or k >= a.ppo_mini_batch_size: return ""
    return (f" (ours: `micro_batch_size={k}`, forward/backward passes of {k} row(s), each cut to its own length; the "
            "same loss, a mean over the minibatch's tokens, and the same gradient as one padded pass, as in TRL)")

def _our_ppo_config(a):
    "Our PPOConfig (no TRL import: the real mode's `ours` worker process never loads TRL)."
    from open_chatgpt.ppo import PPOConfig
    return PPOConfig(**_ppo_common(a), max_new_tokens=a.max_new_tokens, max_prompt_length=a.max_prompt_length, top_k=0,
                     top_p=1.0, temperature=1.0, shared_backbone=True, seed=0, micro_batch_size=a.ppo_micro_batch_size,
                     sampler="multinomial")   # HF generate's draws: from the same seed, answers of TRL's lengths

def _ppo_configs(a, tok):
    import trl
    common = _ppo_common(a)
    ours = _our_ppo_config(a)
    theirs = trl.PPOConfig(**common, kl_penalty="kl", seed=0, log_with=None, early_stopping=False,
                           use_score_scaling=False, score_clip=None, ratio_threshold=10.0)
    gen = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=a.max_new_tokens,
               min_new_tokens=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return ours, theirs, gen

def _make_pair(policy, tok, a, v_head_std: float = 0.0):
    "Our PolicyAndValue (shared backbone) + reference, and TRL's value-head model + reference, with equal weights."
    import torch
    import trl
    from open_chatgpt.ppo import make_ppo_models
    ours, ref = make_ppo_models(policy, tok, shared_backbone=True)
    if v_head_std:
        with torch.no_grad(): torch.nn.init.normal_(ours.v_head.weight, std=v_head_std); ours.v_head.bias.fill_(0.1)
    theirs = trl.AutoModelForCausalLMWithValueHead.from_pretrained(copy.deepcopy(ours.policy), summary_dropout_prob=0.0)
    theirs.v_head.summary.load_state_dict(ours.v_head.state_dict())
    theirs_ref = trl.AutoModelForCausalLMWithValueHead.from_pretrained(copy.deepcopy(ref), summary_dropout_prob=0.0).eval()
    _disable_dropout(theirs)  # our make_ppo_models disables dropout; do the same for TRL (same compute)
    return ours, ref, theirs, theirs_ref

def _trl_trainer(cfg, model, ref, tok):
    import torch
    import trl
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate, eps=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trl.PPOTrainer(config=cfg, model=model, ref_model=ref, tokenizer=tok, optimizer=opt)

def _queries(tok, prompts, max_prompt_length):
    import torch
    return [torch.tensor(tok(p, add_special_tokens=False)["input_ids"][-max_prompt_length:]) for p in prompts]

def _perturb(ours, theirs, rel: float, seed: int):
    "Add the same Gaussian noise (`rel` x each tensor's std) to our trained weights, then copy them into TRL's model."
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ours.parameters():
            if not p.requires_grad: continue
            scale = p.detach().std() if p.numel() > 1 else p.detach().abs().mean()
            p.add_(torch.randn(p.shape, generator=g) * rel * scale.clamp(min=1e-3))
    theirs.pretrained_model.load_state_dict(ours.policy.state_dict())
    theirs.v_head.summary.load_state_dict(ours.v_head.state_dict())

def ppo_agreement(tok, policy, prompts, a, results, pair=None):
    """Same rollout batch through both libraries: log-probs, values, rewards, advantages, returns and the losses.
    `pair`: (ours, ref, theirs, trainer) built by the caller (real mode: LoRA on both sides, TRL's reference is its own
    model with the adapter disabled); None: the tiny model, with a separate TRL reference copy."""
    import torch
    from open_chatgpt import ppo as P
    from open_chatgpt.ppo_core import (compute_gae, compute_rewards, masked_whiten, ppo_policy_loss, ppo_value_loss)
    from open_chatgpt.ppo_core import masked_mean
    cfg, tcfg, _ = _ppo_configs(a, tok)
    if pair is None:
        ours, ref, theirs, theirs_ref = _make_pair(policy, tok, a, v_head_std=0.05)
        trainer = _trl_trainer(tcfg, theirs, theirs_ref, tok)
        trl_ref_ctx = contextlib.nullcontext
    else:
        ours, ref, theirs, trainer = pair
        theirs_ref, trl_ref_ctx = theirs, trainer.optional_peft_ctx   # PeftModel.disable_adapter
    _perturb(ours, theirs, a.perturb / 2, seed=2)  # the sampling policy drifts from the reference: KL penalty != 0
    torch.manual_seed(0)
    batch = P.rollout(ours, tok, prompts[:cfg.batch_size], cfg)
    scores = torch.tensor([toy_score(r[m.bool()]) for r, m in zip(batch["response"], batch["response_mask"])])
    q = [qq[m.bool()] for qq, m in zip(batch["query"], batch["query_mask"])]
    r = [rr[m.bool()] for rr, m in zip(batch["response"], batch["response_mask"])]
    ids = torch.cat([batch["query"], batch["response"]], 1); am = torch.cat([batch["query_mask"], batch["response_mask"]], 1)
    mask, Pw = batch["response_mask"], batch["query"].shape[1]
    kl_coef = trainer.kl_ctl.value
    with torch.no_grad():
        # ours: left-padded queries, response-only tensors (B, R)
        old_lp, old_v, _ = P.forward_logprobs_values(ours, ids, am, Pw)
        ref_lp, _, _ = P.forward_logprobs_values(ref, ids, am, Pw)
        rewards, _, _ = compute_rewards(scores, old_lp, ref_lp, mask, kl_coef)
        adv, ret = compute_gae(rewards, old_v, mask, cfg.gamma, cfg.lam)
        adv = masked_whiten(adv, mask)
        # TRL: its own right-padded full sequences and masks (B, T-1)
        mi = trainer.prepare_model_inputs(q, r)
        t_lp, _, t_v, t_mask = trainer.batched_forward_pass(theirs, q, r, mi)
        with trl_ref_ctx(): t_ref, _, _, _ = trainer.batched_forward_pass(theirs_ref, q, r, mi)
        t_rew, _, _ = trainer.compute_rewards(scores, t_lp, t_ref, t_mask)
        t_v2, t_adv, t_ret = trainer.compute_advantages(t_v, t_rew, t_mask)
    sel = lambda ours_t, trl_t: (ours_t[mask.bool()], trl_t[t_mask.bool()])  # response tokens, row-major order
    d = lambda x, y: float((x.float() - y.float()).abs().max())
    agree = {}
    for name, o, t in (("logprobs", old_lp, t_lp), ("ref_logprobs", ref_lp, t_ref), ("values", old_v, t_v),
                       ("rewards", rewards, t_rew), ("advantages", adv, t_adv), ("returns", ret, t_ret)):
        x, y = sel(o, t)
        if x.shape != y.shape: raise RuntimeError(f"{name}: ours has {x.shape[0]} response tokens, TRL {y.shape[0]}")
        agree[f"ppo_{name}"] = d(x, y)
    # the new policy: perturb the weights again (the same perturbation in both) so that ratios move and clipping acts
    _perturb(ours, theirs, a.perturb, seed=1)
    ours.train(); theirs.train()
    lp, v, _ = P.forward_logprobs_values(ours, ids, am, Pw)
    pg, pg_stats = ppo_policy_loss(lp, old_lp, adv, mask, cfg.cliprange)
    vf, vf_stats = ppo_value_loss(v, old_v, ret, mask, cfg.cliprange_value)
    our_total = pg + cfg.vf_coef * vf
    t_new_lp, t_logits, t_vpred, _ = trainer.batched_forward_pass(theirs, q, r, mi, return_logits=True)
    t_pg, t_vf, t_stats = trainer.loss(t_lp, t_v2, t_logits, t_vpred, t_new_lp, t_mask, t_adv, t_ret)
    trl_total = t_pg + t_vf
    our_total.backward(); trl_total.backward()
    gdiff = max(float((po.grad - pt.grad).abs().max()) for po, pt in
                zip(ours.policy.parameters(), theirs.pretrained_model.parameters()) if po.grad is not None)
    gdiff = max(gdiff, float((ours.v_head.weight.grad - theirs.v_head.summary.weight.grad).abs().max()))
    gmax = max(float(po.grad.abs().max()) for po in ours.parameters() if po.grad is not None)
    # the same loss through our micro-batch path (one unpadded row per forward/backward, as the real run trains)
    import dataclasses
    with_grad = [n for n, po in ours.named_parameters() if po.grad is not None]
    ours.zero_grad(set_to_none=True)
    data = dict(input_ids=ids, attention_mask=am, P=Pw, mask=mask, old_logprobs=old_lp, old_values=old_v,
                advantages=adv, returns=ret)
    m_stats = P.ppo_minibatch_backward(ours, data, torch.arange(len(ids)), dataclasses.replace(cfg, micro_batch_size=1))
    if [n for n, po in ours.named_parameters() if po.grad is not None] != with_grad:
        raise RuntimeError("the micro-batch path left other parameters without a gradient than the whole-batch pass")
    gdiff_m = max(float((po.grad - pt.grad).abs().max()) for po, pt in
                  zip(ours.policy.parameters(), theirs.pretrained_model.parameters()) if po.grad is not None)
    gdiff_m = max(gdiff_m, float((ours.v_head.weight.grad - theirs.v_head.summary.weight.grad).abs().max()))
    m_total = float(m_stats["loss/policy"]) + cfg.vf_coef * float(m_stats["loss/value"])
    agree.update(ppo_micro_total_loss=abs(m_total - float(trl_total)), ppo_micro_grad_rel=gdiff_m / max(gmax, 1e-30))
    agree.update(ppo_kl=float(masked_mean(old_lp - ref_lp, mask)), ppo_policy_loss=abs(float(pg) - float(t_pg)), ppo_value_loss=abs(float(cfg.vf_coef * vf) - float(t_vf)),
                 ppo_total_loss=abs(float(our_total) - float(trl_total)), ppo_grad=gdiff, ppo_grad_rel=gdiff / max(gmax, 1e-30),
                 ppo_total_value=float(our_total), ppo_clipfrac=float(pg_stats["policy/clipfrac"]),
                 ppo_vf_clipfrac=float(vf_stats["val/clipfrac"]),
                 trl_clipfrac=float(t_stats["policy/clipfrac"]), ppo_tokens=int(mask.sum()))
    results["agreement"].update(agree)
    log(f"  PPO total loss ours {float(our_total):.6f}  TRL {float(trl_total):.6f}  |diff| {agree['ppo_total_loss']:.2e}  "
        f"(policy {agree['ppo_policy_loss']:.2e}, value {agree['ppo_value_loss']:.2e}); clipfrac ours "
        f"{agree['ppo_clipfrac']:.3f} TRL {agree['trl_clipfrac']:.3f}; max |grad diff| {gdiff:.2e}")
    log(f"  micro-batches of one row: |total loss diff| {agree['ppo_micro_total_loss']:.2e}, relative grad diff "
        f"{agree['ppo_micro_grad_rel']:.2e}")
    log("  per-token max |diff|: " + ", ".join(f"{k[4:]} {agree[k]:.1e}" for k in
        ("ppo_logprobs", "ppo_ref_logprobs", "ppo_values", "ppo_rewards", "ppo_advantages", "ppo_returns")))

def bench_ppo(tok, policy, prompts, a, results):
    import torch
    from open_chatgpt import ppo as P
    from open_chatgpt.ppo_core import AdaptiveKLController
    cfg, tcfg, gen = _ppo_configs(a, tok)
    ours, ref, theirs, theirs_ref = _make_pair(policy, tok, a)
    opt = torch.optim.Adam([p for p in ours.parameters() if p.requires_grad], lr=cfg.learning_rate, eps=1e-5)
    kl_ctl = AdaptiveKLController(cfg.init_kl_coef, cfg.target, cfg.horizon)
    trainer = _trl_trainer(tcfg, theirs, theirs_ref, tok)
    batch_prompts = prompts[:cfg.batch_size]
    split = {"ours": {"rollout": [], "update": [], "resp_len": []}, "trl": {"rollout": [], "update": [], "resp_len": []}}
    def ours_step():
        torch.manual_seed(0)
        t0 = time.perf_counter()
        batch = P.rollout(ours, tok, batch_prompts, cfg)
        _, scores = P.score(lambda p, r, b: [toy_score(x[m.bool()]) for x, m in zip(b["response"], b["response_mask"])],
                            batch, cfg)
        t1 = time.perf_counter()
        P.ppo_step(ours, ref, opt, batch, scores, kl_ctl, cfg)
        s = split["ours"]; s["rollout"].append(t1 - t0); s["update"].append(time.perf_counter() - t1)
        s["resp_len"].append(float(batch["response_mask"].sum(1).float().mean()))
    def trl_step():
        torch.manual_seed(0)
        t0 = time.perf_counter()
        queries = _queries(tok, batch_prompts, cfg.max_prompt_length)
        responses = trainer.generate(queries, batch_size=len(queries), return_prompt=False, **gen)
        scores = [torch.tensor(toy_score(r)) for r in responses]
        t1 = time.perf_counter()
        trainer.step(queries, responses, scores)
        s = split["trl"]; s["rollout"].append(t1 - t0); s["update"].append(time.perf_counter() - t1)
        s["resp_len"].append(sum(len(r) for r in responses) / len(responses))
    res = interleaved(dict(ours=ours_step, trl=trl_step), a.repeats)
    for k in split:  # drop the warm-up round
        for kk in split[k]: split[k][kk] = split[k][kk][1:]
    P_tok = sum(len(x) for x in _queries(tok, batch_prompts, cfg.max_prompt_length))
    results["ppo"] = dict(split=split, params=matmul_params(ours.policy), prompt_tokens=P_tok, **res)

# ------------------------------------------------------------------------------------------------------------------
# 3. generation throughput with and without the KV cache
# ------------------------------------------------------------------------------------------------------------------

def bench_generation(tok, policy, prompts, a, results):
    import torch
    from open_chatgpt.data import PromptCollator
    enc = PromptCollator(tok, a.max_prompt_length)([{"prompt": p} for p in prompts[:a.gen_batch_size]])
    n_new = a.gen_tokens
    def run(cache):
        with torch.no_grad():
            out = policy.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=False,
                                  max_new_tokens=n_new, min_new_tokens=n_new, use_cache=cache,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert out.shape[1] == enc["input_ids"].shape[1] + n_new
    res = interleaved(dict(cache=lambda: run(True), no_cache=lambda: run(False)), a.repeats)
    results["generation"] = dict(tokens=n_new * enc["input_ids"].shape[0], prompt_width=enc["input_ids"].shape[1], **res)

# ------------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------------

MiB = 2 ** 20

def report(results, a, info) -> str:
    peak = results["peak_flops"]
    rows = []
    ratios = {}
    if "reward" in results:
        rr = results["reward"]; N = rr["steps"]
        o, t = median(rr["ours"][0]) / N, median(rr["trl"][0]) / N
        ratios["reward"] = o / t
        rows.append(["reward-model training step (s/step)", o, t, f"**{o / t:.2f}**"])
        rows.append(["reward-model training: peak RSS above start (MiB)", max(rr["ours"][1]) / MiB,
                     max(rr["trl"][1]) / MiB, f"{max(rr['ours'][1]) / max(max(rr['trl'][1]), 1):.2f}"])
    if "ppo" in results:
        pp = results["ppo"]
        o, t = median(pp["ours"][0]), median(pp["trl"][0])
        ratios["ppo"] = o / t
        rows.append([f"PPO step: rollout + update (s)", o, t, f"**{o / t:.2f}**"])
        for part in ("rollout", "update"):
            so, st = median(pp["split"]["ours"][part]), median(pp["split"]["trl"][part])
            rows.append([f"&nbsp;&nbsp;{part} (s)", so, st, f"{so / st:.2f}"])
        rows.append(["&nbsp;&nbsp;mean response length (tokens)", median(pp["split"]["ours"]["resp_len"]),
                     median(pp["split"]["trl"]["resp_len"]), ""])
        rows.append(["PPO step: peak RSS above start (MiB)", max(pp["ours"][1]) / MiB, max(pp["trl"][1]) / MiB,
                     f"{max(pp['ours'][1]) / max(max(pp['trl'][1]), 1):.2f}"])
    lines = ["# Benchmark: open-chatgpt vs TRL", "",
             f"Machine: {info['cpu']}, {info['cores']} cores ({info.get('threads')} torch threads), "
             f"{info.get('mem_gib', '?')} GiB; Python {info['python']}, torch {info.get('torch')}, "
             f"transformers {info.get('transformers')}, TRL {info.get('trl')}, accelerate {info.get('accelerate')}.",
             f"Load average at start {info['load'][0]:.2f} / end {os.getloadavg()[0]:.2f}"
             + (" -- the machine was shared with other jobs while this ran; absolute times are noisy, the "
                "interleaved ratios less so." if info['load'][0] > 0.8 * (info['cores'] or 1) else "."),
             f"Command: `{' '.join(['python bench/run.py'] + sys.argv[1:])}`; median of {a.repeats} repeats after one "
             "warm-up, ours and TRL alternating.", "",
             "## Speed: ours / TRL (time ratio: < 1 means ours is faster)", "",
             markdown_table(["", "open-chatgpt", "TRL", "ours / TRL"], rows), ""]
    if "generation" in results:
        g = results["generation"]
        c, n = g["tokens"] / median(g["cache"][0]), g["tokens"] / median(g["no_cache"][0])
        lines += ["## Generation throughput (our tiny policy, greedy)", "",
                  markdown_table(["", "KV cache", "no cache", "cache / no cache"],
                                 [[f"tokens/s ({a.gen_batch_size} prompts x {a.gen_tokens} new tokens)", c, n, f"**{c / n:.2f}x**"],
                                  ["peak RSS above start (MiB)", max(g["cache"][1]) / MiB, max(g["no_cache"][1]) / MiB, ""]]), ""]
    mfu_rows = []
    if "reward" in results:
        rr = results["reward"]
        fl = train_flops(rr["params"], rr["tokens"]) / median(rr["ours"][0])
        fl_t = train_flops(rr["params"], rr["tokens"]) / median(rr["trl"][0])
        mfu_rows.append(["reward-model training (ours)", rr["params"] / 1e6, rr["tokens"], fl / 1e9, f"{100 * fl / peak:.1f}%"])
        mfu_rows.append(["reward-model training (TRL)", rr["params"] / 1e6, rr["tokens"], fl_t / 1e9, f"{100 * fl_t / peak:.1f}%"])
    if "ppo" in results:
        pp = results["ppo"]
        B = a.ppo_batch_size
        T = pp["prompt_tokens"] + B * median(pp["split"]["ours"]["resp_len"])   # real tokens per forward of the batch
        # update phase: policy+value and reference forwards (no grad) + ppo_epochs forward/backward passes
        fl = (2 * forward_flops(pp["params"], T) + a.ppo_epochs * train_flops(pp["params"], T)) / median(pp["split"]["ours"]["update"])
        mfu_rows.append(["PPO update phase (ours)", pp["params"] / 1e6, int(T), fl / 1e9, f"{100 * fl / peak:.1f}%"])
    lines += ["## Model FLOPs utilisation", "",
              f"Measured matmul peak on this machine: **{peak / 1e9:.1f} GFLOP/s** (fp32, 1024x1024 @ 1024x1024, best of 3). "
              "Training FLOPs = 6 x matmul parameters x real (non-pad) tokens (embedding lookups excluded, attention "
              "scores not counted, so this is a lower bound on the work done).", "",
              markdown_table(["", "matmul params (M)", "tokens", "achieved GFLOP/s", "MFU"], mfu_rows), ""]
    ag = results["agreement"]
    agree_rows = []
    if "rm_loss" in ag:
        agree_rows.append(["reward model: pairwise loss (-log sigmoid(r_c - r_r))", ag["rm_loss"], ag["rm_loss_value"]])
        agree_rows.append(["reward model: per-sequence rewards (2B)", ag["rm_rewards"], ""])
    if "ppo_total_loss" in ag:
        agree_rows += [["PPO: total loss (policy + vf_coef * value)", ag["ppo_total_loss"], ag["ppo_total_value"]],
                       ["PPO: policy loss (clipped surrogate)", ag["ppo_policy_loss"], ""],
                       ["PPO: value loss (clipped, x vf_coef)", ag["ppo_value_loss"], ""],
                       ["PPO: gradients of the total loss (all parameters)", ag["ppo_grad"], ""]]
        agree_rows += [[f"PPO per token: {k}", ag[f"ppo_{k}"], ""] for k in
                       ("logprobs", "ref_logprobs", "values", "rewards", "advantages", "returns")]
    fe = lambda x: f"{x:.2e}" if isinstance(x, float) else str(x)
    lines += ["## Numerical agreement with TRL on the same batch", "",
              "Both libraries get identical weights and the same token sequences; each runs its own forward pass, "
              "padding layout and loss code (ours: `open_chatgpt.ppo_core` / `open_chatgpt.reward.pairwise_loss`; TRL: "
              "`PPOTrainer.batched_forward_pass/compute_rewards/compute_advantages/loss`, `RewardTrainer.compute_loss`). "
              + (f"The PPO check uses {ag.get('ppo_tokens')} response tokens, a perturbed new policy with clip fraction "
                 f"{ag.get('ppo_clipfrac', 0):.2f} (TRL {ag.get('trl_clipfrac', 0):.2f}) and value clip fraction "
                 f"{ag.get('ppo_vf_clipfrac', 0):.2f}, so both clipped branches are exercised." if "ppo_tokens" in ag else ""), "",
              "| quantity | max abs diff | value (ours) |", "|---|---|---|"]
    lines += [f"| {n} | {fe(d)} | {fe(v) if v != '' else ''} |" for n, d, v in agree_rows]
    lines += ["", f"Total wall time: {results['wall']:.0f} s.", ""]
    return "\n".join(lines), ratios

# ------------------------------------------------------------------------------------------------------------------
# 4. real-model mode (--real): SmolLM2-135M-Instruct + LoRA (PPO), MiniLM (reward model), each run in a fresh process
# ------------------------------------------------------------------------------------------------------------------

REAL_POLICY, REAL_RM = "smollm2-135m-instruct", "minilm-l6"
REAL_LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"])
REAL_LORA_B_STD = 0.1   # agreement check only: non-zero LoRA B (peft starts it at 0), so adapter-on != reference

def legacy_model_dir(src, dst) -> str:
    """`dst`: the transformers-5 `save_pretrained` directory `src` as transformers 4.45 reads it the same way.
    config.json: `rope_parameters` -> `rope_theta` / `rope_scaling` (4.45 would silently fall back to theta 10000),
    `dtype` -> `torch_dtype`; tokenizer_config.json: the `TokenizersBackend` class -> `PreTrainedTokenizerFast`, the
    chat template from `chat_template.jinja` (4.45 only reads it from the json). Every other file is symlinked."""
    import json
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    rope = cfg.pop("rope_parameters", None) or {}
    if "rope_theta" in rope: cfg["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default": cfg["rope_scaling"] = rope
    if "dtype" in cfg and "torch_dtype" not in cfg: cfg["torch_dtype"] = cfg.pop("dtype")
    files = {"config.json": cfg}
    if (src / "tokenizer_config.json").exists():
        tc = json.loads((src / "tokenizer_config.json").read_text())
        if tc.get("tokenizer_class") == "TokenizersBackend": tc["tokenizer_class"] = "PreTrainedTokenizerFast"
        for k in ("backend", "is_local", "local_files_only"): tc.pop(k, None)
        if (src / "chat_template.jinja").exists() and not tc.get("chat_template"):
            tc["chat_template"] = (src / "chat_template.jinja").read_text()
        files["tokenizer_config.json"] = tc
    for name, d in files.items():
        tmp = dst / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(d, indent=2)); os.replace(tmp, dst / name)
    for f in src.iterdir():
        if f.name in files or f.name == "chat_template.jinja" or (dst / f.name).exists(): continue
        with contextlib.suppress(FileExistsError): os.symlink(f.resolve(), dst / f.name)
    return str(dst)

def real_policy_dir() -> str:
    "The converted SmolLM2 directory (made once by the project's env), readable by this env's transformers."
    import transformers
    from open_chatgpt.models import MODEL_CACHE
    src = Path(MODEL_CACHE) / REAL_POLICY
    if not (src / "config.json").exists():
        sys.exit(f"{src} is missing: convert the model once in the project's environment: .venv/bin/python -c "
                 f"\"from open_chatgpt.models import resolve_model; resolve_model('{REAL_POLICY}')\"")
    if int(transformers.__version__.split(".")[0]) >= 5: return str(src)
    return legacy_model_dir(src, Path(tempfile.gettempdir()) / "open_chatgpt_bench" / f"{REAL_POLICY}-tf{transformers.__version__}")

def split_matmul_params(model) -> tuple:
    "(frozen, trainable) matmul parameters, counted as `matmul_params` does (LoRA: base weights, adapters + heads)."
    import torch
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    n = [0, 0]
    for p in model.parameters():
        if id(p) not in emb: n[p.requires_grad] += p.numel()
    out = getattr(model, "get_output_embeddings", lambda: None)()
    if out is not None and id(out.weight) in emb: n[out.weight.requires_grad] += out.weight.numel()  # tied LM head
    return n[0], n[1]

def lm_head_params(model: "torch.nn.Module") -> int:
    "Parameters of the causal LM's output projection (vocab x hidden; tied to the input embedding or not)."
    out = getattr(model, "get_output_embeddings", lambda: None)()
    return 0 if out is None else out.weight.numel()

def lora_train_flops(n_frozen: int, n_trainable: int, n_tokens: int, n_head: int = 0, n_scored: int = 0) -> float:
    """FLOPs of one forward + backward pass when only `n_trainable` of the matmul parameters train (LoRA).
    Per token: forward 2(F+L); backward: the activation gradients through every matmul, frozen or not, 2(F+L), and
    the weight gradients of the trainable ones only, 2L: (4F + 6L) x tokens (6N when everything trains). It counts
    the activation gradient of the lowest matmuls too, which autograd skips (their input needs no gradient): an
    overcount of one layer's q/k/v projections (~0.3% at 30 layers). `n_head` of the frozen parameters (the LM head)
    are counted only at the `n_scored` positions whose log-probs are needed (the response tokens): logits at prompt
    positions are not useful work, and our pass does not compute them (`logits_to_keep`)."""
    return (4.0 * (n_frozen - n_head) + 6.0 * n_trainable) * n_tokens + 4.0 * n_head * n_scored

def ppo_update_flops(n_frozen: int, n_trainable: int, n_tokens: int, epochs: int, n_head: int = 0,
                     n_scored: int = 0) -> dict:
    """FLOPs of a LoRA PPO update on `n_tokens` real tokens: `old_ref`, the no-grad forwards of the policy + value
    head (adapters on) and of the reference (adapters off); `train`, `epochs` forward + backward passes. The LM head
    (`n_head` parameters, part of `n_frozen`) counts only at the `n_scored` response tokens (`lora_train_flops`)."""
    body = n_frozen - n_head
    return dict(old_ref=forward_flops(body + n_trainable, n_tokens) + forward_flops(body, n_tokens)
                + 2 * forward_flops(n_head, n_scored),
                train=epochs * lora_train_flops(n_frozen, n_trainable, n_tokens, n_head, n_scored))

def _lm_head_of(runs) -> int:
    "The LM head's parameter count a PPO worker recorded; for results saved before it did, read from the model's config."
    if "lm_head" in runs[0]: return runs[0]["lm_head"]
    from transformers import AutoConfig
    c = AutoConfig.from_pretrained(real_policy_dir())
    return c.vocab_size * c.hidden_size

DEVICE = "cpu"   # real mode: where the workers put the models (--device); on a GPU clock() waits for its queue first

def clock() -> tuple:
    "(wall seconds, CPU seconds of this process). With one torch thread the CPU time counts the work done and not the "
    "time spent waiting for a core, so it is the steadier measure on a machine shared with other jobs. On a GPU "
    "(`DEVICE` cuda) the queued kernels finish first, so the wall time covers the device's work."
    if DEVICE != "cpu":
        import torch
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()

def gpu_matmul_peak(dtype_name: str = "float32", n: int = 8192, iters: int = 20) -> float:
    "Measured matmul throughput of this process's GPU in FLOP/s (n x n @ n x n in `dtype_name`, timed with CUDA events)."
    import torch
    dt = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, device=DEVICE, dtype=dt), torch.randn(n, n, device=DEVICE, dtype=dt)
    for _ in range(3): a @ b   # warm-up
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters): a @ b
    end.record(); torch.cuda.synchronize()
    return 2.0 * n ** 3 * iters / (start.elapsed_time(end) / 1e3)

class CallTimer:
    """Wrap `owner.name` (a module function or an instance's method) so that each call's wall and CPU time are added
    up, separately for calls made with and without autograd (`.grad`, `.nograd`: [wall, cpu] seconds; `.calls`).
    `restore()` undoes it. Only callers that look the name up at call time (module globals, `self.method`) see it."""
    def __init__(self, owner, name: str):
        self.owner, self.name, self.orig = owner, name, getattr(owner, name)
        self.reset()
        orig = self.orig
        def timed(*args, **kw):
            import torch
            grad, c0 = torch.is_grad_enabled(), clock()
            try: return orig(*args, **kw)
            finally:
                c1 = clock(); acc = self.grad if grad else self.nograd
                acc[0] += c1[0] - c0[0]; acc[1] += c1[1] - c0[1]
                self.calls += 1
        setattr(owner, name, timed)
    def reset(self): self.grad, self.nograd, self.calls = [0.0, 0.0], [0.0, 0.0], 0
    def restore(self): setattr(self.owner, self.name, self.orig)

def phase_times(marks: dict, nograd=None, grad=None) -> dict:
    """Phase durations from clock() readings `marks` (start, generated, scored, done): `generation`, `scoring`,
    `logprobs` (the no-grad forwards: old + ref log-probs, values), `update` (the rest of the PPO update),
    `update_forward` (its forwards with grad), `total`; wall time under these names, CPU time under `cpu/<name>`."""
    out = {}
    for i, pre in ((0, ""), (1, "cpu/")):
        t = [marks[k][i] for k in ("start", "generated", "scored", "done")]
        ng = nograd[i] if nograd else 0.0
        out.update({pre + "generation": t[1] - t[0], pre + "scoring": t[2] - t[1], pre + "logprobs": ng,
                    pre + "update": t[3] - t[2] - ng, pre + "update_forward": grad[i] if grad else 0.0,
                    pre + "total": t[3] - t[0]})
    return out

def _proc_status() -> dict:
    "VmHWM (peak resident memory so far), RssAnon and RssFile (file-backed, e.g. mmapped safetensors) in bytes."
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k = line.split(":")[0]
            if k in ("VmHWM", "RssAnon", "RssFile"): out[k] = int(line.split()[1]) * 1024
    return out

def _vmhwm() -> int:
    "The process's peak resident memory so far (VmHWM), in bytes."
    return _proc_status().get("VmHWM", 0)

def _measure(step, warmup) -> dict:
    """`warmup()` (the same code path at tiny lengths: first-call costs, lazily mapped weights), the matmul peak of
    this process right now (wall and CPU clocks), then one timed `step()` with the RSS sampled every 5 ms."""
    _trim()
    st = _proc_status()
    setup = dict(rss_setup=_rss(), rss_setup_anon=st.get("RssAnon", 0), rss_setup_file=st.get("RssFile", 0))
    warmup()
    if DEVICE == "cpu":
        peak = dict(peak_flops=matmul_peak(seconds=0.6), peak_flops_cpu=matmul_peak(seconds=0.6, clock=time.process_time))
    else:   # GPU: the fp32 peak (what the fp32 models use; TF32 off, torch's default) and bf16's for reference
        import torch
        peak = dict(peak_flops=gpu_matmul_peak("float32"), peak_flops_bf16=gpu_matmul_peak("bfloat16"))
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        setup["gpu_setup_allocated"] = torch.cuda.memory_allocated()
    load0 = os.getloadavg()[0]
    with PeakRSS() as m: out = step()
    out.update(setup, **peak, rss_start=m.base, peak_above_start=m.peak, peak_rss=m.base + m.peak, vmhwm=_vmhwm(),
               load_step=(load0, os.getloadavg()[0]))
    if DEVICE != "cpu":
        import torch
        out.update(gpu_peak_allocated=torch.cuda.max_memory_allocated(), gpu_peak_reserved=torch.cuda.max_memory_reserved(),
                   gpu_name=torch.cuda.get_device_name())
    return out

WARMUP_PROMPT, WARMUP_NEW = 16, 4   # the warm-up step: prompts cut to 16 tokens, 4 new tokens (same batch size)

def _real_prompts(a) -> list:
    from open_chatgpt.data import sample_prompts
    return list(sample_prompts("train")["prompt"])[:a.ppo_batch_size]

def _real_tokenizer(path):
    from open_chatgpt.data import get_tokenizer
    from open_chatgpt.models import prepare_tokenizer
    return prepare_tokenizer(get_tokenizer(path))   # eos = <|im_end|>, the chat template's end of turn

def _ours_real_models(path, tok):
    "Our LoRA policy + value head on its backbone and the adapter-disabled reference (`AdapterDisabled`, no copy)."
    from open_chatgpt.ppo import make_ppo_models
    from open_chatgpt.sft import load_policy
    policy = load_policy(path, tokenizer=tok, lora=REAL_LORA)
    ours, ref = make_ppo_models(policy, tok, shared_backbone=True)   # deep-copies the policy: drop the original
    del policy; _trim()
    return ours.to(DEVICE), ref     # ref: the same module with its adapters off (moves with `ours`)

def _proposal_ctx(a, name: str = ""):
    "A patch of bench/profile_real.py (`proposed`: the library changes proposed there) for the `ppo-ours+` worker."
    if not name: return contextlib.nullcontext()
    sys.path.insert(0, str(HERE))
    import profile_real
    return profile_real.CANDIDATES[name]()

def real_ppo_ours(a, proposal: str = "") -> dict:
    "Our side of the real PPO step: rollout (sample_tokens) + score + ppo_step, phases timed (warm-up, then measured)."
    import dataclasses
    import torch
    from open_chatgpt import ppo as P
    from open_chatgpt.ppo_core import AdaptiveKLController
    path = real_policy_dir(); tok = _real_tokenizer(path); prompts = _real_prompts(a)
    cfg = _our_ppo_config(a)
    warm_cfg = dataclasses.replace(cfg, max_prompt_length=WARMUP_PROMPT, max_new_tokens=WARMUP_NEW)
    torch.manual_seed(0)
    ours, ref = _ours_real_models(path, tok)
    frozen, trainable = split_matmul_params(ours)
    head = lm_head_params(ours.policy)
    opt = torch.optim.Adam([p for p in ours.parameters() if p.requires_grad], lr=cfg.learning_rate, eps=1e-5)
    kl_ctl = AdaptiveKLController(cfg.init_kl_coef, cfg.target, cfg.horizon)
    reward = lambda p, r, b: [toy_score(x[m.bool()]) for x, m in zip(b["response"], b["response_mask"])]
    with _proposal_ctx(a, proposal):
        old_ref, fwd = CallTimer(P, "batched_forward"), CallTimer(P, "forward_logprobs_values")  # ppo_step's globals
        def step(c=cfg):
            torch.manual_seed(0); old_ref.reset(); fwd.reset()
            mk = dict(start=clock())
            batch = P.rollout(ours, tok, prompts, c); mk["generated"] = clock()
            _, scores = P.score(reward, batch, c); mk["scored"] = clock()
            P.ppo_step(ours, ref, opt, batch, scores, kl_ctl, c); mk["done"] = clock()
            return dict(phase_times(mk, old_ref.nograd, fwd.grad), prompt_tokens=int(batch["query_mask"].sum()),
                        response_tokens=int(batch["response_mask"].sum()),
                        padded_tokens=int(batch["query"].numel() + batch["response"].numel()))
        out = _measure(step, lambda: step(warm_cfg))
    return dict(out, frozen=frozen, trainable=trainable, lm_head=head)

def real_ppo_trl(a) -> dict:
    "TRL's side: AutoModelForCausalLMWithValueHead + peft_config, ref_model=None; generate + step, phases timed."
    import torch
    import trl
    from peft import LoraConfig
    from open_chatgpt.data import PromptCollator
    path = real_policy_dir(); tok = _real_tokenizer(path); prompts = _real_prompts(a)
    cfg, tcfg, gen = _ppo_configs(a, tok)
    torch.manual_seed(0)
    model = trl.AutoModelForCausalLMWithValueHead.from_pretrained(
        path, peft_config=LoraConfig(task_type="CAUSAL_LM", bias="none", **REAL_LORA), summary_dropout_prob=0.0)
    _disable_dropout(model)
    for c in (model.pretrained_model.config, getattr(model.pretrained_model, "generation_config", None)):
        if c is not None: c.pad_token_id, c.eos_token_id = tok.pad_token_id, tok.eos_token_id
    frozen, trainable = split_matmul_params(model.pretrained_model)
    trainable += sum(p.numel() for p in model.v_head.parameters())
    head = lm_head_params(model.pretrained_model)
    trainer = _trl_trainer(tcfg, model, None, tok)          # ref_model=None: the adapter-disabled policy is the reference
    enc = PromptCollator(tok, cfg.max_prompt_length)([{"prompt": p} for p in prompts])   # our chat-formatted ids
    queries = [ids[m.bool()] for ids, m in zip(enc["input_ids"], enc["attention_mask"])]
    fwd = CallTimer(trainer, "batched_forward_pass")         # no grad: old + ref; with grad: the minibatch forwards
    def step(qs=queries, g=gen):
        torch.manual_seed(0); fwd.reset()
        mk = dict(start=clock())
        responses = trainer.generate(qs, batch_size=len(qs), return_prompt=False, **g); mk["generated"] = clock()
        scores = [torch.tensor(toy_score(r)) for r in responses]; mk["scored"] = clock()
        stats = trainer.step(qs, responses, scores); mk["done"] = clock()
        return dict(phase_times(mk, fwd.nograd, fwd.grad), prompt_tokens=sum(len(q) for q in qs),
                    response_tokens=sum(len(r) for r in responses),
                    trl_timing={k: float(v) for k, v in stats.items() if k.startswith("time/")})
    out = _measure(step, lambda: step([q[-WARMUP_PROMPT:] for q in queries], dict(gen, max_new_tokens=WARMUP_NEW)))
    return dict(out, frozen=frozen, trainable=trainable, lm_head=head)

def _rm_wrapper(rm):
    "Our RewardModel behind the interface TRL's RewardTrainer calls: model(input_ids=..., attention_mask=...)['logits']."
    import torch
    class AsSequenceClassifier(torch.nn.Module):
        def __init__(self, rm): super().__init__(); self.rm = rm
        def forward(self, input_ids, attention_mask=None, return_dict=True, **kw):
            return {"logits": self.rm(input_ids, attention_mask)[:, None]}          # (batch, 1)
    return AsSequenceClassifier(rm)

def real_reward(lib: str, a) -> dict:
    """N steps of reward-model training on MiniLM (mean pooling + linear head: our RewardModel) from the same start:
    ours `train_reward`, or TRL's `RewardTrainer.train()` on the very same module and token ids. Warm-up: 1 step."""
    import torch
    from open_chatgpt.data import PairwiseCollator, sample_pairs
    from open_chatgpt.models import resolve_model
    from open_chatgpt.reward import RewardModel, prepare_reward_tokenizer, train_reward
    B, L, N = a.rm_batch_size, a.rm_max_length, a.rm_steps
    torch.manual_seed(0)
    rm0 = RewardModel.from_pretrained(resolve_model(REAL_RM))
    tok = prepare_reward_tokenizer(rm0.tokenizer)
    pairs = sample_pairs("train").select(range(B * N))
    enc = PairwiseCollator(tok, L, with_prompt=rm0.with_prompt)(list(pairs))   # rows: chosen 0..n-1, rejected n..2n-1
    rows = [ids[m.bool()].tolist() for ids, m in zip(enc["input_ids"], enc["attention_mask"])]
    n = len(pairs)
    frozen, trainable = split_matmul_params(rm0)
    if lib == "ours":
        prep = lambda: copy.deepcopy(rm0)
        run = lambda m, k: train_reward(m, tok, pairs.select(range(B * k)), None, _our_rm_config(B, L, k, a.lr),
                                        progress=False)
    else:
        import trl
        from datasets import Dataset
        ds = Dataset.from_list([dict(input_ids_chosen=rows[i], attention_mask_chosen=[1] * len(rows[i]),
                                     input_ids_rejected=rows[n + i], attention_mask_rejected=[1] * len(rows[n + i]))
                                for i in range(n)])
        prep = lambda: _rm_wrapper(copy.deepcopy(rm0))
        def run(m, k):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = trl.RewardTrainer(model=m, args=_trl_rm_args(B, L, k, a.lr), tokenizer=tok,
                                      train_dataset=ds.select(range(B * k)))
                with contextlib.redirect_stdout(io.StringIO()): t.train()
    def step(k=N):
        m = prep(); _trim()
        c0 = clock(); run(m, k); c1 = clock()
        return dict(total=c1[0] - c0[0], **{"cpu/total": c1[1] - c0[1]})
    return dict(_measure(step, lambda: step(1)), frozen=frozen, trainable=trainable, steps=N,
                tokens=sum(len(r) for r in rows))

def real_agreement(a) -> dict:
    """Our code and TRL's on one real batch: SmolLM2 + the same LoRA weights (B made non-zero) and value head in both;
    our reference is `AdapterDisabled`, TRL's the same model under `disable_adapter` (ref_model=None)."""
    import torch
    import trl
    path = real_policy_dir(); tok = _real_tokenizer(path); prompts = _real_prompts(a)
    _, tcfg, _ = _ppo_configs(a, tok)
    torch.manual_seed(0)
    ours, ref = _ours_real_models(path, tok)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in ours.policy.named_parameters():
            if "lora_B" in name: p.copy_(torch.randn(p.shape, generator=g) * REAL_LORA_B_STD)
        torch.nn.init.normal_(ours.v_head.weight, std=0.05); ours.v_head.bias.fill_(0.1)
    theirs = trl.AutoModelForCausalLMWithValueHead.from_pretrained(copy.deepcopy(ours.policy), summary_dropout_prob=0.0)
    theirs.v_head.summary.load_state_dict(ours.v_head.state_dict())
    _disable_dropout(theirs)
    trainer = _trl_trainer(tcfg, theirs, None, tok)
    results = {"agreement": {}}
    ppo_agreement(tok, None, prompts, a, results, pair=(ours, ref, theirs, trainer))
    return results["agreement"]

REAL_WORKERS = {"ppo-ours": real_ppo_ours, "ppo-trl": real_ppo_trl, "agreement": real_agreement,
                "reward-ours": lambda a: real_reward("ours", a), "reward-trl": lambda a: real_reward("trl", a)}

# per-token agreement tolerances on the real model (max abs difference, response tokens): the tiny mode's 1e-5 for the
# rewards, advantages, returns and losses; log-probs and values 1e-4 (30 fp32 layers, each library with its own padding
# side, so its own attention blocking: ~3e-5 seen); gradients relative to their largest entry
REAL_TOLERANCES = dict(ppo_logprobs=1e-4, ppo_ref_logprobs=1e-4, ppo_values=1e-4, ppo_rewards=1e-5, ppo_advantages=1e-5,
                       ppo_returns=1e-5, ppo_policy_loss=1e-5, ppo_value_loss=1e-5, ppo_total_loss=1e-5, ppo_grad_rel=1e-3,
                       ppo_micro_total_loss=1e-5, ppo_micro_grad_rel=1e-3)   # the same, through micro-batches of one row

def run_worker(name: str, argv: list) -> dict:
    "Run one real-mode measurement in a fresh interpreter (honest RSS peaks, no state shared between libraries)."
    import json
    import subprocess
    fd, out = tempfile.mkstemp(prefix=f"bench_{name.replace('+', 'p')}_", suffix=".json"); os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--real-worker", name, "--worker-out", out]
    load0, c0 = os.getloadavg()[0], time.perf_counter()
    p = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if p.returncode != 0: raise RuntimeError(f"worker {name} failed (exit {p.returncode}): {' '.join(cmd)}")
    res = json.loads(Path(out).read_text()); os.unlink(out)
    res["load"] = (load0, os.getloadavg()[0]); res["worker_wall"] = time.perf_counter() - c0
    return res

def worker_main(a):
    import json
    global DEVICE
    DEVICE = a.device
    if DEVICE != "cpu":
        import torch
        dev = torch.device(DEVICE)                    # cuda:N: syncs, memory stats and the name read this device
        if dev.index is not None: torch.cuda.set_device(dev)   # plain 'cuda' is the current device already
    name = a.real_worker
    res = real_ppo_ours(a, name.split("+", 1)[1]) if name.startswith("ppo-ours+") else REAL_WORKERS[name](a)
    Path(a.worker_out).write_text(json.dumps(res))
    log(f"  [{a.real_worker}] CPU s " + ", ".join(f"{k[4:]} {v:.2f}" for k, v in res.items() if isinstance(v, float)
                                                 and k in ("cpu/generation", "cpu/logprobs", "cpu/update", "cpu/total"))
        + (f" (wall {res['total']:.2f} s)" if "total" in res else "")
        + (f"; load {res['load_step'][0]:.2f} -> {res['load_step'][1]:.2f}" if "load_step" in res else ""))

def real_main(a, argv, info):
    "The real-model benchmark: matmul peak, agreement, reward-model steps, PPO steps (workers alternating)."
    global DEVICE
    DEVICE = a.device
    if DEVICE != "cpu": return real_main_gpu(a, argv, info)
    results = {"agreement": {}}
    t_start = time.perf_counter()
    loads = [os.getloadavg()[0]]
    log("matmul peak ...")
    results["peak_flops"] = matmul_peak(seconds=0.6 if a.quick else 1.5)
    results["peak_flops_cpu"] = matmul_peak(seconds=0.6 if a.quick else 1.5, clock=time.process_time)
    log(f"  {results['peak_flops'] / 1e9:.1f} GFLOP/s per wall second, {results['peak_flops_cpu'] / 1e9:.1f} per CPU second")
    worker_argv = [x for x in argv]
    if "agreement" in a.only:
        log("agreement on one real batch (SmolLM2-135M + LoRA, both libraries in one process) ...")
        small = [] if a.quick else ["--ppo-batch-size", "4", "--ppo-mini-batch-size", "2", "--max-new-tokens", "32"]
        results["agreement"] = run_worker("agreement", worker_argv + small)   # one batch of 4 is enough to compare
    for phase in ("reward", "ppo"):
        if phase not in a.only: continue
        libs = ("ours", "trl") + (tuple(f"ours+{n}" for n in a.proposals) if phase == "ppo" else ())
        log(f"{phase}: {a.repeats} repeat(s) of {', '.join(libs)}, each in a fresh process (a short warm-up step, "
            "then the timed one), order alternating ...")
        res = {lib: [] for lib in libs}
        for r in range(a.repeats):
            for lib in (libs if r % 2 == 0 else libs[::-1]):
                res[lib].append(run_worker(f"{phase}-{lib}", worker_argv)); loads.append(os.getloadavg()[0])
        results[phase] = res
    results["wall"] = time.perf_counter() - t_start
    results["loads"], results["load_end"] = loads, os.getloadavg()[0]
    text = report_real(results, a, info)
    log("\n" + text)
    if a.out:
        Path(a.out).write_text(text); _save_measurements(a, results, info)
        log(f"wrote {a.out} and its measurements, {Path(a.out).with_suffix('.json')} (--render-json re-renders them)")
    return results

def _save_measurements(a, results, info) -> None:
    "Every worker's measurements and the run's arguments beside the report (OUT.json): --render-json re-renders them."
    args = {k: sorted(v) if isinstance(v, set) else v for k, v in vars(a).items()}
    Path(a.out).with_suffix(".json").write_text(json.dumps(dict(results=results, info=info, args=args), indent=1))

def render_real_json(path: str, out: str = "") -> str:
    "The report of an earlier real-mode CPU run, from the measurements it saved (no re-run): after a change of the report."
    d = json.loads(Path(path).read_text())
    a = argparse.Namespace(**{k: set(v) if k == "only" else v for k, v in d["args"].items()})
    text = (report_real_gpu if "gpu" in d["info"] else report_real)(d["results"], a, d["info"])
    if out: Path(out).write_text(text)
    return text

def real_main_gpu(a, argv, info):
    "The real-model benchmark on a GPU: reward-model and PPO steps, ours and TRL alternating, each in a fresh process."
    import torch
    info["gpu"] = torch.cuda.get_device_name()
    results, t_start = {}, time.perf_counter()
    for phase in ("reward", "ppo"):
        if phase not in a.only: continue
        log(f"{phase} on {info['gpu']}: {a.repeats} repeat(s) of ours, trl, alternating, each in a fresh process ...")
        res = {"ours": [], "trl": []}
        for r in range(a.repeats):
            for lib in (("ours", "trl") if r % 2 == 0 else ("trl", "ours")):
                res[lib].append(run_worker(f"{phase}-{lib}", list(argv)))
        results[phase] = res
    results["wall"] = time.perf_counter() - t_start
    results["random_weights"] = bool(os.environ.get("BENCH_RANDOM_WEIGHTS"))
    text = report_real_gpu(results, a, info)
    log("\n" + text)
    if a.out:
        Path(a.out).write_text(text); _save_measurements(a, results, info); log(f"wrote {a.out}")
    return results

def report_real_gpu(results, a, info) -> str:
    "The Markdown report of a GPU real-mode run: wall time (the GPU's queue drained at every mark), peak GPU memory, MFU."
    med = lambda runs, k: median([r[k] for r in runs])
    ratio = lambda o, t: f"{o / t:.2f}" if t else "n/a"
    GiB_ = 2 ** 30
    lines = ["# Benchmark, real models on a GPU: open-chatgpt vs TRL", "",
             f"Device: **{info['gpu']}**; host {info['cpu']}, {info['cores']} cores; Python {info['python']}, torch "
             f"{info.get('torch')}, transformers {info.get('transformers')}, TRL {info.get('trl')}, peft {info.get('peft')}.",
             f"Command: `{' '.join(['python bench/run.py'] + list(a.argv))}`; median of {a.repeats} repeat(s), each in a "
             "fresh process (a short warm-up step, then the timed one), the libraries alternating. fp32 weights in both "
             "(torch's default: TF32 off); every phase mark waits for the GPU (`torch.cuda.synchronize`), and so does "
             "each call of the timed forward functions (both libraries'), which adds a few queue drains to each step."
             + (" **Random weights** (no weights could be downloaded on the GPU machine: bench/gpu.py "
                "--random-init built both models from their configs), so no response ends early: every one runs to the "
                "token limit, in both libraries." if results.get("random_weights", os.environ.get("BENCH_RANDOM_WEIGHTS"))
                else ""), ""]
    if "ppo" in results:
        o, t = results["ppo"]["ours"], results["ppo"]["trl"]
        B = a.ppo_batch_size
        lines += [f"## PPO step: {REAL_POLICY} + LoRA (r={REAL_LORA['r']}), shared-backbone value head", "",
                  f"Batch {B}, minibatch {a.ppo_mini_batch_size}, {a.ppo_epochs} epoch(s), {a.max_new_tokens} new "
                  f"tokens, prompts cut to {a.max_prompt_length} tokens; as in the CPU table.", ""]
        rows = []
        for k, name in (("total", "**PPO step (s)**"), ("generation", "generation"), ("scoring", "scoring"),
                        ("logprobs", "old + ref log-probs, values (no grad)"), ("update", "update (the rest)")):
            wo, wt = med(o, k), med(t, k)
            rows.append([name, f"{wo:.3f}", f"{wt:.3f}", ratio(wo, wt) if wt >= 0.005 else "n/a"])   # ms: noise
        resp = [med(r, "response_tokens") for r in (o, t)]
        rows.append(["PPO step, each run in order (s)", *[", ".join(f"{x['total']:.2f}" for x in r) for r in (o, t)], ""])
        rows.append(["response tokens in the batch", *[f"{x:.0f}" for x in resp], ""])
        rows.append(["generation: new tokens per s", *[f"{x / med(r, 'generation'):.0f}" for x, r in zip(resp, (o, t))],
                     ratio(resp[1] / med(t, "generation"), resp[0] / med(o, "generation")) + " (TRL/ours)"])
        pa = [max(x["gpu_peak_allocated"] for x in r) / GiB_ for r in (o, t)]
        rows.append(["**peak GPU memory allocated during the step (GiB)**", f"{pa[0]:.2f}", f"{pa[1]:.2f}", ratio(*pa)])
        rr = [max(x["gpu_peak_reserved"] for x in r) / GiB_ for r in (o, t)]
        rows.append(["peak GPU memory reserved by the allocator (GiB)", f"{rr[0]:.2f}", f"{rr[1]:.2f}", ratio(*rr)])
        F, L, H = o[0]["frozen"], o[0]["trainable"], _lm_head_of(o)
        T = [med(r, "prompt_tokens") + med(r, "response_tokens") for r in (o, t)]
        pk = median([x["peak_flops"] for x in o + t])                    # one common peak: the workers' median
        mfu = [median([ppo_update_flops(F, L, TT, a.ppo_epochs, H, med(r, "response_tokens"))["train"] / x["update"] / pk
                       for x in r]) for TT, r in zip(T, (o, t))]
        rows.append(["update MFU vs the measured fp32 matmul peak", *[f"{100 * m:.1f}%" for m in mfu], ""])
        lines += [markdown_table(["", "open-chatgpt", "TRL", "ours / TRL"], rows), "",
                  f"Measured matmul peak of the GPU (8192^3, median over the workers): fp32 "
                  f"{median([x['peak_flops'] for x in o + t]) / 1e12:.1f} TFLOP/s, bf16 "
                  f"{median([x['peak_flops_bf16'] for x in o + t]) / 1e12:.0f} TFLOP/s. MFU counts (4F + 6L) FLOPs per "
                  "real token of the update, the LM head only at response tokens (as in the CPU table), over its wall "
                  "time, against the fp32 median.", ""]
    if "reward" in results:
        o, t = results["reward"]["ours"], results["reward"]["trl"]
        N = o[0]["steps"]
        wo, wt = med(o, "total") / N, med(t, "total") / N
        pa = [max(x["gpu_peak_allocated"] for x in r) / GiB_ for r in (o, t)]
        lines += [f"## Reward-model step: {REAL_RM}, {N} steps of {a.rm_batch_size} pairs, max_length {a.rm_max_length}", "",
                  markdown_table(["", "open-chatgpt", "TRL", "ours / TRL"],
                                 [["**step (s, set-up included, as in the CPU table)**", f"{wo:.3f}", f"{wt:.3f}", ratio(wo, wt)],
                                  ["peak GPU memory allocated (GiB)", f"{pa[0]:.2f}", f"{pa[1]:.2f}", ratio(*pa)]]), ""]
    lines += [f"Total wall time: {results['wall']:.0f} s.", ""]
    return "\n".join(lines)

def report_real(results, a, info) -> str:
    "The Markdown report of a real-mode run: CPU time first (steady on a shared machine), wall time beside it."
    peak, peak_cpu = results["peak_flops"], results["peak_flops_cpu"]
    med = lambda runs, k: median([r[k] for r in runs])
    ratio = lambda o, t: f"{o / t:.2f}" if t else "n/a"
    pct = lambda x, tot: f"{100 * x / tot:.0f}%" if tot else ""
    load_end = results.get("load_end", os.getloadavg()[0])
    loads = results.get("loads", [info["load"][0], load_end])
    shared = max(loads + [load_end]) > 1.5
    lines = ["# Benchmark, real models: open-chatgpt vs TRL", "",
             f"Machine: {info['cpu']}, {info['cores']} cores ({info.get('threads')} torch thread(s)), "
             f"{info.get('mem_gib', '?')} GiB; Python {info['python']}, torch {info.get('torch')}, "
             f"transformers {info.get('transformers')}, TRL {info.get('trl')}, peft {info.get('peft')}.",
             f"Load average (1 min) at start {info['load'][0]:.2f} / end {load_end:.2f} (min {min(loads):.2f}, max "
             f"{max(loads):.2f} between measurements)."
             + (f" **Timings were taken on a machine shared with other jobs** (a load above 1 means other processes "
                f"competed for the {info['cores']} cores): wall times are inflated and noisy, so the tables lead with the "
                "CPU time of each measurement's process (one torch thread: the work done, not the waiting), wall time "
                "beside it." if shared else " The tables show CPU time (one torch thread) and wall time."),
             f"Command: `{' '.join(['python bench/run.py'] + list(a.argv))}`; median of {a.repeats} repeat(s); each "
             "measurement runs in a fresh process (a short warm-up step at tiny lengths, then the timed step), the "
             "libraries alternating.",
             f"Matmul peak (fp32, 1024x1024 @ 1024x1024, same threads), measured at the start: **{peak_cpu / 1e9:.1f} "
             f"GFLOP per CPU second** ({peak / 1e9:.1f} per wall second); each worker measures it again just before its "
             "timed step. Every MFU below divides by one common peak, not by each worker's own (a worker that happened "
             "to measure a low peak would otherwise score a higher MFU): for PPO the median over the PPO workers (per "
             "CPU second for the CPU columns, per wall second for the wall columns), for the reward model the median "
             "over its workers.", ""]
    goals = []
    if "ppo" in results:
        o, t = results["ppo"]["ours"], results["ppo"]["trl"]
        props = [(f"ours + {k[5:]}", v) for k, v in results["ppo"].items() if k.startswith("ours+")]
        op = bool(props)
        B = a.ppo_batch_size
        everyone = o + t + [r for _, pr in props for r in pr]
        pk_cpu, pk_wall = median([r["peak_flops_cpu"] for r in everyone]), median([r["peak_flops"] for r in everyone])
        lines += [f"## PPO step: {REAL_POLICY} + LoRA (r={REAL_LORA['r']}, alpha {REAL_LORA['lora_alpha']}, "
                  f"{'/'.join(REAL_LORA['target_modules'])}), shared-backbone value head", "",
                  f"Batch {B}, minibatch {a.ppo_mini_batch_size}{_micro_note(a)}, {a.ppo_epochs} epoch(s), {a.max_new_tokens} new tokens "
                  f"(temperature 1, no top-k/top-p), chat-formatted HH prompts cut to {a.max_prompt_length} tokens (the "
                  "same ids in both), reward = fraction of even token ids, Adam lr 1e-5 eps 1e-5, clip 1.0, adaptive KL; "
                  "ours: `rollout` (`sample_tokens`) + `score` + `ppo_step`; TRL 0.11.4: `PPOTrainer.generate` (HF "
                  "`generate`) + `step`, `ref_model=None` (adapter-disabled reference, as ours)."
                  + (" *ours + X*: the same code with bench/profile_real.py's variant X (`grad_checkpointing`: "
                     "`PPOConfig(gradient_checkpointing=True)`, activation checkpointing in the update; `whole_minibatch`: "
                     "`micro_batch_size=0`, the PPOConfig default, one padded forward/backward per minibatch; `bf16_sampling`: "
                     "`generation_dtype=\"bfloat16\"`, the rollout under bf16 autocast as the pipeline's real run samples on "
                     "CPUs with native bf16, the old/ref forwards and the update in fp32; `proposed`, "
                     "`proposed_ckpt`: the patches measured before the LM-head and padding changes landed; see "
                     "bench/README.md)." if op else ""), ""]
        sides = [("open-chatgpt", o)] + props + [("TRL", t)]
        head = [""] + [f"{n} CPU s" for n, _ in sides] + [f"{n} / TRL CPU" for n, _ in sides[:-1]] \
            + [f"{n} wall s" for n, _ in sides] + ["ours / TRL wall"]
        rows = []
        for k, name in (("total", "**PPO step**"), ("generation", "generation (rollout)"), ("scoring", "scoring"),
                        ("logprobs", "old + ref log-probs, values (no grad)"), ("update", "update (the rest)"),
                        ("update_forward", "&nbsp;&nbsp;of which forwards with grad"), ("update_rest", "&nbsp;&nbsp;"
                         "of which backward, optimiser, GAE, stats")):
            g = (lambda runs, pre: med(runs, pre + "update") - med(runs, pre + "update_forward")) if k == "update_rest" \
                else (lambda runs, pre, k=k: med(runs, pre + k))
            cpu = [g(r, "cpu/") for _, r in sides]; wall = [g(r, "") for _, r in sides]
            tot = [med(r, "cpu/total") for _, r in sides]
            cells = [f"{c:.2f} ({pct(c, tt)})" if k != "total" else f"**{c:.2f}**" for c, tt in zip(cpu, tot)]
            rr = [ratio(c, cpu[-1]) for c in cpu[:-1]]
            if k == "total": rr = [f"**{x}**" for x in rr]
            rows.append([name, *cells, *rr, *[f"{w:.2f}" for w in wall], ratio(wall[0], wall[-1])])
        lines += [markdown_table(head, rows), ""]
        # tokens/s, memory
        rows2 = []
        resp = [med(r, "response_tokens") / B for _, r in sides]
        rows2.append(["mean response length (tokens)", *resp])
        T = [med(r, "prompt_tokens") + med(r, "response_tokens") for _, r in sides]
        rows2.append(["real tokens in the batch (prompt + response)", *T])
        rows2.append(["generation: new tokens per CPU s", *[med(r, "response_tokens") / med(r, "cpu/generation") for _, r in sides]])
        rows2.append(["whole step: real tokens per CPU s", *[tt / med(r, "cpu/total") for tt, (_, r) in zip(T, sides)]])
        rows2.append([f"update: tokens per CPU s ({a.ppo_epochs} epoch(s) x real tokens / update time)",
                      *[a.ppo_epochs * tt / med(r, "cpu/update") for tt, (_, r) in zip(T, sides)]])
        for k, name in (("peak_rss", "**peak RSS during the step (MiB, whole process)**"),
                        ("peak_above_start", "peak RSS above the step's start (MiB)"),
                        ("rss_setup", "RSS after set-up (MiB)"), ("rss_setup_file", "&nbsp;&nbsp;of which file-backed "
                         "(mmapped weights, MiB)"), ("vmhwm", "process high-water mark incl. loading (MiB)")):
            rows2.append([name, *[max(x[k] for x in r) / MiB for _, r in sides]])
        rows2 = [r + [ratio(x, r[-1]) for x in r[1:-1]] for r in rows2]
        lines += [markdown_table([""] + [n for n, _ in sides] + [f"{n} / TRL" for n, _ in sides[:-1]], rows2), ""]
        lines += ["RSS is sampled every 5 ms (max over the repeats). TRL loads the weights from the safetensors file "
                  "by mmap (file-backed pages, resident once touched); ours deep-copies the loaded policy in "
                  "`make_ppo_models` (anonymous memory), so right after set-up TRL's weights are not yet resident. "
                  "During the step both hold all weights.", ""]
        F, L, H = o[0]["frozen"], o[0]["trainable"], _lm_head_of(o)
        R_tok = [med(r, "response_tokens") for _, r in sides]
        mfu_rows = []
        for (side, runs), TT, RR in zip(sides, T, R_tok):
            fl = ppo_update_flops(F, L, TT, a.ppo_epochs, H, RR)
            for name, flops, keys in (("training passes (update)", fl["train"], ("update",)),
                                      ("update + old/ref forwards", fl["train"] + fl["old_ref"], ("update", "logprobs"))):
                cpu_s = median([sum(r["cpu/" + k] for k in keys) for r in runs])
                wall_s = median([sum(r[k] for k in keys) for r in runs])
                mfu_cpu = median([(flops / sum(r["cpu/" + k] for k in keys)) / pk_cpu for r in runs])
                mfu_wall = median([(flops / sum(r[k] for k in keys)) / pk_wall for r in runs])
                mfu_rows.append([f"{name} ({side})", int(TT), flops / 1e9, flops / cpu_s / 1e9,
                                 f"**{100 * mfu_cpu:.1f}%**" if name.startswith("training") else f"{100 * mfu_cpu:.1f}%",
                                 flops / wall_s / 1e9, f"{100 * mfu_wall:.1f}%"])
        pks = [r["peak_flops_cpu"] / 1e9 for r in everyone]
        lines += ["### Model FLOPs utilisation of the update", "",
                  f"Matmul parameters: {F / 1e6:.1f} M frozen (embedding lookups excluded, the tied LM head included) + "
                  f"{L / 1e6:.2f} M trainable (LoRA A/B, value head). A LoRA training pass costs (4F + 6L) FLOPs per "
                  "token: forward 2(F+L), activation gradients through every matmul 2(F+L), weight gradients only for the "
                  "adapters 2L (the 6N rule would claim 1.5x more work). The old/ref forwards cost 2(F+L) + 2F per token (the LM "
                  "head, as below, at response tokens only). "
                  f"Tokens = real (non-pad) prompt + response tokens of the batch, except that the LM head ({H / 1e6:.1f} "
                  "M of F) counts only at the response tokens, whose log-probs PPO needs; padding, logits at prompt "
                  "positions and attention scores are not counted (they are work, not useful work), so the MFU is a "
                  f"lower bound. MFU = achieved / one matmul peak for every worker, the median of their measurements "
                  f"({pk_cpu / 1e9:.1f} GFLOP per CPU second; they ranged {min(pks):.1f}-{max(pks):.1f}).", "",
                  markdown_table(["", "tokens", "GFLOP", "GFLOP per CPU s", "MFU (CPU)", "GFLOP per wall s", "MFU (wall)"],
                                 mfu_rows), ""]
        if t[0].get("trl_timing"):
            tk = {k: median([r["trl_timing"].get(k, float('nan')) for r in t]) for k in t[0]["trl_timing"]}
            lines += ["TRL's own `time/ppo/*` of the timed step (wall s): " + ", ".join(f"{k[9:]} {v:.2f}" for k, v in tk.items()), ""]
        r_step = med(o, "cpu/total") / med(t, "cpu/total"); r_rss = max(x["peak_rss"] for x in o) / max(x["peak_rss"] for x in t)
        mfu = median([(ppo_update_flops(F, L, T[0], a.ppo_epochs, H, R_tok[0])["train"] / r["cpu/update"]) / pk_cpu for r in o])
        goals += [("PPO step <= 0.8x TRL's time (CPU)", f"{r_step:.2f}x", r_step <= 0.8),
                  ("peak RSS <= 0.6x TRL's (whole process)", f"{r_rss:.2f}x", r_rss <= 0.6),
                  ("training MFU >= 50% of the matmul peak", f"{100 * mfu:.1f}%", mfu >= 0.5)]
        for i, (name, pr) in enumerate(props, 1):
            r2 = med(pr, "cpu/total") / med(t, "cpu/total"); rs2 = max(x["peak_rss"] for x in pr) / max(x["peak_rss"] for x in t)
            m2 = median([(ppo_update_flops(F, L, T[i], a.ppo_epochs, H, R_tok[i])["train"] / r["cpu/update"]) / pk_cpu
                         for r in pr])
            goals += [(f"... {name}: PPO step", f"{r2:.2f}x", r2 <= 0.8),
                      (f"... {name}: peak RSS", f"{rs2:.2f}x", rs2 <= 0.6),
                      (f"... {name}: training MFU", f"{100 * m2:.1f}%", m2 >= 0.5)]
    if "reward" in results:
        o, t = results["reward"]["ours"], results["reward"]["trl"]
        N, tok_n = o[0]["steps"], o[0]["tokens"]
        n_mm = o[0]["frozen"] + o[0]["trainable"]
        rows = []
        so, st = med(o, "cpu/total") / N, med(t, "cpu/total") / N
        wo, wt = med(o, "total") / N, med(t, "total") / N
        rows.append(["**reward-model training step (CPU s/step)**", so, st, f"**{ratio(so, st)}**"])
        rows.append(["reward-model training step (wall s/step)", wo, wt, ratio(wo, wt)])
        rows.append(["tokens per CPU s", tok_n / N / so, tok_n / N / st, ratio(st, so) + " (TRL/ours)"])
        pk_rm = median([r["peak_flops_cpu"] for r in o + t])                  # one common peak, as for PPO
        mo = median([train_flops(n_mm, tok_n) / r["cpu/total"] / pk_rm for r in o])
        mt = median([train_flops(n_mm, tok_n) / r["cpu/total"] / pk_rm for r in t])
        rows.append(["MFU (6 x matmul params x real tokens, CPU time)", f"{100 * mo:.1f}%", f"{100 * mt:.1f}%", ""])
        for k, name in (("peak_rss", "peak RSS during training (MiB, whole process)"),
                        ("peak_above_start", "peak RSS above start (MiB)")):
            mo_, mt_ = max(r[k] for r in o) / MiB, max(r[k] for r in t) / MiB
            rows.append([name, mo_, mt_, ratio(mo_, mt_)])
        lines += [f"## Reward-model step: {REAL_RM} (all-MiniLM-L6-v2), mean pooling + linear head", "",
                  f"{N} steps of {a.rm_batch_size} HH pairs, max_length {a.rm_max_length}, AdamW lr {a.lr}, no "
                  "warm-up, clip 1.0, dropout as pre-trained (0.1). Both libraries train the very same module "
                  "(our `RewardModel`: BERT's own pooler + classifier would read [CLS] instead, a different model), "
                  "on the same token ids ([CLS] prompt response [SEP]); ours: `train_reward` (one forward over "
                  "chosen + rejected), TRL: `RewardTrainer.train()` (HF Trainer, two forwards), set-up included, "
                  f"per step; warm-up: one step. {n_mm / 1e6:.1f} M matmul params, {tok_n} real tokens.", "",
                  markdown_table(["", "open-chatgpt", "TRL", "ours / TRL"], rows), ""]
    if goals:
        lines += ["## Goals (issue 17)", "", "| goal | measured | met |", "|---|---|---|"]
        lines += [f"| {g} | {m} | {'yes' if ok else '**no**'} |" for g, m, ok in goals]
        lines += [""]
    ag = results.get("agreement") or {}
    if ag:
        fe = lambda x: f"{x:.2e}" if isinstance(x, float) else str(x)
        keys = [f"ppo_{k}" for k in ("logprobs", "ref_logprobs", "values", "rewards", "advantages", "returns")] + \
               ["ppo_policy_loss", "ppo_value_loss", "ppo_total_loss", "ppo_grad", "ppo_grad_rel", "ppo_micro_total_loss",
                "ppo_micro_grad_rel"]
        names = {"ppo_policy_loss": "PPO: policy loss", "ppo_value_loss": "PPO: value loss (x vf_coef)",
                 "ppo_total_loss": "PPO: total loss", "ppo_grad": "PPO: gradients (LoRA + value head), abs",
                 "ppo_grad_rel": "PPO: gradients, relative to the largest",
                 "ppo_micro_total_loss": "PPO, micro-batches of one row: total loss",
                 "ppo_micro_grad_rel": "PPO, micro-batches of one row: gradients, relative"}
        rows = [[names.get(k, "PPO per token: " + k[4:]), fe(ag[k]), fe(REAL_TOLERANCES.get(k, float("nan")))
                 if k in REAL_TOLERANCES else "", ("yes" if ag[k] <= REAL_TOLERANCES[k] else "**no**")
                 if k in REAL_TOLERANCES else ""] for k in keys if k in ag]
        lines += ["## Numerical agreement with TRL on one real batch", "",
                  f"SmolLM2-135M + LoRA in both libraries, the same LoRA weights (B drawn with std {REAL_LORA_B_STD}, so "
                  f"the adapter changes the policy: mean per-token KL to the reference {ag.get('ppo_kl', float('nan')):.3f}), "
                  "the same value head; one rollout of ours; each library runs its own forward pass (ours left-padded "
                  "with position ids, TRL right-padded), rewards/GAE and losses; the new policy is a perturbation of "
                  f"the adapters (clip fraction ours {ag['ppo_clipfrac']:.2f}, TRL {ag['trl_clipfrac']:.2f}; value clip "
                  f"fraction {ag['ppo_vf_clipfrac']:.2f}); {ag['ppo_tokens']} response tokens. Tolerances: the tiny "
                  "mode's 1e-5 for rewards, advantages, returns and losses; 1e-4 for log-probs and values (30 fp32 "
                  "layers computed with different padding, hence different attention blocking).", "",
                  markdown_table(["quantity", "max abs diff", "tolerance", "within"], rows), ""]
    lines += [f"Total wall time: {results['wall']:.0f} s.", ""]
    return "\n".join(lines)

# ------------------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, ~1 min)")
    p.add_argument("--only", default="all", help="comma list of: agreement,reward,ppo,generation (default all)")
    p.add_argument("--render-json", default="", help="re-render the report of a real-mode run from the measurements it "
                   "saved (OUT.json beside its OUT.md) into --out, without running anything")
    p.add_argument("--out", default=None, help="Markdown results file (default bench/results.md; --quick: none; '' to skip)")
    p.add_argument("--real", action="store_true",
                   help="real models: SmolLM2-135M-Instruct + LoRA (PPO), MiniLM (reward model); each measurement in a "
                        "fresh process; writes bench/results-real.md")
    p.add_argument("--rm-batch-size", type=int, default=None, help="default 8")
    p.add_argument("--rm-max-length", type=int, default=None, help="default 64 (--real: 256)")
    p.add_argument("--rm-steps", type=int, default=None, help="default 4 (--real: 2)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--ppo-batch-size", type=int, default=None, help="default 8")
    p.add_argument("--ppo-mini-batch-size", type=int, default=None, help="default 4")
    p.add_argument("--ppo-micro-batch-size", type=int, default=None,
                   help="ours only: rows per forward/backward pass inside a minibatch (the same loss); default 0, the "
                        "whole minibatch (--real on a CPU: 1, as the pipeline's real run)")
    p.add_argument("--ppo-epochs", type=int, default=None, help="default 2 (--real: 1)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 32 (--real: 48)")
    p.add_argument("--max-prompt-length", type=int, default=None, help="default 48 (--real: 128)")
    p.add_argument("--gen-batch-size", type=int, default=4)
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: stable on a shared machine, where 2 OpenMP threads "
                        "competing with other jobs slowed some phases 10-40x; 0: torch's default, one per core)")
    p.add_argument("--perturb", type=float, default=0.3, help="relative weight noise of the 'new' policy in the PPO check")
    p.add_argument("--proposal", nargs="?", const="proposed", default="",
                   help="--real: also time our PPO step with patches of bench/profile_real.py applied, a comma list "
                        "(default `proposed`: the proposed library changes; `proposed_ckpt` adds activation checkpointing)")
    p.add_argument("--device", default="cpu", help="--real: cpu (default) or cuda (a GPU: wall times, peak GPU memory)")
    p.add_argument("--real-worker", default=None, help=argparse.SUPPRESS)   # internal: one real-mode measurement
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    sizes = dict(rm_batch_size=8, rm_max_length=64, rm_steps=4, ppo_batch_size=8, ppo_mini_batch_size=4, ppo_epochs=2,
                 max_new_tokens=32, max_prompt_length=48, ppo_micro_batch_size=0)
    if a.real:   # one real PPO step costs ~40 CPU s here: sizes that keep 3 repeats x 2 libraries near 10 minutes
        sizes.update(rm_max_length=256, rm_steps=2, ppo_epochs=1, max_new_tokens=48, max_prompt_length=128,
                     ppo_micro_batch_size=1 if a.device == "cpu" else 0)   # one row per pass on a CPU (no padding)
    if a.quick:   # tiny sizes, except those given on the command line
        sizes.update(rm_batch_size=4, rm_steps=2, rm_max_length=64, ppo_batch_size=4, ppo_mini_batch_size=2, ppo_epochs=1,
                     max_new_tokens=8)
        a.repeats = min(a.repeats, 1); a.gen_batch_size, a.gen_tokens = 2, 8
    for k, v in sizes.items():
        if getattr(a, k) is None: setattr(a, k, v)
    if a.out is None and not a.render_json: a.out = "" if a.quick else str(HERE / (("results-real.md" if a.device == "cpu" else "results-real-gpu.md")
                                                             if a.real else "results.md"))
    if a.device != "cpu" and not a.real: p.error("--device is for the real mode: add --real")
    a.only = set(a.only.split(",")) if a.only != "all" else {"agreement", "reward", "ppo", "generation"}
    a.proposals = [x for x in a.proposal.split(",") if x]
    if a.device != "cpu" and a.proposals: p.error("--proposal is not measured on a GPU (the CPU report only)")
    if a.real: a.only -= {"generation"}   # the tiny mode's KV-cache comparison; real mode times generation in PPO
    return a

def main(argv=None):
    # fixed mmap threshold: freed tensors go back to the OS, so per-phase RSS peaks are not hidden by reused heap
    # (not in the real mode: there every tensor above 64 KiB would be a fresh mmap, and the page faults and zeroing
    # cost both libraries ~35-45% more CPU per PPO step; each real measurement runs in its own fresh process, whose
    # peak RSS glibc's default allocator leaves honest)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and argv is None and "--real" not in sys.argv[1:]:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    a = parse_args(argv)
    if a.render_json:
        text = render_real_json(a.render_json, a.out or "")          # no --out: print only, overwrite nothing
        print(text); return
    t_start = time.perf_counter()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    if a.threads: torch.set_num_threads(a.threads)
    if a.real_worker: return worker_main(a)   # one real-mode measurement, in its own process (see real_main)
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("TRL is not installed here: run `bash bench/setup.sh` and use bench/.venv/bin/python bench/run.py")
    if a.real:
        try: import peft  # noqa: F401
        except ImportError: sys.exit("the real mode needs peft in this environment: bench/.venv/bin/pip install peft==0.13.2")
    from open_chatgpt.data import get_tokenizer, sample_pairs, sample_prompts
    from open_chatgpt.sft import tiny_policy
    info = machine_info()
    log(f"machine: {info['cpu']} | {info['cores']} cores, {info.get('threads')} torch threads | load {info['load'][0]:.2f} | "
        f"torch {info.get('torch')} | transformers {info.get('transformers')} | trl {info.get('trl')}")
    if a.real: return real_main(a, a.argv, info), {}
    tok = get_tokenizer()
    policy = tiny_policy(tok)  # GPT-2, 4 layers, 256 wide, vocab 4096: the course's default model
    pairs = sample_pairs("train")
    prompts = list(sample_prompts("train")["prompt"])
    results = {"agreement": {}}
    log("matmul peak ...")
    results["peak_flops"] = matmul_peak(seconds=0.6 if a.quick else 1.5)
    log(f"  {results['peak_flops'] / 1e9:.1f} GFLOP/s")
    have_reward = True
    try:
        import open_chatgpt.reward  # noqa: F401
    except ImportError as e:
        have_reward = False; log(f"  (open_chatgpt.reward not importable: {e}; reward-model parts skipped)")
    if "agreement" in a.only:
        log("agreement on the same batch ...")
        ppo_agreement(tok, policy, prompts, a, results)
    if "reward" in a.only and have_reward:
        log(f"reward model: {a.rm_steps} steps x batch {a.rm_batch_size}, max_length {a.rm_max_length} ...")
        bench_reward(tok, policy, pairs, a, results)
    elif "agreement" in a.only and have_reward:
        bench_reward_agreement_only(tok, policy, pairs, a, results)
    if "ppo" in a.only:
        log(f"PPO step: {a.ppo_batch_size} prompts x {a.max_new_tokens} new tokens, {a.ppo_epochs} epochs of "
            f"minibatch {a.ppo_mini_batch_size} ...")
        bench_ppo(tok, policy, prompts, a, results)
    if "generation" in a.only:
        log(f"generation: {a.gen_batch_size} prompts x {a.gen_tokens} tokens, KV cache on/off ...")
        bench_generation(tok, policy, prompts, a, results)
    results["wall"] = time.perf_counter() - t_start
    text, ratios = report(results, a, info)
    log("\n" + text)
    if a.out:
        Path(a.out).write_text(text)
        log(f"wrote {a.out}")
    return results, ratios

def bench_reward_agreement_only(tok, policy, pairs, a, results):
    "The reward-model agreement check without the timing (for --only agreement)."
    bench_reward(tok, policy, pairs, a, results, timing=False)

if __name__ == "__main__":
    main()

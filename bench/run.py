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
"""
import argparse
import contextlib
import copy
import ctypes
import gc
import io
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
    for mod in ("torch", "transformers", "trl", "accelerate"):
        with contextlib.suppress(ImportError): info[mod] = __import__(mod).__version__
    with contextlib.suppress(ImportError):
        import torch; info["threads"] = torch.get_num_threads()
    return info

def matmul_peak(n: int = 1024, seconds: float = 1.0, rounds: int = 3) -> float:
    "Measured fp32 matmul throughput of this machine in FLOP/s: best of `rounds` timed loops of n x n @ n x n."
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3): a @ b  # warm-up
    best = 0.0
    for _ in range(rounds):
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / rounds or k < 2:
            torch.matmul(a, b); k += 1
        best = max(best, 2.0 * n ** 3 * k / (time.perf_counter() - t0))
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
    "Tokenise pairs exactly like our PairwiseCollator (prompt cut from the left, eos appended) for both libraries."
    from open_chatgpt.data import truncate_left
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]
    feats = []
    for r in records:
        f = {}
        for key in ("chosen", "rejected"):
            p, resp = truncate_left(enc(r["prompt"]), enc(r[key]) + [tok.eos_token_id], max_length)
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
    cfg_fields = {f for f in getattr(R.RewardConfig, "__dataclass_fields__", {})}
    def ours():
        m = _our_reward_model(policy, tok)
        kw = dict(batch_size=B, learning_rate=a.lr, max_length=L, max_steps=N, epochs=1, seed=0, eval_every=0,
                  log_every=N, warmup=0, weight_decay=0.0, max_grad_norm=1.0, output_dir=None, grad_accum=1,
                  bf16=False, device="cpu")
        cfg = R.RewardConfig(**{k: v for k, v in kw.items() if k in cfg_fields})
        R.train_reward(m, tok, pairs.select(range(B * N)), None, cfg, progress=False)
    def theirs():
        m, _ = _trl_reward_model(_our_reward_model(policy, tok), tok)
        args = trl.RewardConfig(output_dir=tempfile.mkdtemp(prefix="bench_rm_"), report_to=[], max_length=L,
                                per_device_train_batch_size=B, learning_rate=a.lr, max_steps=N, num_train_epochs=1,
                                warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant",
                                logging_steps=N, save_strategy="no", eval_strategy="no", remove_unused_columns=False,
                                use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = trl.RewardTrainer(model=m, args=args, tokenizer=tok, train_dataset=ds_trl)
            with contextlib.redirect_stdout(io.StringIO()): t.train()  # Trainer prints its log dicts
    res = interleaved(dict(ours=ours, trl=theirs), a.repeats)
    results["reward"] = dict(steps=N, tokens=n_real_tokens, params=matmul_params(_our_reward_model(policy, tok)), **res)

# ------------------------------------------------------------------------------------------------------------------
# 2. PPO: our rollout + ppo_step vs TRL PPOTrainer.generate + step
# ------------------------------------------------------------------------------------------------------------------

def _ppo_configs(a, tok):
    import trl
    from open_chatgpt.ppo import PPOConfig
    common = dict(learning_rate=a.lr, batch_size=a.ppo_batch_size, mini_batch_size=a.ppo_mini_batch_size,
                  gradient_accumulation_steps=1, ppo_epochs=a.ppo_epochs, gamma=1.0, lam=0.95, cliprange=0.2,
                  cliprange_value=0.2, vf_coef=0.1, init_kl_coef=0.2, adap_kl_ctrl=True, target=6.0, horizon=10000,
                  max_grad_norm=1.0, whiten_rewards=False)
    ours = PPOConfig(**common, max_new_tokens=a.max_new_tokens, max_prompt_length=a.max_prompt_length, top_k=0,
                     top_p=1.0, temperature=1.0, shared_backbone=True, seed=0)
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

def ppo_agreement(tok, policy, prompts, a, results):
    "Same rollout batch through both libraries: log-probs, values, rewards, advantages, returns and the losses."
    import torch
    from open_chatgpt import ppo as P
    from open_chatgpt.ppo_core import (compute_gae, compute_rewards, masked_whiten, ppo_policy_loss, ppo_value_loss)
    from open_chatgpt.ppo_core import masked_mean
    cfg, tcfg, _ = _ppo_configs(a, tok)
    ours, ref, theirs, theirs_ref = _make_pair(policy, tok, a, v_head_std=0.05)
    trainer = _trl_trainer(tcfg, theirs, theirs_ref, tok)
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
        t_ref, _, _, _ = trainer.batched_forward_pass(theirs_ref, q, r, mi)
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
    agree.update(ppo_policy_loss=abs(float(pg) - float(t_pg)), ppo_value_loss=abs(float(cfg.vf_coef * vf) - float(t_vf)),
                 ppo_total_loss=abs(float(our_total) - float(trl_total)), ppo_grad=gdiff,
                 ppo_total_value=float(our_total), ppo_clipfrac=float(pg_stats["policy/clipfrac"]),
                 ppo_vf_clipfrac=float(vf_stats["val/clipfrac"]),
                 trl_clipfrac=float(t_stats["policy/clipfrac"]), ppo_tokens=int(mask.sum()))
    results["agreement"].update(agree)
    log(f"  PPO total loss ours {float(our_total):.6f}  TRL {float(trl_total):.6f}  |diff| {agree['ppo_total_loss']:.2e}  "
        f"(policy {agree['ppo_policy_loss']:.2e}, value {agree['ppo_value_loss']:.2e}); clipfrac ours "
        f"{agree['ppo_clipfrac']:.3f} TRL {agree['trl_clipfrac']:.3f}; max |grad diff| {gdiff:.2e}")
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

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, ~1 min)")
    p.add_argument("--only", default="all", help="comma list of: agreement,reward,ppo,generation (default all)")
    p.add_argument("--out", default=None, help="Markdown results file (default bench/results.md; --quick: none; '' to skip)")
    p.add_argument("--rm-batch-size", type=int, default=8)
    p.add_argument("--rm-max-length", type=int, default=64)
    p.add_argument("--rm-steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--ppo-batch-size", type=int, default=8)
    p.add_argument("--ppo-mini-batch-size", type=int, default=4)
    p.add_argument("--ppo-epochs", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-prompt-length", type=int, default=48)
    p.add_argument("--gen-batch-size", type=int, default=4)
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: stable on a shared machine, where 2 OpenMP threads "
                        "competing with other jobs slowed some phases 10-40x; 0: torch's default, one per core)")
    p.add_argument("--perturb", type=float, default=0.3, help="relative weight noise of the 'new' policy in the PPO check")
    a = p.parse_args(argv)
    if a.quick:
        a.repeats = min(a.repeats, 1); a.rm_batch_size, a.rm_steps, a.rm_max_length = 4, 2, 64
        a.ppo_batch_size, a.ppo_mini_batch_size, a.ppo_epochs, a.max_new_tokens = 4, 2, 1, 8
        a.gen_batch_size, a.gen_tokens = 2, 8
    if a.out is None: a.out = "" if a.quick else str(HERE / "results.md")
    a.only = set(a.only.split(",")) if a.only != "all" else {"agreement", "reward", "ppo", "generation"}
    return a

def main(argv=None):
    # fixed mmap threshold: freed tensors go back to the OS, so per-phase RSS peaks are not hidden by reused heap
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and argv is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    a = parse_args(argv)
    t_start = time.perf_counter()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    if a.threads: torch.set_num_threads(a.threads)
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("TRL is not installed here: run `bash bench/setup.sh` and use bench/.venv/bin/python bench/run.py")
    from open_chatgpt.data import get_tokenizer, sample_pairs, sample_prompts
    from open_chatgpt.sft import tiny_policy
    info = machine_info()
    log(f"machine: {info['cpu']} | {info['cores']} cores, {info.get('threads')} torch threads | load {info['load'][0]:.2f} | "
        f"torch {info.get('torch')} | transformers {info.get('transformers')} | trl {info.get('trl')}")
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

#!/usr/bin/env python
"""The pipeline's real-run PPO step (`REAL_RUN["ppo"]`: 2 epochs, batch 8, minibatch 4, 64 new tokens, prompts up to
192) with `micro_batch_size=1` and 0 (whole minibatches), on one rollout batch, alternating, CPU seconds of
`ppo_step` alone (generation is the same either way). Run in the project's env:

    OMP_NUM_THREADS=1 .venv/bin/python bench/real_run_step.py    # ~6 min on one core
"""
import dataclasses, sys, time
from types import SimpleNamespace
import torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
torch.set_num_threads(1)
import run as R
from open_chatgpt import ppo as P
from open_chatgpt.pipeline import REAL_RUN
from open_chatgpt.ppo_core import AdaptiveKLController
path = R.real_policy_dir(); tok = R._real_tokenizer(path)
ours, ref = R._ours_real_models(path, tok)
keep = {k: v for k, v in REAL_RUN["ppo"].items() if k not in ("total_steps", "save_every")}
cfg1 = P.PPOConfig(**keep); cfg0 = dataclasses.replace(cfg1, micro_batch_size=0)
print(cfg1)
opt = torch.optim.Adam([p for p in ours.parameters() if p.requires_grad], lr=cfg1.learning_rate, eps=1e-5)
kl = AdaptiveKLController(cfg1.init_kl_coef, cfg1.target, cfg1.horizon)
reward = lambda p, r, b: [R.toy_score(x[m.bool()]) for x, m in zip(b["response"], b["response_mask"])]
torch.manual_seed(0)
batch = P.rollout(ours, tok, R._real_prompts(SimpleNamespace(ppo_batch_size=cfg1.batch_size)), cfg1)
_, scores = P.score(reward, batch, cfg1)
for i, c in enumerate([cfg1, cfg0, cfg0, cfg1, cfg1, cfg0]):
    torch.manual_seed(i)
    t = time.process_time()
    P.ppo_step(ours, ref, opt, batch, scores, kl, c)
    print("micro", c.micro_batch_size, "ppo_step CPU s", round(time.process_time() - t, 2),
          "tokens", int(batch["query_mask"].sum() + batch["response_mask"].sum()), flush=True)

#!/usr/bin/env python
"""The seed spread behind chapter 9's sentiment example (quick mode): the same SFT start, then GRPO, Dr. GRPO and
RLOO at one learning rate, once per seed; prints each variant's held-out VADER reward and its gain over SFT.

    python scripts/grpo_seeds.py 2e-3 30 0 1 2 3 4 5     # learning rate, steps, seeds (about 40 s per seed here)

Measured on the course's 2-core CPU (gains over SFT, seeds 0-5): on 2026-11-28 (tokens drawn by inverse CDF, the
default since then) at 2e-3 GRPO +0.07 to +0.51, Dr. GRPO -0.03 to +0.73, RLOO -0.02 to +0.12; on 2026-11-27 (drawn with
torch.multinomial) at 2e-3 GRPO +0.23 to +0.82, Dr. GRPO +0.01 to +0.18, RLOO +0.09 to +0.14, and at 6e-3 GRPO +0.66
to +0.88, Dr. GRPO +0.01 to +0.70, RLOO +0.29 to +0.70.
"""
import sys
import tempfile

import torch

from open_chatgpt.data import get_tokenizer, sample_prompts, sample_sft
from open_chatgpt.grpo import GRPOConfig, make_grpo_models, train_grpo
from open_chatgpt.ppo import evaluate_policy, sentiment_reward_fn
from open_chatgpt.sft import SFTConfig, tiny_policy, train_sft

VARIANTS = {"GRPO": dict(advantage="grpo", scale_rewards="group", loss_type="grpo"),   # chapter 9's three
            "Dr. GRPO": dict(advantage="grpo", scale_rewards="none", loss_type="dr_grpo"),
            "RLOO": dict(advantage="rloo", scale_rewards="none", loss_type="dr_grpo")}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3: sys.exit(__doc__)
    lr, steps, seeds = float(argv[0]), int(argv[1]), [int(x) for x in argv[2:]]
    torch.set_num_threads(1)
    tok = get_tokenizer()
    torch.manual_seed(0)
    sft = tiny_policy(tok, seed=0, n_layer=1, n_embd=64, n_head=2)          # the notebook's quick-mode start
    train_sft(sft, tok, sample_sft("train"), None, SFTConfig(max_steps=40, learning_rate=3e-3, batch_size=16, max_length=96))
    reward, train, test = sentiment_reward_fn(), sample_prompts("train")["prompt"], sample_prompts("test")["prompt"][:32]
    for seed in seeds:
        base = dict(learning_rate=lr, batch_size=4, num_generations=4, mini_batch_size=8, max_new_tokens=12,
                    max_prompt_length=64, beta=0.04, total_steps=steps, seed=seed)
        res = {}
        for name, kw in VARIANTS.items():
            pol, ref = make_grpo_models(sft, tok)
            if not res: res["SFT"] = evaluate_policy(pol, tok, reward, test, GRPOConfig(**base), ref_policy=ref)["reward_mean"]
            c = GRPOConfig(**base, **kw, output_dir=tempfile.mkdtemp(prefix="grpo-seeds-"))
            train_grpo(pol, ref, tok, reward, train, c, progress=False)
            res[name] = evaluate_policy(pol, tok, reward, test, c, ref_policy=ref)["reward_mean"]
        print(f"lr {lr:g}, {steps} steps, seed {seed}: SFT {res['SFT']:+.3f}; " + ", ".join(
            f"{k} {v:+.3f} (gain {v - res['SFT']:+.3f})" for k, v in res.items() if k != "SFT"), flush=True)


if __name__ == "__main__":
    main()

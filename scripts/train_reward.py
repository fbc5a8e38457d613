#!/usr/bin/env python
"""Reward-model training under DeepSpeed with `deepspeed.initialize`: engine(...), engine.backward(loss), engine.step().

GPUs:  deepspeed --num_gpus 8 scripts/train_reward.py --deepspeed scripts/ds_configs/zero3.json --model-config opt-125m --bf16
CPU:   python scripts/train_reward.py --cpu --deepspeed zero3 --max-steps 2      (one process, gloo; CI runs this)
Loss: -log sigmoid(r(chosen) - r(rejected)) (Bradley-Terry). Writes OUTPUT_DIR/metrics.json.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deepspeed", default="zero2", help="DeepSpeed config: a JSON file, or zero2 / zero3 / zero3_offload")
    p.add_argument("--model-config", default=None, help="backbone shape (open_chatgpt.distributed.MODEL_SHAPES); "
                   "default: tiny with --cpu, opt-125m otherwise")
    p.add_argument("--cpu", action="store_true", help="CPU mode: fp32, gloo backend, tiny defaults")
    p.add_argument("--max-steps", type=int, default=100, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=None, help="comparisons per process per step (default 4 CPU, 16 GPU)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per sequence (default 64 on CPU, 256 on GPU)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument("--output-dir", default=None, help="where metrics.json goes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the deepspeed launcher")
    return p.parse_args(argv)


class LastTokenReward(nn.Module):
    "A scalar reward from a backbone's hidden state at the last real token (used when open_chatgpt.reward is absent)."
    def __init__(self, backbone: nn.Module, tokenizer):
        super().__init__()
        from open_chatgpt.ppo import hidden_size
        self.backbone, self.tokenizer = backbone.base_model, tokenizer
        self.head = nn.Linear(hidden_size(backbone.config), 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (batch, seq) -> (batch,)
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state   # (batch, seq, hidden)
        last = attention_mask.sum(1) - 1                                                           # right padding
        return self.head(h[torch.arange(len(h), device=h.device), last]).squeeze(-1).float()


def make_reward_model(backbone, tokenizer):
    "open_chatgpt.reward.RewardModel when that chapter is installed, else `LastTokenReward`."
    try: from open_chatgpt.reward import RewardModel
    except ImportError: return LastTokenReward(backbone, tokenizer)
    return RewardModel(backbone, tokenizer)


def main(argv=None):
    args = parse_args(argv)
    import deepspeed
    from torch.utils.data import DataLoader, DistributedSampler
    from open_chatgpt.data import PairwiseCollator, get_tokenizer, sample_pairs
    from open_chatgpt.distributed import build_model, peak_memory_gb, resolve_config, setup_distributed
    cpu = args.cpu or not torch.cuda.is_available()
    if args.bf16 and cpu: raise SystemExit("--bf16 needs a GPU; CPU mode trains in fp32")
    model_config = args.model_config or ("tiny" if cpu else "opt-125m")
    batch_size, max_length = args.batch_size or (4 if cpu else 16), args.max_length or (64 if cpu else 256)

    # ---- process group, model, data ----
    dist = setup_distributed(cpu=cpu)
    rank, world, device = dist["rank"], dist["world_size"], dist["device"]
    torch.manual_seed(args.seed)
    tok = get_tokenizer()
    rm = make_reward_model(build_model(model_config, tok, seed=args.seed, max_positions=max(512, max_length)), tok)
    n_params = sum(p.numel() for p in rm.parameters())
    pairs = sample_pairs("train")
    sampler = DistributedSampler(pairs, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(pairs, batch_size=batch_size, sampler=sampler, collate_fn=PairwiseCollator(tok, max_length),
                        drop_last=True)

    # ---- DeepSpeed engine: ZeRO shards the optimizer states / gradients / weights of `rm` ----
    config = resolve_config(args.deepspeed, micro_batch_size=batch_size, grad_accum=1, gradient_clipping=1.0,
                            precision="bf16" if args.bf16 else "fp32")
    optimizer = torch.optim.AdamW(rm.parameters(), lr=args.lr, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=rm, optimizer=optimizer, config=config)
    if rank == 0:
        print(f"[reward] {model_config}: {n_params / 1e6:.2f}M params, {world} process(es) on {device.type}, "
              f"ZeRO-{engine.zero_optimization_stage()}, {args.max_steps} steps x {batch_size} pairs x {world}")

    # ---- train ----
    step, losses, accs, tokens, t0 = 0, [], [], 0, time.perf_counter()
    while step < args.max_steps:
        sampler.set_epoch(step)
        for batch in loader:
            ids, am = batch["input_ids"].to(device), batch["attention_mask"].to(device)   # (2B, L): chosen then rejected
            scores = engine(ids, am)                                                        # (2B,)
            chosen, rejected = scores[:batch_size], scores[batch_size:]
            loss = -F.logsigmoid(chosen - rejected).mean()
            engine.backward(loss)
            engine.step()
            step, tokens = step + 1, tokens + int(am.sum())
            losses.append(loss.item()); accs.append((chosen > rejected).float().mean().item())   # .item() syncs
            if step == 1: t1, tokens1 = time.perf_counter(), tokens   # the first step: allocator, kernel selection
            if step >= args.max_steps: break
    seconds = time.perf_counter() - t0
    steady = (step - 1) * batch_size * world / (t0 + seconds - t1) if step > 1 else None
    metrics = dict(script="train_reward", path="deepspeed.initialize", deepspeed=str(args.deepspeed),
                   zero_stage=engine.zero_optimization_stage(), model_config=model_config, n_params=n_params,
                   world_size=world, device=device.type, precision="bf16" if args.bf16 else "fp32", steps=step,
                   batch_size_per_process=batch_size, seconds=seconds,
                   samples_per_second=step * batch_size * world / seconds, tokens_per_second=tokens * world / seconds,
                   steady_samples_per_second=steady,
                   steady_tokens_per_second=(tokens - tokens1) * world / (t0 + seconds - t1) if step > 1 else None,
                   peak_memory_gb=peak_memory_gb(device), first_loss=losses[0], last_loss=losses[-1],
                   mean_accuracy=sum(accs) / len(accs))
    if rank == 0:
        out = Path(args.output_dir or tempfile.mkdtemp(prefix="train-reward-")); out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""PPO under DeepSpeed: actor + critic in one `deepspeed.initialize` engine, frozen reference and reward model beside it;
under ZeRO-3 the rollout gathers the actor's weights once (`open_chatgpt.distributed.unwrap_for_generation`).

GPUs:  deepspeed --num_gpus 8 scripts/train_ppo.py --deepspeed scripts/ds_configs/zero3.json --model-config opt-125m --bf16
CPU:   python scripts/train_ppo.py --cpu --deepspeed zero3 --max-steps 2      (one process, gloo; CI runs this)
The algorithm is open_chatgpt.ppo_core's (compute_rewards, compute_gae, masked_whiten, the clipped losses); only the
plumbing (engine.backward / engine.step, gathering for generation, devices) is here. Writes OUTPUT_DIR/metrics.json.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deepspeed", default="zero2", help="DeepSpeed config: a JSON file, or zero2 / zero3 / zero3_offload")
    p.add_argument("--model-config", default=None, help="policy shape (open_chatgpt.distributed.MODEL_SHAPES); "
                   "default: tiny with --cpu, opt-125m otherwise")
    p.add_argument("--cpu", action="store_true", help="CPU mode: fp32, gloo backend, tiny defaults")
    p.add_argument("--max-steps", type=int, default=20, help="PPO steps (rollout + update)")
    p.add_argument("--batch-size", type=int, default=None, help="rollouts per process per step (default 4 CPU, 32 GPU)")
    p.add_argument("--mini-batch-size", type=int, default=None, help="rollouts per backward (default: batch-size / 2)")
    p.add_argument("--ppo-epochs", type=int, default=2, help="passes over each rollout batch")
    p.add_argument("--max-new-tokens", type=int, default=None, help="response length cap (default 8 CPU, 48 GPU)")
    p.add_argument("--max-prompt-length", type=int, default=64, help="prompt tokens kept")
    p.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate")
    p.add_argument("--init-kl-coef", type=float, default=0.05, help="beta of the KL penalty")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument("--no-gather", action="store_true", help="ZeRO-3: generate through the per-layer hooks (slow; "
                   "can hang on >1 GPU when ranks stop at different lengths) -- for the comparison exercise")
    p.add_argument("--output-dir", default=None, help="where metrics.json goes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the deepspeed launcher")
    return p.parse_args(argv)


@torch.no_grad()
def rollout_on(policy, tokenizer, prompts, config, device) -> dict:
    "Sample one response per prompt on `device` (as open_chatgpt.ppo.rollout, with the tensors moved to the model)."
    from open_chatgpt.data import PromptCollator
    from open_chatgpt.plumbing import context_length
    from open_chatgpt.ppo import truncate_after_eos
    batch = PromptCollator(tokenizer, config.max_prompt_length, config.max_new_tokens, context_length(policy))(
        [{"prompt": p} for p in prompts])
    query, query_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)    # (B, P) left-padded
    out = policy.generate(input_ids=query, attention_mask=query_mask, max_new_tokens=config.max_new_tokens,
                          min_new_tokens=1, do_sample=True, temperature=config.temperature, top_k=None, top_p=1.0,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # (B, P + R)
    response, response_mask, has_eos = truncate_after_eos(out[:, query.shape[1]:], tokenizer.eos_token_id,
                                                          tokenizer.pad_token_id)
    width = int(response_mask.sum(1).max())
    response, response_mask = response[:, :width], response_mask[:, :width]
    texts = tokenizer.batch_decode(torch.where(response_mask.bool(), response, tokenizer.pad_token_id),
                                   skip_special_tokens=True)
    return dict(prompts=list(prompts), responses=texts, query=query, query_mask=query_mask, response=response,
                response_mask=response_mask, has_eos=has_eos)


def logprobs_values(engine, input_ids, attention_mask, P: int, temperature: float = 1.0):
    "Response log-probs and values (each (B, R)) through the DeepSpeed engine of a PolicyAndValue."
    from open_chatgpt.ppo_core import logprobs_from_logits
    logits, values = engine(input_ids, attention_mask)                           # (B, P+R, V), (B, P+R)
    logits = logits[:, P - 1:-1].float() / temperature                            # (B, R, V)
    return logprobs_from_logits(logits, input_ids[:, P:]), values[:, P - 1:-1].float()


def main(argv=None):
    args = parse_args(argv)
    import deepspeed
    from open_chatgpt.data import get_tokenizer, sample_prompts
    from open_chatgpt.distributed import (build_model, peak_memory_gb, resolve_config, setup_distributed,
                                          unwrap_for_generation)
    from open_chatgpt.ppo import PPOConfig, forward_logprobs_values, make_ppo_models, prompt_batch, reward_model_fn, score
    from open_chatgpt.ppo_core import (FixedKLController, compute_gae, compute_rewards, masked_mean, masked_whiten,
                                       ppo_policy_loss, ppo_value_loss)
    from train_reward import make_reward_model
    cpu = args.cpu or not torch.cuda.is_available()
    if args.bf16 and cpu: raise SystemExit("--bf16 needs a GPU; CPU mode trains in fp32")
    model_config = args.model_config or ("tiny" if cpu else "opt-125m")
    B = args.batch_size or (4 if cpu else 32)
    c = PPOConfig(learning_rate=args.lr, batch_size=B, mini_batch_size=args.mini_batch_size or max(1, B // 2),
                  ppo_epochs=args.ppo_epochs, max_new_tokens=args.max_new_tokens or (8 if cpu else 48),
                  max_prompt_length=args.max_prompt_length, init_kl_coef=args.init_kl_coef, seed=args.seed,
                  total_steps=args.max_steps)

    # ---- process group; the four models ----
    dist = setup_distributed(cpu=cpu)
    rank, world, device = dist["rank"], dist["world_size"], dist["device"]
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    torch.manual_seed(args.seed)
    tok = get_tokenizer()
    sft = build_model(model_config, tok, seed=args.seed)
    rm = make_reward_model(build_model(model_config, tok, seed=args.seed + 1), tok)  # a stand-in reward model
    model, ref = make_ppo_models(sft, tok, rm, critic_init="reward")               # actor + critic, frozen reference
    c.validate(sft.config.max_position_embeddings)
    ref.to(device, dtype).requires_grad_(False); rm.to(device, dtype).eval().requires_grad_(False)
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in
                dict(actor=model.policy, critic=model.critic, reference=ref, reward=rm).items()}
    reward_fn = reward_model_fn(rm, tok)

    # ---- DeepSpeed engine for the two trained models ----
    config = resolve_config(args.deepspeed, micro_batch_size=c.mini_batch_size, grad_accum=1,
                            gradient_clipping=c.max_grad_norm, precision="bf16" if args.bf16 else "fp32")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=c.learning_rate, eps=1e-5)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    stage = engine.zero_optimization_stage()
    kl_ctl = FixedKLController(c.init_kl_coef)
    prompts = list(sample_prompts("train")["prompt"])
    if rank == 0:
        print(f"[ppo] {model_config}: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in n_params.items()) +
              f"; {world} process(es) on {device.type}, ZeRO-{stage}, {c.total_steps} steps x {B} rollouts x {world}")

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)   # phase times cover the GPU's work
    history, t_start, t_rollout, t_update, tokens = [], time.perf_counter(), 0.0, 0.0, 0
    for step in range(1, c.total_steps + 1):
        # ---- rollout: full weights gathered once under ZeRO-3 ----
        t0 = time.perf_counter()
        engine.eval()                 # rollout, old and reference log-probs in eval mode (dropout is off anyway)
        with unwrap_for_generation(engine, gather=not args.no_gather) as m:
            batch = rollout_on(m.policy, tok, prompt_batch(prompts, step, B, c.seed + rank), c, device)
        raw, scores = score(reward_fn, batch, c)
        scores = scores.to(device)
        sync(); t1 = time.perf_counter()
        input_ids = torch.cat([batch["query"], batch["response"]], 1)                # (B, P + R)
        attention_mask = torch.cat([batch["query_mask"], batch["response_mask"]], 1)
        mask, P = batch["response_mask"], batch["query"].shape[1]                    # (B, R)

        # ---- old log-probs / values, reference log-probs, rewards, GAE (no grad) ----
        with torch.no_grad():
            old_logprobs, old_values = logprobs_values(engine, input_ids, attention_mask, P, c.temperature)
            ref_logprobs, _, _ = forward_logprobs_values(ref, input_ids, attention_mask, P, c.temperature)
            rewards, non_score_reward, kl = compute_rewards(scores, old_logprobs, ref_logprobs.float(), mask,
                                                            kl_ctl.value, c.kl_estimator)
            advantages, returns = compute_gae(rewards, old_values, mask, c.gamma, c.lam)
            advantages = masked_whiten(advantages, mask)

        # ---- optimise policy and value: engine.backward + engine.step (ZeRO reduces / shards the gradients) ----
        engine.train()
        stats = []
        for epoch in range(c.ppo_epochs):
            perm = torch.randperm(B, device=device)
            for start in range(0, B, c.mini_batch_size):
                idx = perm[start:start + c.mini_batch_size]
                logprobs, values = logprobs_values(engine, input_ids[idx], attention_mask[idx], P, c.temperature)
                pg_loss, pg_stats = ppo_policy_loss(logprobs, old_logprobs[idx], advantages[idx], mask[idx], c.cliprange)
                vf_loss, vf_stats = ppo_value_loss(values, old_values[idx], returns[idx], mask[idx], c.cliprange_value)
                engine.backward(pg_loss + c.vf_coef * vf_loss)
                engine.step()
                stats.append({**pg_stats, **vf_stats})
        sync(); t2 = time.perf_counter()
        t_rollout, t_update, tokens = t_rollout + t1 - t0, t_update + t2 - t1, tokens + int(attention_mask.sum())
        mean = lambda k: float(torch.stack([s[k] for s in stats]).float().mean())
        row = {"step": step, "env/reward_mean": float(raw.mean()),
               "objective/kl": float(((old_logprobs - ref_logprobs) * mask).sum(1).mean()),
               "losses/policy_loss": mean("loss/policy"), "losses/value_loss": mean("loss/value"),
               "policy/clipfrac": mean("policy/clipfrac"), "response/length": float(mask.sum(1).float().mean()),
               "time/rollout": t1 - t0, "time/update": t2 - t1}
        history.append(row)
        if rank == 0: print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    seconds = time.perf_counter() - t_start
    metrics = dict(script="train_ppo", path="deepspeed.initialize", deepspeed=str(args.deepspeed), zero_stage=stage,
                   gathered_generation=stage == 3 and not args.no_gather, model_config=model_config, n_params=n_params,
                   world_size=world, device=device.type, precision="bf16" if args.bf16 else "fp32", steps=len(history),
                   batch_size_per_process=B, seconds=seconds, samples_per_second=len(history) * B * world / seconds,
                   tokens_per_second=tokens * world / seconds, rollout_seconds=t_rollout, update_seconds=t_update,
                   # steady state: steps 2..N (the first pays for the allocator and kernel selection)
                   steady_samples_per_second=(len(history) - 1) * B * world / sum(r["time/rollout"] + r["time/update"]
                                                                                  for r in history[1:])
                   if len(history) > 1 else None,
                   peak_memory_gb=peak_memory_gb(device), history=history)
    if rank == 0:
        out = Path(args.output_dir or tempfile.mkdtemp(prefix="train-ppo-")); out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
    return metrics


if __name__ == "__main__":
    main()

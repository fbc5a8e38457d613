#!/usr/bin/env python
"""Supervised fine-tuning under DeepSpeed, through the Hugging Face Trainer (`open_chatgpt.sft.train_sft_trainer`).

GPUs:  deepspeed --num_gpus 8 scripts/train_sft.py --deepspeed scripts/ds_configs/zero2.json --model-config opt-125m --bf16
CPU:   python scripts/train_sft.py --cpu --deepspeed zero2 --max-steps 2      (one process, gloo; CI runs this)
Writes OUTPUT_DIR/metrics.json: throughput, peak memory, world size, device.
"""
import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deepspeed", default="zero2", help="DeepSpeed config: a JSON file, or zero2 / zero3 / zero3_offload")
    p.add_argument("--model-config", default=None, help="model shape (open_chatgpt.distributed.MODEL_SHAPES); "
                   "default: tiny with --cpu, opt-125m otherwise")
    p.add_argument("--cpu", action="store_true", help="CPU mode: fp32, gloo backend, tiny defaults")
    p.add_argument("--max-steps", type=int, default=100, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=None, help="micro-batch per process (default 4 on CPU, 16 on GPU)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--max-length", type=int, default=None, help="tokens per sequence (default 64 on CPU, 256 on GPU)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--output-dir", default=None, help="where metrics.json (and the model, with --save) go")
    p.add_argument("--save", action="store_true", help="save the final model to OUTPUT_DIR/model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the deepspeed launcher")
    return p.parse_args(argv)


def step_clock():
    "A TrainerCallback that records the time at the end of each optimizer step (after the GPU's queue drains)."
    from transformers import TrainerCallback
    class StepClock(TrainerCallback):
        def __init__(self): self.start, self.times = None, []
        def on_train_begin(self, args, state, control, **kw):    # after the Trainer built the DeepSpeed engine
            if torch.cuda.is_available(): torch.cuda.synchronize()
            self.start = time.perf_counter()
        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available(): torch.cuda.synchronize()
            self.times.append(time.perf_counter())
    return StepClock()


def main(argv=None):
    args = parse_args(argv)
    from open_chatgpt.data import SFTCollator, get_tokenizer, sample_sft
    from open_chatgpt.distributed import GB, build_model, ds_config, DS_CONFIGS, peak_memory_gb, setup_distributed
    from open_chatgpt.sft import SFTConfig, filter_sft, train_sft_trainer
    cpu = args.cpu or not torch.cuda.is_available()
    if args.bf16 and cpu: raise SystemExit("--bf16 needs a GPU; CPU mode trains in fp32")
    model_config = args.model_config or ("tiny" if cpu else "opt-125m")
    batch_size, max_length = args.batch_size or (4 if cpu else 16), args.max_length or (64 if cpu else 256)

    # ---- process group (the Trainer reuses it) ----
    dist = setup_distributed(cpu=cpu)
    rank, world = dist["rank"], dist["world_size"]
    if args.deepspeed not in DS_CONFIGS and not Path(args.deepspeed).is_file():
        raise SystemExit(f"--deepspeed {args.deepspeed}: give a JSON file or one of {list(DS_CONFIGS)}")
    ds = ds_config(**DS_CONFIGS[args.deepspeed]) if args.deepspeed in DS_CONFIGS else args.deepspeed
    if cpu and isinstance(ds, str): ds = json.loads(Path(ds).read_text())
    if cpu:  # fp32 on CPU: no bf16/fp16 in the DeepSpeed config
        ds = {**ds, "bf16": {"enabled": False}, "fp16": {"enabled": False}}

    # ---- model and data ----
    tok = get_tokenizer()
    model = build_model(model_config, tok, seed=args.seed, max_positions=max(512, max_length))
    n_params = sum(p.numel() for p in model.parameters())
    n_examples = args.max_steps * batch_size * args.grad_accum * world
    with warnings.catch_warnings():      # keep only the demonstrations the Trainer trains on, so every row counted is used
        warnings.simplefilter("ignore", UserWarning)
        train_ds = filter_sft(sample_sft("train"), tok, max_length)
    train_ds = train_ds.select([i % len(train_ds) for i in range(n_examples)])
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="train-sft-"))
    config = SFTConfig(learning_rate=args.lr, max_steps=args.max_steps, batch_size=batch_size, grad_accum=args.grad_accum,
                       max_length=max_length, eval_every=0, log_every=max(1, args.max_steps // 10), seed=args.seed,
                       bf16=args.bf16, fp16=False, gradient_checkpointing=args.gradient_checkpointing, deepspeed=ds,
                       device=None, output_dir=str(out / "trainer"))
    if rank == 0:
        print(f"[sft] {model_config}: {n_params / 1e6:.2f}M params, {world} process(es) on {dist['device'].type}, "
              f"DeepSpeed {args.deepspeed}, {args.max_steps} steps x {batch_size} x {args.grad_accum} x {world}")

    # ---- train (Trainer -> accelerate -> deepspeed.initialize) ----
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 'dropped demonstrations that do not fit' on tiny max_length
        clock = step_clock()
        trainer = train_sft_trainer(model, tok, train_ds, None, config, callbacks=[clock])
    seconds = time.perf_counter() - t0
    engine = getattr(trainer, "deepspeed", None)  # the DeepSpeed engine the Trainer built (None: DeepSpeed was not used)
    if engine is None: raise RuntimeError("the Trainer did not use DeepSpeed; check --deepspeed")
    stage = engine.zero_optimization_stage()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    collate = SFTCollator(tok, max_length)                         # the tokens the model saw: every selected row, no padding
    tokens = sum(int(collate([train_ds[j] for j in range(i, min(i + 64, len(train_ds)))])["attention_mask"].sum())
                 for i in range(0, len(train_ds), 64))
    samples = len(train_ds)
    train_seconds = clock.times[-1] - clock.start if clock.times and clock.start else seconds   # the loop, not the set-up
    metrics = dict(script="train_sft", path="hf-trainer", deepspeed=str(args.deepspeed), zero_stage=stage,
                   model_config=model_config, n_params=n_params, world_size=world, device=dist["device"].type,
                   precision="bf16" if args.bf16 else "fp32", steps=trainer.state.global_step,
                   batch_size_per_process=batch_size, seconds=train_seconds, setup_seconds=seconds - train_seconds,
                   samples_per_second=samples / train_seconds, tokens_per_second=tokens / train_seconds,
                   # steady state: steps 2..N, without the set-up and the first step (allocator, kernel selection)
                   steady_samples_per_second=(len(clock.times) - 1) * batch_size * args.grad_accum * world
                   / (clock.times[-1] - clock.times[0]) if len(clock.times) > 1 else None,
                   peak_memory_gb=peak_memory_gb(dist["device"]), first_loss=losses[0] if losses else None,
                   last_loss=losses[-1] if losses else None)
    if args.save: trainer.save_model(str(out / "model"))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()

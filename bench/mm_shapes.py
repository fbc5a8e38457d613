#!/usr/bin/env python
"""Matmul throughput at the real PPO update's shapes (SmolLM2-135M: hidden 576, 3 KV heads of 64, MLP 1536, vocabulary
49,152) against the 1024^3 peak that bench/run.py's MFU divides by: one thread, FLOPs per CPU second, forward (x W^T)
and activation gradient (g W) of each projection, for a row of 150 tokens (micro-batches) and 4 rows (600 tokens).
If these run near the peak, a low MFU is lost elsewhere (attention, elementwise ops, autograd, the cores' other jobs).

    python bench/mm_shapes.py
"""
import os
import time

import torch


def rate(a: torch.Tensor, b: torch.Tensor, seconds: float = 0.6) -> float:
    "Best of 3 timed loops of a @ b, in FLOPs per CPU second."
    for _ in range(2): a @ b
    best = 0.0
    for _ in range(3):
        k, t0 = 0, time.process_time()
        while time.process_time() - t0 < seconds / 3 or k < 2: torch.matmul(a, b); k += 1
        best = max(best, 2.0 * a.shape[0] * a.shape[1] * b.shape[1] * k / (time.process_time() - t0))
    return best


def main() -> None:
    "Print the peak and each shape's throughput as a share of it."
    torch.set_num_threads(1); torch.manual_seed(0)
    peak = rate(torch.randn(1024, 1024), torch.randn(1024, 1024))
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}, 1 thread")
    print(f"peak (1024^3): {peak / 1e9:.1f} GFLOP per CPU s")
    d, ff, kv, V = 576, 1536, 192, 49152
    shapes = {"q/o": (d, d), "k/v": (d, kv), "gate/up": (d, ff), "down": (ff, d)}
    for T in (150, 600):
        for name, (i, o) in shapes.items():
            x, W, g = torch.randn(T, i), torch.randn(o, i), torch.randn(T, o)
            print(f"T={T:4d} {name:8s} forward {rate(x, W.t()) / peak:6.1%}  activation grad {rate(g, W) / peak:6.1%}")
    for T in (50, 200):
        x, W = torch.randn(T, d), torch.randn(V, d)
        print(f"T={T:4d} LM head  forward {rate(x, W.t()) / peak:6.1%}  activation grad {rate(torch.randn(T, V), W) / peak:6.1%}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Copy the benchmark's last results (bench/results.md, written by bench/run.py) into nbs/index.ipynb and so
README.md, between <!-- bench:start --> and <!-- bench:end -->: the README's performance numbers are never typed by hand.

    make bench && python scripts/bench_table.py
    python bench/run.py --real --proposal && python scripts/bench_table.py --real bench/results-real-proposal.md
    python bench/gpu.py --render A/gpu-ds.json --out bench/results-gpu-ds && python scripts/bench_table.py --gpu
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_table import ROOT, write_index  # noqa: E402

def gpu_tables():
    "The GPU results (bench/gpu.py): the real-model benchmark into the README, the DeepSpeed table into it and chapter 11."
    real = (ROOT / "bench" / "results-real-gpu.md").read_text().strip().splitlines()
    body = [("###" + l[2:]) if l.startswith("## ") else l for l in real if not l.startswith("# ")]
    write_index("\n".join(body).strip(), "bench-gpu", start="<!-- bench-gpu:start -->", end="<!-- bench-gpu:end -->",
                readme=False)
    ds = (ROOT / "bench" / "results-gpu-ds.md").read_text().strip()
    marks = dict(start="<!-- ds-gpu:start -->", end="<!-- ds-gpu:end -->")
    write_index(ds, "ds-gpu", notebook="11_deepspeed.ipynb", readme=False, **marks)
    write_index(ds, "ds-gpu", **marks)


if __name__ == "__main__":
    if "--gpu" in sys.argv: gpu_tables(); sys.exit()
    real = "--real" in sys.argv
    src = Path(sys.argv[-1]) if real and not sys.argv[-1].startswith("--") else ROOT / "bench" / ("results-real.md" if real else "results.md")
    text = src.read_text().strip().splitlines()
    body = [("###" + l[2:]) if l.startswith("## ") else l for l in text if not l.startswith("# ")]
    name = "bench-real" if real else "bench"
    write_index("\n".join(body).strip(), name, start=f"<!-- {name}:start -->", end=f"<!-- {name}:end -->")

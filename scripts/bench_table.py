#!/usr/bin/env python
"""Copy the benchmark's last results (bench/results.md, written by bench/run.py) into nbs/index.ipynb and so
README.md, between <!-- bench:start --> and <!-- bench:end -->: the README's performance numbers are never typed by hand.

    make bench && python scripts/bench_table.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_table import ROOT, write_index  # noqa: E402

if __name__ == "__main__":
    text = (ROOT / "bench" / "results.md").read_text().strip().splitlines()
    body = [("###" + l[2:]) if l.startswith("## ") else l for l in text if not l.startswith("# ")]
    write_index("\n".join(body).strip(), "bench", start="<!-- bench:start -->", end="<!-- bench:end -->")

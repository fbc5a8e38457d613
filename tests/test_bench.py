"""The benchmark (bench/run.py): its helpers in the project's environment, and -- where bench/.venv exists (made by
`bash bench/setup.sh`, which installs TRL) -- a quick run that checks our PPO and reward losses against TRL's."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "run.py"
BENCH_PY = ROOT / "bench" / ".venv" / "bin" / "python"


def _load():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_imports_without_trl():
    "bench/run.py must import in an environment without TRL (it imports TRL lazily) and parse its quick settings."
    b = _load()
    a = b.parse_args(["--quick"])
    assert a.repeats == 1 and a.only == {"agreement", "reward", "ppo", "generation"}
    assert b.parse_args(["--only", "ppo"]).only == {"ppo"}


def test_flops_and_table():
    b = _load()
    assert b.train_flops(10, 7) == 420.0 and b.forward_flops(10, 7) == 140.0
    t = b.markdown_table(["", "ours", "TRL"], [["step (s)", 1.23456, 2.0], ["x", "a", 1500.0]])
    lines = t.splitlines()
    assert lines[0] == "|  | ours | TRL |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| step (s) | 1.235 | 2.000 |" and lines[3] == "| x | a | 1,500 |"


def test_matmul_peak_and_matmul_params():
    import torch
    import itertools
    b = _load()
    clock = itertools.count()                     # a fake clock: 1 s per reading, so the count of matmuls is known
    real = b.time.perf_counter
    b.time.perf_counter = lambda: float(next(clock))
    try: peak = b.matmul_peak(n=64, seconds=0.05, rounds=1)
    finally: b.time.perf_counter = real
    # readings 0 (start), 1 and 2 (two matmuls: k < 2), 3 (loop exit), 4 (stop): 2 * 64^3 FLOPs x 2 matmuls / 4 s
    assert peak == 2 * 64 ** 3 * 2 / 4
    assert b.matmul_peak(n=256, seconds=0.05, rounds=1) > 1e8    # any CPU multiplies faster than 100 MFLOP/s
    emb = torch.nn.Embedding(10, 4)
    lin = torch.nn.Linear(4, 10, bias=False)
    m = torch.nn.Sequential(emb, lin)
    assert b.matmul_params(m) == 40  # the embedding lookup costs no matmul FLOPs

    class Tied(torch.nn.Sequential):  # an LM whose output head shares the embedding matrix
        def get_output_embeddings(self): return self[1]
    tied = Tied(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    assert b.matmul_params(tied) == 40  # counted once, as the LM-head matmul


def test_peak_rss_sees_an_allocation():
    import numpy as np
    b = _load()
    with b.PeakRSS(interval=0.001) as m:
        x = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        x.sum()
        del x
    assert m.peak > 48 * 2**20


def test_pair_features_match_pairwise_collator():
    "Both libraries train on the same tokens: pair_features == PairwiseCollator's rows (without padding)."
    from open_chatgpt.data import PairwiseCollator, get_tokenizer, sample_pairs
    b = _load()
    tok = get_tokenizer()
    recs = [sample_pairs("train")[i] for i in range(3)]
    feats = b.pair_features(tok, recs, 32)
    batch = PairwiseCollator(tok, 32)(recs)
    for i, f in enumerate(feats):
        for j, key in ((i, "chosen"), (i + 3, "rejected")):
            n = int(batch["attention_mask"][j].sum())
            assert batch["input_ids"][j, :n].tolist() == f[f"input_ids_{key}"]


@pytest.mark.skipif(not BENCH_PY.exists(), reason="bench/.venv missing: run `bash bench/setup.sh` to compare with TRL")
def test_agreement_with_trl(tmp_path):
    "Quick run in bench/.venv: our PPO losses (and reward loss, when open_chatgpt.reward exists) equal TRL's."
    out = tmp_path / "results.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([str(BENCH_PY), str(BENCH), "--quick", "--only", "agreement", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    text = out.read_text()
    rows = {l.split("|")[1].strip(): l.split("|")[2].strip() for l in text.splitlines()
            if l.startswith("| ") and ("PPO" in l or "reward model" in l)}
    for k in ("PPO: total loss (policy + vf_coef * value)", "PPO: policy loss (clipped surrogate)",
              "PPO: value loss (clipped, x vf_coef)", "PPO: gradients of the total loss (all parameters)",
              "PPO per token: advantages", "PPO per token: returns", "PPO per token: rewards"):
        assert float(rows[k]) < 1e-5, (k, rows[k])
    if "reward model: pairwise loss (-log sigmoid(r_c - r_r))" in rows:
        assert float(rows["reward model: pairwise loss (-log sigmoid(r_c - r_r))"]) < 1e-5

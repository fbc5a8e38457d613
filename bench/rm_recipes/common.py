"""Shared helpers for the reward-model experiments: data splits, metrics, logging. Always 1 torch thread."""
import hashlib, json, math, os, time
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"): os.environ[_v] = "1"
from pathlib import Path
import numpy as np
import torch
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).parent
CACHE = HERE / "cache"; CACHE.mkdir(exist_ok=True)
RESULTS = HERE / "results.jsonl"
VAL_FRACTION = 0.18

def _load():
    f = CACHE / "pairs.json"
    if not f.exists():
        from open_chatgpt.data import sample_pairs
        d = {s: [dict(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"]) for r in sample_pairs(s)] for s in ("train", "test")}
        f.write_text(json.dumps(d))
    return json.loads(f.read_text())

def is_val(prompt: str) -> bool:
    "Validation carve-out of train by a salted hash of the prompt (different from the project's test split hash)."
    h = int(hashlib.md5(("val-salt|" + prompt).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < VAL_FRACTION

def splits():
    "fit (train minus val), val, train (all 1611), test (394 held-out)."
    d = _load()
    tr = d["train"]
    fit = [r for r in tr if not is_val(r["prompt"])]
    val = [r for r in tr if is_val(r["prompt"])]
    return dict(fit=fit, val=val, train=tr, test=d["test"])

def wilson(k, n, z=1.96):
    p = k / n; den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0, c - h), min(1, c + h)

def acc(margins):
    m = np.asarray(margins, dtype=float)
    k = float((m > 0).sum()) + 0.5 * float((m == 0).sum())
    lo, hi = wilson(k, len(m))
    return dict(acc=k / len(m), lo=lo, hi=hi, n=len(m))

def fmt(a): return f"{a['acc']:.3f} [{a['lo']:.3f}-{a['hi']:.3f}]"

def log_result(**kw):
    kw["threads"] = torch.get_num_threads(); kw["time"] = time.strftime("%H:%M:%S")
    with open(RESULTS, "a") as f: f.write(json.dumps(kw) + "\n")
    print("RESULT", json.dumps({k: v for k, v in kw.items() if not isinstance(v, list)}), flush=True)

def save_margins(name, split, margins):
    d = CACHE / "margins"; d.mkdir(exist_ok=True)
    np.save(d / f"{name}__{split}.npy", np.asarray(margins, dtype=np.float32))

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


def test_lm_head_counted_at_response_tokens():
    "The update's useful FLOPs count the LM head only at the response tokens (the log-probs PPO needs), the rest of the model at every token."
    b = _load()
    F, L, H, T, R = 100, 10, 30, 7, 3
    assert b.lora_train_flops(F, L, T) == (4 * F + 6 * L) * T                       # no head given: every matmul, every token
    assert b.lora_train_flops(F, L, T, H, R) == (4 * (F - H) + 6 * L) * T + 4 * H * R
    f = b.ppo_update_flops(F, L, T, 2, H, R)
    assert f["train"] == 2 * b.lora_train_flops(F, L, T, H, R)
    assert f["old_ref"] == 2 * (F - H + L) * T + 2 * (F - H) * T + 2 * 2 * H * R     # policy + reference, no grad
    import torch
    emb = torch.nn.Embedding(11, 4); m = torch.nn.Module(); m.get_output_embeddings = lambda: emb
    assert b.lm_head_params(m) == 44 and b.lm_head_params(torch.nn.Linear(2, 2)) == 0


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


# ---------------------------------------------------------------------------------------------------------------------
# the real-model mode (--real): SmolLM2-135M-Instruct + LoRA and MiniLM, in bench/.venv against TRL 0.11.4
# ---------------------------------------------------------------------------------------------------------------------

def test_legacy_model_dir(tmp_path):
    "A transformers-5 checkpoint directory rewritten so transformers 4.45 reads the same model (rope theta, dtype, tokenizer)."
    import json
    b = _load()
    src = tmp_path / "src"; src.mkdir()
    (src / "config.json").write_text(json.dumps({"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
                                                 "dtype": "float32", "model_type": "llama"}))
    (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend", "backend": "x"}))
    (src / "chat_template.jinja").write_text("{{ messages }}")
    (src / "model.safetensors").write_bytes(b"weights")
    dst = Path(b.legacy_model_dir(src, tmp_path / "dst"))
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["rope_theta"] == 100000.0 and "rope_scaling" not in cfg and "rope_parameters" not in cfg
    assert cfg["torch_dtype"] == "float32" and "dtype" not in cfg
    tc = json.loads((dst / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast" and "backend" not in tc and tc["chat_template"] == "{{ messages }}"
    assert (dst / "model.safetensors").is_symlink() and (dst / "model.safetensors").read_bytes() == b"weights"
    cfg_scaled = {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}}
    (src / "config.json").write_text(json.dumps(cfg_scaled))
    cfg = json.loads((Path(b.legacy_model_dir(src, tmp_path / "dst2")) / "config.json").read_text())
    assert cfg["rope_theta"] == 5e5 and cfg["rope_scaling"]["rope_type"] == "llama3"


def _fake_ppo_run(scale: float, rss_mib: float) -> dict:
    "A real-mode PPO worker result: every phase `scale` x a fixed split, `rss_mib` MiB peak."
    r = dict(prompt_tokens=400, response_tokens=400, peak_flops=50e9, peak_flops_cpu=100e9, frozen=100_000_000,
             trainable=1_000_000, lm_head=20_000_000, load_step=(1.0, 1.0))
    for pre in ("", "cpu/"):
        r.update({pre + "generation": 4.0 * scale, pre + "scoring": 0.0, pre + "logprobs": 2.0 * scale,
                  pre + "update": 12.0 * scale, pre + "update_forward": 5.0 * scale, pre + "total": 18.0 * scale})
    for k in ("peak_rss", "vmhwm"): r[k] = rss_mib * 2 ** 20
    r.update(peak_above_start=0.3 * r["peak_rss"], rss_setup=0.5 * r["peak_rss"], rss_setup_file=0.0)
    return r


def test_report_real_goals():
    "The real report's goal table: ratios of CPU medians, peak RSS ratio and the update's MFU against the goals."
    b = _load()
    a = b.parse_args(["--real"])
    info = dict(cpu="test cpu", cores=2, python="3", load=(0.5, 0.5, 0.5), threads=1)
    ok = {"ours": [_fake_ppo_run(0.7, 500)] * 3, "trl": [_fake_ppo_run(1.0, 1000)] * 3}
    text = b.report_real({"peak_flops": 50e9, "peak_flops_cpu": 100e9, "ppo": ok, "wall": 1.0, "loads": [0.5]}, a, info)
    assert "| PPO step <= 0.8x TRL's time (CPU) | 0.70x | yes |" in text
    assert "| peak RSS <= 0.6x TRL's (whole process) | 0.50x | yes |" in text
    # update FLOPs (LoRA, 1 epoch): (4(F - H) + 6L) x 800 tokens + 4H x 400 response tokens = 2.928e11 (the LM head H
    # counts only where log-probs are needed) in 12 * 0.7 CPU s against a 100 GFLOP/s peak: 34.9% (38.7% counting H
    # at every token)
    assert "| training MFU >= 50% of the matmul peak | 34.9% | **no** |" in text
    slow = {"ours": [_fake_ppo_run(0.9, 700) for _ in range(3)], "trl": [_fake_ppo_run(1.0, 1000)] * 3}
    slow["ours"][0]["cpu/update"] = 12.0 * 0.5                               # the median of 3 ignores one outlier
    text = b.report_real({"peak_flops": 50e9, "peak_flops_cpu": 100e9, "ppo": slow, "wall": 1.0, "loads": [3.0]}, a, info)
    assert "| PPO step <= 0.8x TRL's time (CPU) | 0.90x | **no** |" in text
    assert "| peak RSS <= 0.6x TRL's (whole process) | 0.70x | **no** |" in text
    assert "| training MFU >= 50% of the matmul peak | 27.1% | **no** |" in text   # 2.928e11 FLOPs / 10.8 s / 1e11
    assert "shared with other jobs" in text                    # a load above 1.5 was seen: the report says so
    slow["ours+proposed"] = [_fake_ppo_run(0.5, 550)] * 3       # a patched run of ours (--proposal) gets its own rows
    text = b.report_real({"peak_flops": 50e9, "peak_flops_cpu": 100e9, "ppo": slow, "wall": 1.0, "loads": [3.0]}, a, info)
    assert "| ... ours + proposed: PPO step | 0.50x | yes |" in text and "| ... ours + proposed: peak RSS | 0.55x | yes |" in text
    assert "| PPO step <= 0.8x TRL's time (CPU) | 0.90x | **no** |" in text


def test_report_real_common_peak_and_render_json(tmp_path):
    "Every MFU divides by one peak (the median of the workers' measurements), not by each worker's own; a run's saved "
    "measurements re-render into the same report."
    b = _load()
    a = b.parse_args(["--real"])
    info = dict(cpu="test cpu", cores=2, python="3", load=(0.5, 0.5, 0.5), threads=1)
    runs = {"ours": [_fake_ppo_run(0.7, 500) for _ in range(3)], "trl": [_fake_ppo_run(1.0, 1000) for _ in range(3)]}
    for r in runs["ours"]: r["peak_flops_cpu"] = 50e9      # ours measured half the peak: its own would double its MFU
    res = {"peak_flops": 50e9, "peak_flops_cpu": 100e9, "ppo": runs, "wall": 1.0, "loads": [0.5], "load_end": 0.5}
    text = b.report_real(res, a, info)
    # the median over the 6 workers is 75 GFLOP/s: 34.9% x 100 / 75 = 46.5% (its own 50 GFLOP/s would give 69.7%)
    assert "| training MFU >= 50% of the matmul peak | 46.5% | **no** |" in text, text[-600:]
    assert "they ranged 50.0-100.0" in text
    import json
    args = {k: sorted(v) if isinstance(v, set) else v for k, v in vars(a).items()}
    (tmp_path / "r.json").write_text(json.dumps(dict(results=res, info=info, args=args)))
    assert b.render_real_json(str(tmp_path / "r.json"), str(tmp_path / "r.md")) == text == (tmp_path / "r.md").read_text()
    assert b.parse_args(["--real", "--render-json", "r.json"]).out is None   # no --out: print, overwrite no committed file

def test_report_real_gpu():
    "The GPU report: wall-time medians and ratios, peak GPU memory (max over repeats), MFU against the fp32 peak."
    b = _load()
    a = b.parse_args(["--real", "--device", "cuda"])
    assert a.device == "cuda" and b.parse_args(["--real"]).device == "cpu"
    gpu = lambda r, mem: {**r, "gpu_peak_allocated": mem * 2 ** 30, "gpu_peak_reserved": 1.5 * mem * 2 ** 30,
                          "peak_flops": 50e12, "peak_flops_bf16": 800e12}
    ours = [gpu(_fake_ppo_run(0.1, 1), 1.0), gpu(_fake_ppo_run(0.05, 1), 1.2), gpu(_fake_ppo_run(0.2, 1), 0.9)]
    trl = [gpu(_fake_ppo_run(0.2, 1), 2.0)] * 3
    rm = lambda t, mem: dict(total=t, steps=2, gpu_peak_allocated=mem * 2 ** 30)
    info = dict(cpu="host", cores=16, python="3.12", load=(0.5,) * 3, gpu="Test GPU")
    text = b.report_real_gpu({"ppo": {"ours": ours, "trl": trl}, "reward": {"ours": [rm(1.0, 1)] * 3,
                              "trl": [rm(4.0, 1)] * 3}, "wall": 9.0}, a, info)
    assert "Device: **Test GPU**" in text
    assert "| **PPO step (s)** | 1.800 | 3.600 | 0.50 |" in text          # medians: 18 x 0.1 vs 18 x 0.2
    assert "| **peak GPU memory allocated during the step (GiB)** | 1.20 | 2.00 | 0.60 |" in text   # max over repeats
    # update FLOPs 2.928e11 (as in the CPU report) over the median update wall time 1.2 s (TRL 2.4 s), against 50 TFLOP/s
    assert "| update MFU vs the measured fp32 matmul peak | 0.5% | 0.2% |  |" in text
    assert "| **step (s, set-up included, as in the CPU table)** | 0.500 | 2.000 | 0.25 |" in text
    # generation: 400 new tokens in 0.4 s (ours) vs 0.8 s (TRL): TRL/ours = 0.50; the scoring phase (0 s) gets no ratio
    assert "| generation: new tokens per s | 1000 | 500 | 0.50 (TRL/ours) |" in text
    assert "| scoring | 0.000 | 0.000 | n/a |" in text and "Random weights" not in text
    os.environ["BENCH_RANDOM_WEIGHTS"] = "1"
    try: assert "**Random weights**" in b.report_real_gpu({"ppo": {"ours": ours, "trl": trl}, "wall": 1.0}, a, info)
    finally: del os.environ["BENCH_RANDOM_WEIGHTS"]


def test_gpu_driver_table_and_render(tmp_path):
    "bench/gpu.py: the DeepSpeed table (steady throughput, tokens per sample as counted, the estimate, a failed run) "
    "and --render, which merges the calls of one device in a fixed order and refuses to mix devices."
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g)
    m = dict(script="train_sft", model_config="opt-1.3b", deepspeed="zero2", zero_stage=2, n_params=1_218_000_000,
             steps=15, batch_size_per_process=16, samples_per_second=50.0, tokens_per_second=5000.0,
             steady_samples_per_second=80.0, peak_memory_gb=26.9, wall=35.0)
    m["estimate_gb"] = g.estimate_gb(m, 2)
    assert abs(m["estimate_gb"] - 16 * 1.218) < 1e-9                 # (2 + 2 + 12) bytes per parameter, one GPU
    ppo = dict(m, script="train_ppo", model_config="opt-125m", n_params=dict(actor=1e8, critic=1e8, reference=1e8, reward=1e8))
    assert abs(g.estimate_gb(ppo, 3) - (16 + 16 + 2 + 2) * 0.1) < 1e-9   # rlhf_memory: two trained, two frozen 16-bit
    bad = dict(script="train_ppo", model_config="opt-1.3b", deepspeed="zero3", wall=76.0, error="not measured: stopped")
    text = g.ds_table([m, bad], "Test GPU")
    assert "| train_sft | opt-1.3b | 1218 | 2 | 15 x 16 | 80.0 | 8,000 | 26.9 | 19.5 | 35 |" in text   # 100 tokens/sample
    assert "| train_ppo | opt-1.3b | | zero3 | not measured: stopped |" in text
    import json
    a, b_ = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(dict(device="Test GPU", runs=[bad])))
    b_.write_text(json.dumps(dict(device="Test GPU", runs=[m])))
    g.render([str(a), str(b_)], tmp_path / "merged")
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert [r["script"] for r in merged["runs"]] == ["train_sft", "train_ppo"]   # SIZES x scripts x stages order
    assert (tmp_path / "merged.md").read_text().startswith("DeepSpeed scripts on **Test GPU**")
    ok = dict(m, script="train_ppo", deepspeed="zero3", zero_stage=3, n_params=ppo["n_params"])  # a later call measured it
    c = tmp_path / "c.json"; c.write_text(json.dumps(dict(device="Test GPU", runs=[ok])))
    g.render([str(a), str(b_), str(c)], tmp_path / "merged")
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert len(merged["runs"]) == 2 and "error" not in merged["runs"][1]     # the measured row replaces the stopped one
    g.render([str(c), str(a)], tmp_path / "merged")                          # in either order
    assert "error" not in json.loads((tmp_path / "merged.json").read_text())["runs"][0]
    b_.write_text(json.dumps(dict(device="Other GPU", runs=[m])))
    with pytest.raises(SystemExit, match="different devices"): g.render([str(a), str(b_)], tmp_path / "merged")


def _real_mode_ready() -> str:
    "Why the real-mode run cannot happen here ('' when it can): bench/.venv with TRL + peft, and the converted models."
    if not BENCH_PY.exists(): return "bench/.venv missing: run `bash bench/setup.sh`"
    p = subprocess.run([str(BENCH_PY), "-c", "import trl, peft"], capture_output=True, text=True)
    if p.returncode: return "bench/.venv lacks trl or peft"
    from open_chatgpt.models import MODEL_CACHE
    for name in ("smollm2-135m-instruct", "minilm-l6"):
        if not (Path(MODEL_CACHE) / name / "config.json").exists(): return f"{name} not converted in {MODEL_CACHE}"
    return ""


@pytest.mark.skipif(bool(_real_mode_ready()), reason=_real_mode_ready() or "ready")
def test_real_agreement_with_trl(tmp_path):
    """`run.py --real --quick --only agreement` in bench/.venv: on SmolLM2-135M + LoRA, our per-token log-probs, values,
    rewards, advantages, returns, losses and gradients agree with TRL's within the real mode's tolerances."""
    import re
    out = tmp_path / "results-real.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([str(BENCH_PY), str(BENCH), "--real", "--quick", "--only", "agreement", "--out", str(out)],
                       capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    text = out.read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| PPO") and len(cells) == 4: rows[cells[0]] = cells[1:]
    b = _load()
    assert len(rows) == 13, rows                                     # 11 + the micro-batch path's loss and gradients
    for name, (diff, tol, within) in rows.items():
        if tol:
            assert float(diff) <= float(tol), (name, diff, tol)
            assert within == "yes", (name, within)
    assert set(b.REAL_TOLERANCES.values()) >= {1e-5}                 # the tiny mode's tolerance for the losses
    for k in ("PPO per token: logprobs", "PPO per token: values", "PPO per token: advantages", "PPO: total loss",
              "PPO: gradients, relative to the largest", "PPO, micro-batches of one row: gradients, relative"):
        assert rows[k][1], k                                         # each of these has a tolerance and was checked
    clip = float(re.search(r"clip fraction ours ([0-9.]+)", text).group(1))
    kl = float(re.search(r"KL to the reference ([0-9.]+)", text).group(1))
    assert clip > 0 and kl > 0.01                                    # the check exercised clipping and a KL penalty

"""DeepSpeed chapter: the memory estimator against the ZeRO paper, the shipped configs, and each script's CPU mode
run end to end as a subprocess (one process, gloo, tiny model). The script tests need DeepSpeed:
`DS_BUILD_OPS=0 pip install deepspeed` on a CPU machine."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from open_chatgpt.distributed import (DS_CONFIGS, GB, ds_config, pick_zero, resolve_config, rlhf_memory, total_gb,
                                      zero_memory)

REPO = Path(__file__).resolve().parents[1]
HAVE_DS = importlib.util.find_spec("deepspeed") is not None
needs_ds = pytest.mark.skipif(not HAVE_DS, reason="deepspeed is not installed: DS_BUILD_OPS=0 pip install deepspeed")


@pytest.mark.parametrize("stage,gb", [(0, 120), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_figure1(stage, gb):
    assert abs(zero_memory(7.5e9, 64, stage).total / GB - gb) < 0.05


def test_offload_moves_states_to_cpu():
    on_gpu, off = zero_memory(1e9, 4, 2), zero_memory(1e9, 4, 2, offload_optimizer=True)
    assert off.optimizer == 0 and off.grads == 0 and off.params == on_gpu.params
    assert off.cpu == on_gpu.optimizer + on_gpu.grads
    with pytest.raises(ValueError, match="stage 3"): zero_memory(1e9, 4, 2, offload_params=True)


def test_rlhf_four_models():
    m = rlhf_memory(1e9, 5e8, n_gpus=1, stage=0)
    assert set(m) == {"actor", "critic", "reference", "reward"}
    assert abs(total_gb(m) - (16 * 1 + 16 * 0.5 + 2 * 1 + 2 * 0.5)) < 1e-9
    assert m["reference"].grads == 0 and m["reward"].optimizer == 0


def test_pick_zero_fits_budget():
    for n in (1, 2, 8):
        for p in (1e8, 1e9, 7e9):
            try: choice = pick_zero(p, n, 80)
            except ValueError: continue
            assert choice["gb_per_gpu"] <= 0.7 * 80


def test_shipped_configs_match_function():
    for name, kw in DS_CONFIGS.items():
        assert json.loads((REPO / "scripts" / "ds_configs" / f"{name}.json").read_text()) == ds_config(**kw), name


def test_resolve_config_fills_auto():
    for name in DS_CONFIGS:
        cfg = resolve_config(REPO / "scripts" / "ds_configs" / f"{name}.json", micro_batch_size=3)
        assert "auto" not in json.dumps(cfg) and cfg["train_micro_batch_size_per_gpu"] == 3
    with pytest.raises(ValueError, match="does not exist"): resolve_config("missing.json", 2)


def run_script(name, config, tmp_path, port, *extra):
    out = tmp_path / name
    cmd = [sys.executable, str(REPO / "scripts" / f"train_{name}.py"), "--cpu", "--deepspeed", config,
           "--max-steps", "2", "--output-dir", str(out), *extra]
    env = {**os.environ, "MASTER_PORT": str(port), "PYTHONWARNINGS": "ignore"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"): env.pop(k, None)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return json.loads((out / "metrics.json").read_text())


@needs_ds
def test_sft_script_cpu_zero2(tmp_path):
    m = run_script("sft", "zero2", tmp_path, 29711)
    assert (m["zero_stage"], m["steps"], m["world_size"], m["device"], m["path"]) == (2, 2, 1, "cpu", "hf-trainer")
    assert m["last_loss"] == m["last_loss"] and m["samples_per_second"] > 0   # finite loss, measured throughput
    assert 0 < m["steady_samples_per_second"] < float("inf")                  # steps 2..N timed by the step clock
    # throughput counts what the model saw: every row fits (filtered first), tokens without padding, the loop's time only
    import warnings
    from open_chatgpt.data import SFTCollator, get_tokenizer, sample_sft
    from open_chatgpt.sft import filter_sft
    tok = get_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = filter_sft(sample_sft("train"), tok, 64).select(range(2 * 4))     # --max-steps 2, CPU batch 4, max_length 64
    tokens = int(SFTCollator(tok, 64)([rows[i] for i in range(len(rows))])["attention_mask"].sum())
    assert abs(m["samples_per_second"] * m["seconds"] - 8) < 1e-6
    assert abs(m["tokens_per_second"] * m["seconds"] - tokens) < 1e-6 and m["setup_seconds"] > 0


def test_sft_script_names_a_bad_config(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "train_sft.py"), "--cpu", "--deepspeed", "zero1"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode != 0 and "give a JSON file or one of" in p.stderr


@needs_ds
def test_reward_script_cpu_zero3(tmp_path):
    m = run_script("reward", "zero3", tmp_path, 29712)
    assert (m["zero_stage"], m["steps"], m["path"]) == (3, 2, "deepspeed.initialize")
    assert 0 < m["first_loss"] < 5
    assert 0 < m["steady_samples_per_second"] < float("inf") and 0 < m["steady_tokens_per_second"] < float("inf")


@needs_ds
def test_ppo_script_cpu_zero3_gathers_for_generation(tmp_path):
    m = run_script("ppo", "zero3", tmp_path, 29713)
    assert (m["zero_stage"], m["steps"], m["gathered_generation"]) == (3, 2, True)
    assert all(r["response/length"] >= 1 for r in m["history"])
    assert set(m["n_params"]) == {"actor", "critic", "reference", "reward"}
    h = m["history"][1:]                                                       # steady state: steps 2..N, as reported
    B = m["batch_size_per_process"] * m["world_size"]
    assert abs(m["steady_samples_per_second"] - len(h) * B / sum(r["time/rollout"] + r["time/update"] for r in h)) < 1e-6

"`scripts/figures.py`: every chapter's key figure from one pipeline run, on a toy run (about a minute in all on 2 busy CPU cores)."
import importlib.util, json, shutil
from pathlib import Path

import pytest

from open_chatgpt.pipeline import main

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("figures", ROOT / "scripts" / "figures.py")
figures = importlib.util.module_from_spec(spec); spec.loader.exec_module(figures)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "One finished toy pipeline run (`open-chatgpt pipeline --quick`, smaller still: 2 PPO steps, no best-of-n)."
    import torch
    out, threads = tmp_path_factory.mktemp("figrun"), torch.get_num_threads()
    torch.set_num_threads(1)                                    # toy models: one thread is faster on a shared CPU
    try: assert main(["pipeline", "-o", str(out), "--quick", "--set", "n_eval_prompts=4", "--set", "best_of_n=1",
                      "--set", "ppo.total_steps=2", "--set", "sft.eval_size=8"]) == 0
    finally: torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def made(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("images")
    assert figures.main([str(run), "--out", str(out)]) == 0
    return out


def test_every_figure_is_a_png_and_figures_json_names_the_run(run, made):
    import open_chatgpt.ppo as ppo
    rec = json.loads((made / "figures.json").read_text())
    assert rec["run"]["dir"] == str(run) and rec["run"]["seed"] == 0 and "tiny GPT-2" in rec["run"]["model"]
    assert rec["machine"]["cores"] >= 1 and rec["machine"]["torch"] and rec["date"]
    want = ["sft_loss.png", "rm_accuracy.png", "gae_credit.png", "ppo_reward_kl.png", "zero_memory.png", "ppo_dials.png"]
    assert callable(ppo.plot_dials)
    assert sorted(f["file"] for f in rec["files"]) == sorted(want)
    for name in want:
        data = (made / name).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000, name          # a real, drawn PNG
        assert next(f for f in rec["files"] if f["file"] == name)["caption"]
    assert str(run) in (made / "captions.txt").read_text()
    assert str(run) in figures.footer(rec["run"], rec["machine"]) and rec["machine"]["torch"] in figures.footer(rec["run"], rec["machine"])


def test_rm_caption_quotes_the_runs_own_numbers(run, made):
    ev = json.loads((run / "reward" / "eval.json").read_text())
    cap = next(f for f in json.loads((made / "figures.json").read_text())["files"] if f["file"] == "rm_accuracy.png")["caption"]
    assert f"{ev['accuracy']:.3f}" in cap and f"{ev['baselines']['bag_of_words']['accuracy']:.3f}" in cap


def test_a_run_without_sft_gets_no_sft_figure_and_says_so(run, tmp_path):
    bare = tmp_path / "nosft"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("*.safetensors", "checkpoints", "answers*"))
    cfg = json.loads((bare / "pipeline_config.json").read_text()); cfg["sft"]["max_steps"] = 0
    (bare / "pipeline_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "img"; out.mkdir()
    (out / "sft_loss.png").write_bytes(PNG)                     # a stale figure of another run must not survive
    rec = figures.make_figures(bare, out, log=lambda *a: None)
    assert not (out / "sft_loss.png").exists() and "skipped SFT" in rec["skipped"]["sft_loss.png"]
    assert "sft_loss.png" in (out / "captions.txt").read_text() and (out / "rm_accuracy.png").exists()


def test_gae_credit_is_lambda_to_the_distance():
    T, V = 12, 0.3
    adv = figures.gae_credit(T, V, lambdas=(0.0, 0.5, 1.0))
    for lam, a in adv.items():      # every TD error is 0 but the last, 1 - V: A_t = (1 - V) * lam^(T-1-t)
        assert a == pytest.approx([(1 - V) * lam ** (T - 1 - t) for t in range(T)], abs=1e-6), lam


def test_zero_table_is_the_zero_papers_arithmetic():
    n = figures.n_params("opt-125m")
    assert n == 125_239_296                                     # OPT-125m's published size
    rows = {r["label"]: r for r in figures.zero_table(n, n_gpus=8)}
    total = lambda r: r["params"] + r["grads"] + r["optimizer"]
    assert total(rows["DDP"]) == pytest.approx(16 * n / 1e9)      # 2 + 2 + 12 bytes per parameter
    assert total(rows["ZeRO-3"]) == pytest.approx(16 * n / 8 / 1e9)
    assert total(rows["ZeRO-3 +all off"]) == 0 and rows["ZeRO-3 +all off"]["cpu"] == pytest.approx(16 * n / 8 / 1e9)

"The pipeline (chapter 10) and the `open-chatgpt` command: end to end at toy size, kill -9 and resume, bad input."
import json, os, re, signal, subprocess, sys, time
from pathlib import Path

import pytest

from open_chatgpt.pipeline import PipelineConfig, QUICK_RUN, chat, main, run_ppo
from open_chatgpt.ppo import read_metrics

TOY = ["--quick", "--set", "n_eval_prompts=4"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    "One finished toy pipeline run through the console entry point."
    out = tmp_path_factory.mktemp("run")
    assert main(["pipeline", "-o", str(out), *TOY]) == 0
    return out


def test_pipeline_writes_every_stage(done):
    for f in ["sft/config.json", "sft/metrics.jsonl", "sft/loss.png", "reward/metrics.jsonl", "reward/eval.json",
              "judge.json", "ppo/policy/config.json", "ppo/metrics.jsonl", "ppo/metrics.csv", "ppo/reward_kl.png", "ppo/dials.png",
              "ppo/checkpoints/last.pt", "ppo/curve.jsonl", "eval/overoptimisation.png", "eval/answers-sft.jsonl",
              "summary.json", "pipeline_config.json"]:
        assert (done / f).exists(), f
    s = json.loads((done / "summary.json").read_text())
    n, k = QUICK_RUN["ppo"]["total_steps"], QUICK_RUN["best_of_n"]
    assert s["steps"] == n and s["n_eval_prompts"] == 4
    assert [r["step"] for r in read_metrics(done / "ppo" / "metrics.jsonl")] == list(range(1, n + 1))
    assert [c["step"] for c in s["curve"]] == list(range(0, n + 1))         # SFT, then every checkpoint (save_every=1)
    assert set(s["policies"]) == {"sft", "ppo"} and s["curve"][0]["kl"] == 0.0
    assert len(read_metrics(done / "eval" / "answers-sft.jsonl")) == 4 * k     # best-of-n answers of the SFT policy
    assert [b["n"] for b in s["best_of_n"]] == [1, 2]
    w = s["win_rates"]["gold"]["rl_vs_sft"]
    assert w["n"] == 4 and w["ci_low"] <= w["win_rate"] <= w["ci_high"]
    assert w["draws"] == [1, k]                                              # against every SFT answer of a prompt
    rm = s["reward_model"]
    assert rm["n"] == 394 and set(rm["baselines"]) == {"length", "bag_of_words"} and rm["normalisation"]["n"] == 4
    assert s["judge"]["n_eval"] == 394 and 0 <= s["judge"]["accuracy"] <= 1
    assert not [p for p in done.rglob(".*")]                            # no temporary files or directories left


def test_chat_answers(done, monkeypatch):
    "chat = greedy generation from the saved policy on the formatted conversation, cut at the next turn."
    from open_chatgpt import ppo
    from open_chatgpt.data import get_tokenizer, hh_prompt
    from open_chatgpt.sft import generate, load_policy
    path = str(done / "ppo" / "policy")
    tok = get_tokenizer(path); model = load_policy(path, tokenizer=tok)
    reply, history = chat(path, "Hello, who are you?", max_new_tokens=8, temperature=0, model=model, tokenizer=tok)
    want = generate(model, tok, [hh_prompt("Hello, who are you?")], max_new_tokens=8)[0].split("\n\nHuman:")[0].strip()
    assert reply == want and history == [("Hello, who are you?", reply)]
    seen = []
    real = ppo.rollout
    monkeypatch.setattr(ppo, "rollout", lambda m, t, prompts, *a, **k: (seen.extend(prompts), real(m, t, prompts, *a, **k))[1])
    reply2, history = chat(path, "And then?", history, max_new_tokens=8, temperature=0, model=model, tokenizer=tok)
    assert len(history) == 2 and "Hello, who are you?" in seen[0] and seen[0].rstrip().endswith("Assistant:")


def test_sigkill_mid_ppo_then_resume(tmp_path):
    n = 12
    args = ["pipeline", "-o", str(tmp_path), *TOY, "--ppo-steps", str(n), "--set", "ppo.save_every=2",
            "--set", "ppo.batch_size=8", "--set", "ppo.max_new_tokens=16"]
    code = "import sys; from open_chatgpt.pipeline import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = tmp_path / "ppo" / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(read_metrics(metrics)) >= 3: break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    logged = [r["step"] for r in read_metrics(metrics)]
    assert 3 <= len(logged) < n and not (tmp_path / "summary.json").exists()
    assert main(args + ["--resume"]) == 0
    assert [r["step"] for r in read_metrics(metrics)] == list(range(1, n + 1))      # every step exactly once
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["steps"] == n and [c["step"] for c in s["curve"]] == [0] + list(range(2, n + 1, 2))   # no step twice


def test_config_that_cannot_fit_fails_clearly_and_writes_nothing(done, tmp_path, capsys):
    before = sorted(p.name for p in (done / "ppo").iterdir())
    rc = main(["ppo", "-o", str(done), *TOY, "--set", "ppo.max_prompt_length=600", "--set", "ppo.max_new_tokens=64"])
    assert rc == 2 and "does not fit" in capsys.readouterr().err
    assert sorted(p.name for p in (done / "ppo").iterdir()) == before
    assert main(["pipeline", "-o", str(tmp_path), "--set", "ppo.lr=1"]) == 2          # misspelt field
    assert "no field" in capsys.readouterr().err and not (tmp_path / "sft").exists()
    rc = main(["pipeline", "-o", str(tmp_path), "--set", "ppo.max_prompt_length=600"])
    assert rc == 2 and "does not fit" in capsys.readouterr().err and not (tmp_path / "sft").exists()
    assert main(["pipeline", "-o", str(tmp_path), "--config", str(tmp_path / "missing.json")]) == 2
    assert main(["ppo", "-o", str(tmp_path / "empty")]) == 2 and "run it first" in capsys.readouterr().err


def test_config_file_and_overrides(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"data": "sample", "ppo": {"learning_rate": 0.001}, "sft": {"max_steps": 3}}))
    c = PipelineConfig.from_file(p).set("ppo.batch_size=4")
    assert c.ppo == {"learning_rate": 0.001, "batch_size": 4} and c.sft == {"max_steps": 3}
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"): PipelineConfig.from_file(p)


def test_summarization_example_runs_on_local_tldr_files(tmp_path):
    "Example 3 (TL;DR summarization) when the data is given: summarize-from-feedback comparisons + TL;DR demonstrations."
    posts = [f"I moved to a new city {i} weeks ago and my neighbour plays drums every night until 2am. "
             f"I asked politely twice. What should I do about it, number {i}?" for i in range(12)]
    cmp_ = [{"info": {"post": p, "title": f"Noisy neighbour {i}", "subreddit": "relationships"},
             "summaries": [{"text": " Neighbour drums late; asked twice; what next?"}, {"text": " city"}], "choice": 0}
            for i, p in enumerate(posts)]
    sft = [{"prompt": f"SUBREDDIT: r/relationships\nTITLE: Noisy neighbour {i}\nPOST: {p}\nTL;DR:",
            "label": " Neighbour drums late at night; asked twice; what next?"} for i, p in enumerate(posts)]
    for name, recs in (("cmp.jsonl", cmp_), ("tldr.jsonl", sft)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "run"
    assert main(["pipeline", "-o", str(out), *TOY, "--data", str(tmp_path / "cmp.jsonl"),
                 "--sft-data", str(tmp_path / "tldr.jsonl"), "--set", "showcase=[]"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == QUICK_RUN["ppo"]["total_steps"] and all("TL;DR" in x["prompt"] for x in s["samples"])


def test_every_algo_on_the_same_run_and_the_comparison_table(done, tmp_path):
    "--algo dpo/grpo/rloo with --resume reuse the SFT, reward and judge stages and the SFT answers; one table compares them."
    import shutil
    run = tmp_path / "run"; shutil.copytree(done, run)
    before = {p: p.stat().st_mtime_ns for d in ("sft", "reward") for p in (run / d).rglob("*") if p.is_file()}
    sft_answers = (run / "eval" / "answers-sft.jsonl").read_text()
    for algo, steps in (("dpo", QUICK_RUN["dpo"]["max_steps"]), ("grpo", QUICK_RUN["grpo"]["total_steps"]),
                        ("rloo", QUICK_RUN["grpo"]["total_steps"])):
        assert main(["pipeline", "-o", str(run), *TOY, "--algo", algo, "--resume"]) == 0
        s = json.loads((run / f"summary-{algo}.json").read_text())
        assert s["algo"] == algo and s["steps"] == steps and set(s["policies"]) == {"sft", algo}
        assert [c["step"] for c in s["curve"]] == list(range(0, steps + 1))   # SFT, then every checkpoint
        assert (run / algo / "policy" / "config.json").exists()
        assert s["win_rates"]["gold"]["rl_vs_sft"]["n"] == 4
    first = json.loads((done / "eval" / "stage.json").read_text())["answers"]    # the PPO evaluation sampled them
    assert all(not a["reused"] and a["seconds"] > 0 for a in first.values())
    assert set(first) == {"sft", "qa probe of sft", "qa probe of rl"}               # answers and the probe's, no base model
    sec = json.loads((run / "summary-dpo.json").read_text())["seconds"]           # DPO's reused the SFT policy's: its
    reused = sum(a["seconds"] for k, a in first.items() if k != "qa probe of rl")  # cost counts them (its own policy's
    assert sec["eval"] == pytest.approx(sec["eval_this_run"] + reused)            # probe is asked anew, in this process)
    assert sec["eval_uncounted"] == []
    import math
    dpo_rows = read_metrics(run / "dpo" / "metrics.jsonl")       # step 1 starts at the SFT policy = the reference:
    assert abs(dpo_rows[0]["loss"] - math.log(2)) < 1e-5 and abs(dpo_rows[0]["rewards/margins"]) < 1e-6
    assert dpo_rows[-1]["eval_rewards/accuracies"] is not None
    assert json.loads((run / "dpo" / "stage.json").read_text())["precision"] == "float32"   # quick mode: cpu_bf16 off
    for algo in ("grpo", "rloo"):                                # sampled from the reference itself: KL exactly 0
        assert abs(read_metrics(run / algo / "metrics.jsonl")[0]["objective/kl"]) < 1e-5
    assert before == {p: p.stat().st_mtime_ns for d in ("sft", "reward") for p in (run / d).rglob("*") if p.is_file()}
    assert (run / "eval" / "answers-sft.jsonl").read_text() == sft_answers  # the SFT policy was not sampled again
    assert sorted(p.name for p in (run / "eval").glob("overoptimisation-*.png")) == [   # each algorithm's curve survives
        f"overoptimisation-{a}.png" for a in ("dpo", "grpo", "ppo", "rloo")]
    for a in ("dpo", "grpo", "ppo", "rloo"):                     # and its QA probe, every answer kept
        q, s = json.loads((run / "eval" / f"qa-probe-{a}.json").read_text()), json.loads((run / f"summary-{a}.json").read_text())
        assert q["algo"] == a and q["flips"] == s["qa_probe"]["flips"] and len(q["policies"]["rl"]["answers"]) == s["qa_probe"]["policies"]["rl"]["n"]
    out = subprocess.run([sys.executable, "scripts/compare_table.py", str(run), "--dry-run"], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    rows = [l for l in out.stdout.splitlines() if l.startswith("| ") and l.split("|")[1].strip() in ("PPO", "DPO", "GRPO", "RLOO")]
    assert [r.split("|")[1].strip() for r in rows] == ["PPO", "DPO", "GRPO", "RLOO"]
    for r in rows:                                               # the steps' own time, from each stage's metrics.jsonl
        algo = r.split("|")[1].strip().lower()
        steps_s = sum(x["time/step"] for x in read_metrics(run / algo / "metrics.jsonl"))
        assert r.split("|")[10].strip() == f"{steps_s / 60:.1f} min"
        q = json.loads((run / f"summary-{algo}.json").read_text())["qa_probe"]   # the QA probe, SFT -> this algorithm
        f = q["flips"]["rl_vs_sft"]
        assert r.split("|")[8].strip() == (f"{q['policies']['sft']['accuracy']:.2f} -> {q['policies']['rl']['accuracy']:.2f} "
                                           f"(+{f['gained']} / -{f['lost']})"), r
    other = tmp_path / "seed1"; shutil.copytree(run, other)              # a second seed: each algorithm's spread
    for f in other.glob("summary-*.json"):
        s = json.loads(f.read_text()); s["seed"] = 1; s["win_rates"]["gold"]["rl_vs_sft"]["win_rate"] = 0.25
        f.write_text(json.dumps(s))
    out = subprocess.run([sys.executable, "scripts/compare_table.py", str(run), "--seeds", str(other), "--dry-run"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    rows = {l.split("|")[1].strip(): l for l in out.stdout.splitlines() if l.startswith(("| PPO", "| DPO", "| GRPO", "| RLOO"))}
    assert sorted(rows) == ["DPO", "GRPO", "PPO", "RLOO"] and "seeds 0, 1" in out.stdout
    for algo, r in rows.items():
        w0 = json.loads((run / f"summary-{algo.lower()}.json").read_text())["win_rates"]["gold"]["rl_vs_sft"]["win_rate"]
        mean, sd = (w0 + 0.25) / 2, abs(w0 - 0.25) / 2 ** 0.5
        assert r.split("|")[4].strip() == f"{mean:.3f} ± {sd:.3f}", r


def test_no_sft_starts_rl_from_the_base_model(tmp_path):
    "`sft.max_steps=0` (no SFT): check_config accepts it, the sft stage saves the base model untouched."
    import torch
    from open_chatgpt.sft import load_policy, tiny_policy
    from open_chatgpt.data import get_tokenizer
    out = tmp_path / "run"
    assert main(["pipeline", "-o", str(out), *TOY, "--set", "sft.max_steps=0"]) == 0
    assert read_metrics(out / "sft" / "metrics.jsonl") == []
    tok = get_tokenizer()
    base = tiny_policy(tok, seed=0, **QUICK_RUN["tiny"])
    saved = load_policy(str(out / "sft"), tokenizer=tok)
    a, b = base.state_dict(), saved.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "summary.json").read_text())["steps"] == QUICK_RUN["ppo"]["total_steps"]
    table = subprocess.run([sys.executable, "scripts/results_table.py", str(out), "--dry-run"], capture_output=True,
                           text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert "| SFT | none (the base model) |" in table and "| start (the base model, no SFT) |" in table
    assert "QA probe (chapter 7: 99 short factual questions" in table and "PPO vs start +" in table
    assert ", answers sampled in fp32; measured on" in table              # the quick run's precision (the default)



def test_results_table_names_an_epoch_based_sft(done, tmp_path):
    "An SFT stage trained by epochs (max_steps None, as the tiny demo's) is rendered as '1 epoch' / '3 epochs'."
    import shutil
    run = tmp_path / "run"; shutil.copytree(done, run)
    for n, text in ((1, "| SFT | 1 epoch |"), (3, "| SFT | 3 epochs |")):
        info = json.loads((run / "sft" / "stage.json").read_text())
        info["config"].update(max_steps=None, epochs=n); (run / "sft" / "stage.json").write_text(json.dumps(info))
        table = subprocess.run([sys.executable, "scripts/results_table.py", str(run), "--dry-run"], capture_output=True,
                               text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
        assert text in table, table[:800]

def test_seed_table_reports_each_seed_and_the_spread(done, tmp_path):
    "Two runs whose win rates differ by 0.1: the table shows both and their mean and standard deviation."
    s = json.loads((done / "summary-ppo.json").read_text())
    other = tmp_path / "seed1"; other.mkdir()
    s1 = json.loads(json.dumps(s)); s1["seed"] = 1; s1["win_rates"]["gold"]["rl_vs_sft"]["win_rate"] = 0.6
    s["win_rates"]["gold"]["rl_vs_sft"]["win_rate"] = 0.5
    first = tmp_path / "seed0"; first.mkdir()
    for d, x, seed in ((first, s, 0), (other, s1, 1)):
        (d / "summary-ppo.json").write_text(json.dumps(x))
        (d / "pipeline_config.json").write_text(json.dumps({**json.loads((done / "pipeline_config.json").read_text()), "seed": seed}))
    out = subprocess.run([sys.executable, "scripts/results_table.py", str(first), "--seeds", str(other), "--dry-run"],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    rows = [r for r in out.splitlines() if r.startswith(("| 0 |", "| 1 |", "| **mean"))]
    assert len(rows) == 3 and rows[0].startswith("| 0 | 0.500") and rows[1].startswith("| 1 | 0.600")
    assert "| 0.550 ± 0.071 |" in rows[2] and "seeds 0, 1" in out                   # sd of (0.5, 0.6) = 0.0707


def test_results_table_total_of_a_resumed_run_sums_its_stages(done, tmp_path):
    "A resumed run's `total` times only its last process: the table shows the sum of the stages instead, and says so."
    import shutil
    run = tmp_path / "resumed"; shutil.copytree(done, run)
    s = json.loads((run / "summary-ppo.json").read_text())
    s["seconds"] = dict(sft=600.0, reward=300.0, judge=0.0, ppo=1200.0, eval=60.0, total=30.0)   # 36 min of stages
    (run / "summary-ppo.json").write_text(json.dumps(s))
    out = subprocess.run([sys.executable, "scripts/results_table.py", str(run), "--dry-run"], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert "| **total** | sum of the stages (the run was resumed, so no one process timed them all) | **36.0 min** | |" in out
    s["seconds"]["total"] = 2200.0                                       # one process ran every stage: its own clock
    (run / "summary-ppo.json").write_text(json.dumps(s))
    out = subprocess.run([sys.executable, "scripts/results_table.py", str(run), "--dry-run"], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert "| **total** | | **36.7 min** | |" in out


def test_resume_refuses_a_finished_stage_trained_with_other_settings(done, tmp_path):
    "--resume reuses a finished RL stage only with the settings it ran with (a new seed would mislabel its summary)."
    import shutil
    run = tmp_path / "run"; shutil.copytree(done, run)
    assert main(["pipeline", "-o", str(run), *TOY, "--resume"]) == 0            # the same settings: reused
    with pytest.raises(ValueError, match="seed changed since"):
        from open_chatgpt.pipeline import config_from_args, build_parser, run_pipeline
        run_pipeline(config_from_args(build_parser().parse_args(["pipeline", "-o", str(run), *TOY, "--seed", "1"])), resume=True)
    info = json.loads((run / "sft" / "stage.json").read_text()); info["seconds"] += 1       # as if SFT had been retrained
    (run / "sft" / "stage.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="sft_stage changed since"):
        run_pipeline(config_from_args(build_parser().parse_args(["pipeline", "-o", str(run), *TOY])), resume=True)
    (run / "sft" / "stage.json").write_text(json.dumps({**info, "seconds": info["seconds"] - 1}))   # as it was
    with pytest.raises(ValueError, match="tiny.n_embd changed since"):     # another policy: its SFT stage is stale too
        run_pipeline(config_from_args(build_parser().parse_args(["pipeline", "-o", str(run), *TOY, "--set",
                                                                  "tiny.n_embd=48"])), resume=True)



def test_resume_refuses_finished_sft_and_reward_stages_trained_with_other_settings(done, tmp_path):
    "A finished SFT or reward stage is reused only with its own settings, also when the RL stage has not run yet."
    import shutil
    from open_chatgpt.pipeline import build_parser, config_from_args, run_pipeline
    run = tmp_path / "run"; shutil.copytree(done, run)
    cfg = lambda *extra: config_from_args(build_parser().parse_args(["pipeline", "-o", str(run), *TOY, *extra]))
    info = json.loads((run / "sft" / "stage.json").read_text())
    sft = info["settings"]["sft"]                                           # the whole SFTConfig, defaults included
    assert {k: sft[k] for k in cfg().sft} == cfg().sft and "learning_rate" in sft and "sft_stage" in json.loads((run / "reward" / "stage.json").read_text())["settings"]
    (tmp_path / "other.jsonl").write_text("".join(json.dumps({"prompt": f"\n\nHuman: question {i}?\n\nAssistant:"}) + "\n"
                                                  for i in range(8)))
    for extra, what in ((("--algo", "dpo", "--set", "sft.max_steps=0"), "sft.max_steps"),   # no DPO stage yet: before,
                        (("--algo", "dpo", "--set", "lora={}"), "lora"),                     # the old SFT was reused
                        (("--algo", "grpo", "--set", "reward.max_length=32"), "reward.max_length"),
                        (("--algo", "grpo", "--set", "n_norm_prompts=3"), "n_norm_prompts"),
                        (("--algo", "grpo", "--prompts", str(tmp_path / "other.jsonl")), "prompts")):  # normalised on
        with pytest.raises(ValueError, match=re.escape(f"was trained with other settings ({what}")):
            run_pipeline(cfg(*extra), resume=True)
    assert not (run / "dpo").exists() and not (run / "grpo").exists()      # refused before anything ran
    assert main(["pipeline", "-o", str(run), *TOY, "--resume", "--set", "sft.log_every=3"]) == 0   # cannot change a result
    (run / "sft" / "stage.json").unlink()                                   # SFT will be trained again: its reward model is stale
    with pytest.raises(ValueError, match="was built on the SFT model it replaces"):
        run_pipeline(cfg(), resume=True)


def test_resume_refuses_an_unfinished_stage_begun_with_other_settings(done, tmp_path):
    "An interrupted RL stage (no stage.json yet) continues only with the settings it began with; its length may change."
    import shutil
    from open_chatgpt.pipeline import build_parser, config_from_args, run_pipeline
    run = tmp_path / "run"; shutil.copytree(done, run)
    (run / "ppo" / "stage.json").unlink()                               # as if the run had been killed after its last save
    assert (run / "ppo" / "settings.json").exists() and (run / "ppo" / "checkpoints" / "last.pt").exists()
    cfg = lambda *extra: config_from_args(build_parser().parse_args(["pipeline", "-o", str(run), *TOY, *extra]))
    recorded = (run / "ppo" / "settings.json").read_text()
    with pytest.raises(ValueError, match="unfinished run that began with other settings \\(ppo.vf_coef changed"):
        run_pipeline(cfg("--set", "ppo.vf_coef=0.37"), resume=True)   # a default before: compared all the same
    assert (run / "ppo" / "settings.json").read_text() == recorded        # a refused resume records nothing
    from open_chatgpt.plumbing import open_run
    from open_chatgpt.ppo import PPOConfig
    was = json.loads((run / "ppo" / "ppo_config.json").read_text()); lr = was["learning_rate"]
    with pytest.raises(ValueError, match=re.escape(f"learning_rate: {lr!r} -> {lr * 10!r}")):   # the trainer's own check
        open_run(run / "ppo", True, PPOConfig(**{**was, "learning_rate": lr * 10}), "ppo", load=lambda s: 0)
    steps = QUICK_RUN["ppo"]["total_steps"]
    s = run_pipeline(cfg("--ppo-steps", str(steps + 1)), resume=True)   # longer: continues from the last checkpoint
    assert s["steps"] == steps + 1
    assert [r["step"] for r in read_metrics(run / "ppo" / "metrics.jsonl")] == list(range(1, steps + 2))

def test_eval_refuses_answers_to_other_prompts(done, tmp_path):
    "The final policy's answers and the SFT answers are paired prompt by prompt: other prompts are an error, not a number."
    import shutil
    from open_chatgpt.pipeline import config_from_args, build_parser, run_eval
    run = tmp_path / "run"; shutil.copytree(done, run)
    final = sorted((run / "ppo" / "answers").glob("step-*.jsonl"))[-1]
    rows = read_metrics(final)
    final.write_text("".join(json.dumps({**r, "prompt": r["prompt"] + " (another prompt)"}) + "\n" for r in rows))
    with pytest.raises(ValueError, match="other prompts than the SFT answers"):
        run_eval(config_from_args(build_parser().parse_args(["pipeline", "-o", str(run), *TOY])), log=lambda m: None)


def test_no_judge_removes_an_earlier_judge_json(done, tmp_path):
    import shutil
    from open_chatgpt.pipeline import config_from_args, build_parser, run_judge
    run = tmp_path / "run"; shutil.copytree(done, run)
    cfg = config_from_args(build_parser().parse_args(["pipeline", "-o", str(run), *TOY, "--set", "judge=null"]))
    assert run_judge(cfg, log=lambda m: None) is None and not (run / "judge.json").exists()


def test_tables_refuse_summaries_that_do_not_belong_together(done, tmp_path):
    "A summary-ppo.json from before a retrained SFT stage, and seed runs that do not share the reward model."
    import shutil
    run = tmp_path / "run"; shutil.copytree(done, run)
    s = json.loads((run / "summary.json").read_text()); s["sft_answers_key"] = "retrained"
    (run / "summary.json").write_text(json.dumps(s))
    p = subprocess.run([sys.executable, "scripts/results_table.py", str(run), "--dry-run"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert p.returncode != 0 and "from an earlier run" in p.stderr
    other = tmp_path / "seed1"; shutil.copytree(done, other)
    s = json.loads((other / "summary-ppo.json").read_text()); s["seed"] = 1; s["reward_model"]["accuracy"] += 0.01
    for f in ("summary-ppo.json", "summary.json"): (other / f).write_text(json.dumps(s))
    p = subprocess.run([sys.executable, "scripts/results_table.py", str(done), "--seeds", str(other), "--dry-run"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert p.returncode != 0 and "does not share the reward_model" in p.stderr


def test_a_small_sft_file_without_held_out_records_trains_without_an_eval_loss(tmp_path):
    "A few demonstrations, none of whose prompts falls in the hashed test split: no SFT eval loss, not a refusal."
    from open_chatgpt.data import prompt_split
    from open_chatgpt.pipeline import config_from_args, build_parser, check_config, sft_eval_data
    prompts = [p for p in (f"\n\nHuman: question {i}?\n\nAssistant:" for i in range(100)) if prompt_split(p) == "train"][:12]
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps(dict(prompt=p, response=" An answer.")) + "\n" for p in prompts))
    cfg = config_from_args(build_parser().parse_args(["pipeline", *TOY, "--sft-data", str(f), "-o", str(tmp_path / "o")]))
    check_config(cfg)                                              # accepted before any stage runs
    logs = []
    assert sft_eval_data(cfg, log=logs.append) is None and "no SFT eval loss" in logs[0]


def test_sampling_precision_keys_the_answers_and_guards_the_evaluation(tmp_path, monkeypatch):
    """The evaluation's answers are keyed by the precision they are sampled in ('auto' by what it means here; an fp32
    key is the key of runs from before `generation_dtype`), and an RL stage sampled in another precision than the
    evaluation would use is refused before any answer is sampled."""
    from open_chatgpt import pipeline as pl
    from open_chatgpt.ppo import PPOConfig
    cfg = PipelineConfig(output_dir=str(tmp_path), **{k: v for k, v in QUICK_RUN.items() if k != "ppo"})
    keys = {d: pl._answers_key(cfg, "sft", 2, PPOConfig(generation_dtype=d)) for d in ("float32", "bfloat16")}
    assert keys["float32"] != keys["bfloat16"]
    for native, want in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(pl, "resolve_generation_dtype",
                            lambda d, device, native=native: ("bfloat16" if native else "float32") if d == "auto" else d)
        assert pl._answers_key(cfg, "sft", 2, PPOConfig(generation_dtype="auto")) == keys[want]
    stage = tmp_path / "ppo"; (stage / "policy").mkdir(parents=True)
    (stage / "curve.jsonl").write_text(json.dumps(dict(step=1)) + "\n")
    (stage / "stage.json").write_text(json.dumps(dict(settings=dict(ppo=dict(generation_dtype="bfloat16")))))
    class Sampled(Exception): pass
    def sampled(*a, **k): raise Sampled
    monkeypatch.setattr(pl, "policy_answers", sampled)
    with pytest.raises(ValueError, match="sampled its answers in bfloat16, this evaluation would sample in float32"):
        pl.run_eval(PipelineConfig(output_dir=str(tmp_path), ppo=dict(generation_dtype="float32")))   # refused first
    with pytest.raises(Sampled):                                        # the same precision: the evaluation goes on
        pl.run_eval(PipelineConfig(output_dir=str(tmp_path), ppo=dict(generation_dtype="bfloat16")))
    (stage / "stage.json").write_text(json.dumps(dict(settings=dict(ppo=dict(generation_dtype="auto")))))  # as fc011c8 wrote
    with pytest.raises(Sampled):                                        # 'auto' on a bf16 machine (patched): bf16
        pl.run_eval(PipelineConfig(output_dir=str(tmp_path), ppo=dict(generation_dtype="bfloat16")))
    (stage / "stage.json").write_text(json.dumps(dict(settings=dict(ppo=dict(learning_rate=1.0)))))  # before the field
    with pytest.raises(ValueError, match="sampled its answers in float32, this evaluation would sample in bfloat16"):
        pl.run_eval(PipelineConfig(output_dir=str(tmp_path), ppo=dict(generation_dtype="bfloat16")))
    old = dict(ppo=dict(generation_dtype="auto", learning_rate=1.0))    # a resume compares a recorded 'auto' as resolved
    assert pl.changed_settings(pl._as_resolved(old), dict(ppo=dict(generation_dtype="bfloat16", learning_rate=1.0))) == []


def test_sampler_keys_the_answers_and_reaches_grpo(tmp_path):
    "The sampler is part of an evaluation's answer key (multinomial draws add nothing to the key) and of GRPO's config."
    import open_chatgpt.pipeline as pl
    from open_chatgpt.ppo import PPOConfig
    cfg = PipelineConfig(output_dir=str(tmp_path), n_eval_prompts=2)
    keys = {s: pl._answers_key(cfg, "sft", 2, PPOConfig(sampler=s)) for s in ("inverse_cdf", "multinomial")}
    assert keys["inverse_cdf"] != keys["multinomial"]
    parts = ["sft", pl._stage_info(tmp_path / "sft"), pl.eval_prompts(cfg), 2, cfg.seed, cfg.showcase,   # the older key
             {k: getattr(PPOConfig(), k) for k in ("max_new_tokens", "max_prompt_length", "temperature", "top_k", "top_p")},
             pl._stage_info(tmp_path / "reward"), cfg.judge, pl.judge_id(cfg),   # (+ the judge's own key, since then)
             pl.answer_seed(cfg, "sft")]                                      # (+ the SFT answers' own seed, since a465685)
    older = pl.hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    assert keys["multinomial"] != older                                  # answers saved before 04945d4 are not reused:
    parts.append(dict(order="shortest first", batch_size=cfg.eval_batch_size))   # now sampled shortest first
    assert keys["multinomial"] == pl.hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    small = PipelineConfig(output_dir=str(tmp_path), n_eval_prompts=2, eval_batch_size=32)   # other rollouts, other draws
    assert pl._answers_key(small, "sft", 2, PPOConfig(sampler="multinomial")) != keys["multinomial"]
    with pytest.raises(ValueError, match="eval_batch_size must be an integer >= 1"): pl.check_config(
        PipelineConfig(output_dir=str(tmp_path), eval_batch_size=0))
    for algo in ("grpo", "rloo"):
        for s in ("inverse_cdf", "multinomial"):
            assert pl.grpo_config(PipelineConfig(output_dir=str(tmp_path), algo=algo, ppo=dict(sampler=s))).sampler == s


def test_qa_curve_puts_the_probe_on_every_checkpoint_and_the_plot(done, tmp_path, monkeypatch):
    """qa_curve=True: each checkpoint row carries the QA probe's accuracy of the policy being trained (not a reload),
    the summary's step 0 is the SFT policy's probe, the plot gets a third panel and the table a 'QA probe' row."""
    import shutil
    import open_chatgpt.pipeline as pl
    from open_chatgpt.data import get_tokenizer
    from open_chatgpt.sft import load_policy
    run = tmp_path / "run"; shutil.copytree(done, run)
    cfg = PipelineConfig.from_file(run / "pipeline_config.json").update(dict(output_dir=str(run), qa_curve=True))
    tok = get_tokenizer(str(run / "ppo" / "policy")); policy = load_policy(str(run / "ppo" / "policy"), tokenizer=tok)
    seen = []
    def fake_qa(p, t, gen, items=None, **kw):
        seen.append((p, gen.max_new_tokens)); return dict(accuracy=0.25 + 0.5 * len(seen) / 10, correct=[True, False])
    monkeypatch.setattr(pl, "qa_accuracy", fake_qa)
    evaluate = pl.checkpoint_evaluator(cfg, policy, None, tok, tmp_path / "stage", log=lambda m: None)
    row = evaluate(3)
    assert seen == [(policy, pl.make_config(pl.PPOConfig, cfg.ppo, **pl.PPO_DEFAULTS).max_new_tokens)] and row["qa"] == 0.3
    assert read_metrics(tmp_path / "stage" / "curve.jsonl")[-1]["qa"] == 0.3
    assert json.loads((tmp_path / "stage" / "answers" / "qa-step-0003.json").read_text())["correct"] == [True, False]
    monkeypatch.undo()
    curve = read_metrics(run / "ppo" / "curve.jsonl")                     # as if the run had had qa_curve on
    (run / "ppo" / "curve.jsonl").write_text("".join(json.dumps(dict(r, qa=0.1 * (i + 1))) + "\n" for i, r in enumerate(curve)))
    sft_correct = json.loads((run / "eval" / "qa-probe.json").read_text())["policies"]["sft"]["correct"]
    flipped = [not x for x in sft_correct]                                # the last checkpoint answers the others
    (run / "ppo" / "answers" / f"qa-step-{curve[-1]['step']:04d}.json").write_text(json.dumps(dict(correct=flipped)))
    s = pl.run_eval(cfg, log=lambda m: None)
    assert s["curve"][0]["qa"] == s["qa_probe"]["policies"]["sft"]["accuracy"]
    assert [c["qa"] for c in s["curve"][1:]] == pytest.approx([0.1 * (i + 1) for i in range(len(curve))])
    last = s["curve"][-1]                                                 # paired against the SFT policy's answers
    assert (last["qa_gained"], last["qa_lost"]) == (sft_correct.count(False), sft_correct.count(True))
    assert all("qa_lost" not in c for c in s["curve"][:-1])               # no per-question file: no flips
    fig = pl.plot_overoptimisation(s["curve"], s["best_of_n"])
    assert [a.get_title() for a in fig.axes][-1].startswith("QA probe") and len(fig.axes) == 3
    table = subprocess.run([sys.executable, "scripts/results_table.py", str(run), "--dry-run"], capture_output=True,
                           text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert "| QA probe | " in table and "| QA vs SFT" not in table       # flips only when every checkpoint has them


def test_seed_table_shows_the_qa_probe_along_each_run(done, tmp_path):
    "With the QA probe at every checkpoint, the seed table adds each seed's KL, gold gain and QA flips by step."
    s = json.loads((done / "summary-ppo.json").read_text())
    cfg = json.loads((done / "pipeline_config.json").read_text())
    dirs = []
    for seed in (0, 1):
        x = json.loads(json.dumps(s)); x["seed"] = seed
        x["reward_model"]["normalisation"] = dict(x["reward_model"]["normalisation"], bias=-0.1 * seed)   # its own SFT
        x["curve"] = [dict(c, qa=0.5 - 0.1 * i + 0.01 * seed, **({} if i == 0 else dict(qa_gained=1, qa_lost=2 + i, qa_p=1.0)))
                      for i, c in enumerate(x["curve"])]
        d = tmp_path / f"seed{seed}"; d.mkdir(); dirs.append(d)
        (d / "summary-ppo.json").write_text(json.dumps(x)); (d / "pipeline_config.json").write_text(json.dumps({**cfg, "seed": seed}))
    out = subprocess.run([sys.executable, "scripts/results_table.py", str(dirs[0]), "--seeds", str(dirs[1]), "--dry-run"],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    qa = [r for r in out.splitlines() if "| QA probe |" in r]
    assert len(qa) == 2 and qa[0].startswith("| 0 | QA probe | 0.500 | 0.400 (+1 / -3, 1) |"), qa
    assert qa[1].startswith("| 1 | QA probe | 0.510 | 0.410 (+1 / -3, 1) |")
    assert sum(r.startswith("| 1 | gold - start | +0.000 |") for r in out.splitlines()) == 1
    assert "the seed sets the SFT run, the prompt order" in out                # each seed trained its own SFT model
    for d in dirs: (d / "sft").mkdir(); (d / "sft" / "stage.json").write_text((done / "sft" / "stage.json").read_text())
    out = subprocess.run([sys.executable, "scripts/results_table.py", str(dirs[0]), "--seeds", str(dirs[1]), "--dry-run"],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert "the seed sets the prompt order, the sampling and the value head; the SFT model" in out   # one SFT stage, copied


def test_qa_curve_end_to_end_through_the_training_loop(tmp_path):
    "A toy run with --set qa_curve=true: every checkpoint of train_ppo's callback has its probe and flips in the summary."
    out = tmp_path / "run"
    assert main(["pipeline", "-o", str(out), *TOY, "--set", "qa_curve=true"]) == 0
    s = json.loads((out / "summary.json").read_text())
    n = QUICK_RUN["ppo"]["total_steps"]
    assert [c["step"] for c in s["curve"]] == list(range(0, n + 1)) and all(0 <= c["qa"] <= 1 for c in s["curve"])
    assert s["curve"][0]["qa"] == s["qa_probe"]["policies"]["sft"]["accuracy"]
    for c in s["curve"][1:]:
        f = json.loads((out / "ppo" / "answers" / f"qa-step-{c['step']:04d}.json").read_text())
        assert f["accuracy"] == c["qa"] and len(f["correct"]) == 99 == f["n"]
        assert c["qa_gained"] + c["qa_lost"] <= 99 and 0 <= c["qa_p"] <= 1
    last = json.loads((out / "ppo" / "answers" / f"qa-step-{n:04d}.json").read_text())
    assert last["answers"] and isinstance(last["answers"][0], str)
    rl = json.loads((out / "eval" / "qa-probe.json").read_text())["policies"]["rl"]   # the saved final policy, reloaded
    assert rl["answers"] == last["answers"]                                  # the checkpoint probe asked the same weights
    assert rl["dtype"] == last["dtype"] == "float32"                         # in fp32 (chapter 7), whatever the sampling


def test_checkpoint_evaluations_leave_the_training_alone(done, tmp_path):
    "An RL stage evaluated at every step (answers, KL, judges, QA probe) trains exactly as one evaluated at its end only."
    import shutil
    runs = []
    for every, extra in ((1, ["--set", "qa_curve=true"]), (1000, [])):
        d = tmp_path / f"every-{every}"; d.mkdir()                    # a copy of one SFT model and proxy
        for part in ("sft", "reward"): shutil.copytree(done / part, d / part)
        assert main(["ppo", "-o", str(d), *TOY, "--set", f"ppo.save_every={every}", *extra]) == 0
        runs.append([{k: v for k, v in r.items() if "time" not in k} for r in read_metrics(d / "ppo" / "metrics.jsonl")])
        curve = read_metrics(d / "ppo" / "curve.jsonl")
        assert [c["step"] for c in curve] == (list(range(1, len(runs[-1]) + 1)) if every == 1 else [len(runs[-1])])
    assert len(runs[0]) == QUICK_RUN["ppo"]["total_steps"] and runs[0] == runs[1]


def test_the_seed_fixes_every_rl_stage_with_lora(tmp_path):
    "Two fresh runs of an RL stage with one seed take the same steps: LoRA's random A matrices come from the seed too."
    import shutil
    lora = ["--set", 'lora={"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]}']
    base = tmp_path / "base"
    assert main(["sft", "-o", str(base), *TOY, *lora]) == 0 and main(["reward", "-o", str(base), *TOY, *lora]) == 0
    for algo in ("ppo", "dpo", "grpo"):
        runs = []
        for i in range(2):                                       # fresh copies of one SFT + proxy, the stage twice
            d = tmp_path / f"{algo}-{i}"; shutil.copytree(base, d)
            assert main(["ppo", "-o", str(d), *TOY, *lora, "--algo", algo, "--ppo-steps", "2"]) == 0
            runs.append([{k: v for k, v in r.items() if "time" not in k} for r in read_metrics(d / algo / "metrics.jsonl")])
        assert len(runs[0]) == 2 and runs[0] == runs[1], algo

def test_the_answers_and_rl_stages_name_their_gold_judge(tmp_path, monkeypatch):
    "New judge code trains a new judge: saved SFT answers (with the old judge's gold scores) and RL stages are not reused."
    import open_chatgpt.evaluation as ev, open_chatgpt.pipeline as pl
    cfg = PipelineConfig(output_dir=str(tmp_path), **{k: v for k, v in QUICK_RUN.items() if k != "ppo"})
    gen = pl.make_config(pl.PPOConfig, cfg.ppo, **pl.PPO_DEFAULTS)
    before = pl._answers_key(cfg, "sft", 4, gen), pl.rl_settings(cfg)
    assert pl._answers_key(cfg, "sft", 4, gen) == before[0]                       # the key is stable
    monkeypatch.setattr(ev, "code_fingerprint", lambda names=ev.JUDGE_CODE: "a fixed judge")   # what a fix to the
    assert pl._answers_key(cfg, "sft", 4, gen) != before[0]                       # judge's training code does to its key
    assert pl.changed_settings(before[1], pl.rl_settings(cfg), free=()) == ["judge_key"]

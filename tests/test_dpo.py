"DPO (chapter 8): the loss against its formula and TRL, masking and padding, what a step changes, resume."
import copy
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from open_chatgpt.data import get_tokenizer, sample_pairs
from open_chatgpt.dpo import (DPOCollator, DPOConfig, concatenated_forward, dpo_loss, evaluate_dpo,
                              get_batch_logps, get_batch_loss_metrics, make_dpo_models, train_dpo)
from open_chatgpt.models import model_inputs, tiny_model
from open_chatgpt.plumbing import read_metrics
from open_chatgpt.ppo import AdapterDisabled
from open_chatgpt.sft import add_lora

ROOT = Path(__file__).resolve().parents[1]
BENCH_PY = ROOT / "bench" / ".venv" / "bin" / "python"
TOK = get_tokenizer()
PAIRS = sample_pairs("train").select(range(24))
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn", "c_proj"])


def tiny(seed=0):
    return tiny_model("gpt2", TOK, seed=seed, d=32, n_layer=1, n_head=2).eval()


def batch(n=3, max_length=64, start=0):
    return DPOCollator(TOK, max_length)([PAIRS[i] for i in range(start, start + n)])


def cfg(**kw):
    return DPOConfig(**{**dict(learning_rate=1e-3, batch_size=4, max_steps=1, max_length=64, warmup=0, kl_samples=0), **kw})


def naive_loss(pc, pr, rc, rr, beta, eps=0.0):
    "The DPO / cDPO formula written out per pair with plain sigmoid and log."
    out = []
    for i in range(len(pc)):
        h = (pc[i] - rc[i]) - (pr[i] - rr[i])
        out.append(-(1 - eps) * torch.log(torch.sigmoid(beta * h)) - eps * torch.log(torch.sigmoid(-beta * h)))
    return torch.stack(out)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_loss_and_gradient_equal_the_formula(eps):
    g = torch.Generator().manual_seed(0)
    pc, pr = (-30 * torch.rand(16, generator=g, dtype=torch.float64)).requires_grad_(), (-30 * torch.rand(16, generator=g, dtype=torch.float64)).requires_grad_()
    rc, rr = pc.detach() + torch.randn(16, generator=g, dtype=torch.float64) * 3, pr.detach() + torch.randn(16, generator=g, dtype=torch.float64) * 3
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=eps)
    ref = naive_loss(pc, pr, rc, rr, 0.3, eps)
    torch.testing.assert_close(losses, ref, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(losses.mean(), (pc, pr)), torch.autograd.grad(ref.mean(), (pc, pr))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(cr, 0.3 * (pc - rc).detach()); torch.testing.assert_close(rj, 0.3 * (pr - rr).detach())
    assert not cr.requires_grad and not rj.requires_grad


def test_ipo_on_a_hand_computed_case():
    one = lambda x: torch.tensor([x])
    # h = (-10 - -11) - (-12 - -11) = 2; target 1/(2 beta) = 5 for beta 0.1: (2 - 5)^2 = 9
    assert dpo_loss(one(-10.), one(-12.), one(-11.), one(-11.), beta=0.1, loss_type="ipo")[0].item() == pytest.approx(9.0)
    # beta 0.25: target 2, h = 2 -> loss 0; h = 0 -> 4
    assert dpo_loss(one(-10.), one(-12.), one(-11.), one(-11.), beta=0.25, loss_type="ipo")[0].item() == pytest.approx(0.0)
    assert dpo_loss(one(-10.), one(-10.), one(-7.), one(-7.), beta=0.25, loss_type="ipo")[0].item() == pytest.approx(4.0)
    # IPO uses the mean token log-prob (as TRL): two sequences, one twice as long with the same per-token log-probs
    logits = torch.zeros(2, 5, 4)                          # uniform: every token has log-prob log(1/4)
    labels = torch.tensor([[-100, -100, 1, 2, 3], [-100, -100, -100, -100, 1]])
    torch.testing.assert_close(get_batch_logps(logits, labels), torch.tensor([3, 1]) * math.log(0.25))
    torch.testing.assert_close(get_batch_logps(logits, labels, average_log_prob=True), torch.full((2,), math.log(0.25)))
    with pytest.raises(ValueError, match="sigmoid' only"): dpo_loss(one(0.), one(0.), one(0.), one(0.), loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="loss_type"): DPOConfig(loss_type="hinge")


def left_pad(b):
    out = {k: torch.full_like(v, TOK.pad_token_id if k == "input_ids" else (-100 if k == "labels" else 0)) for k, v in b.items()}
    for i, n in enumerate(b["attention_mask"].sum(1).tolist()):
        for k in out: out[k][i, -n:] = b[k][i, :n]
    return out


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sequence_logps_ignore_prompt_and_padding(family):
    model = tiny_model(family, TOK, d=32, n_layer=1, n_head=2).double().eval()
    b = batch(3, 256, start=4)
    n = b["attention_mask"].sum(1)
    assert n.max() < 256 and n.min() < n.max()                               # untruncated, and padded
    assert ((b["labels"] != -100) & (b["attention_mask"] == 0)).sum() == 0   # padding is never a target
    with torch.no_grad():
        right = torch.cat(concatenated_forward(model, b))
        left = torch.cat(concatenated_forward(model, left_pad(b)))
        alone = []
        for i in range(len(b["input_ids"])):
            n = int(b["attention_mask"][i].sum())
            ids, am, lab = (b[k][i:i + 1, :n] for k in ("input_ids", "attention_mask", "labels"))
            alone.append(get_batch_logps(model(**model_inputs(model, ids, am)).logits, lab))
        alone = torch.cat(alone)
        torch.testing.assert_close(right, alone, rtol=0, atol=1e-9)
        torch.testing.assert_close(left, alone, rtol=0, atol=1e-9)
        # the logits at prompt and padding positions do not matter at all
        logits = model(**model_inputs(model, b["input_ids"], b["attention_mask"])).logits
        not_target = torch.cat([b["labels"][:, 1:] == -100, torch.ones_like(b["labels"][:, :1], dtype=torch.bool)], 1)
        garbage = torch.where(not_target[..., None], 1e3 * torch.randn_like(logits), logits)
        assert torch.equal(get_batch_logps(garbage, b["labels"]), get_batch_logps(logits, b["labels"]))
    # and a longer prompt (more context, same response) changes the log-prob: the prompt is conditioned on, not scored
    short = DPOCollator(TOK, 96)([dict(prompt="\n\nHuman: hi\n\nAssistant:", chosen=" Hello there.", rejected=" No.")])
    longer = DPOCollator(TOK, 96)([dict(prompt="\n\nHuman: hi, how are you today?\n\nAssistant:", chosen=" Hello there.", rejected=" No.")])
    assert (short["labels"] != -100).sum() == (longer["labels"] != -100).sum()
    with torch.no_grad(): assert not torch.equal(concatenated_forward(model, short)[0], concatenated_forward(model, longer)[0])


def lora_policy():
    return add_lora(tiny(), LORA)


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_at_initialisation_loss_is_log2_and_rewards_are_zero(kind):
    policy, ref = make_dpo_models(tiny() if kind == "full" else lora_policy(), TOK)
    assert isinstance(ref, AdapterDisabled) == (kind == "lora")
    b = batch(4)
    loss, m = get_batch_loss_metrics(policy, ref, b)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert loss.item() == -F.logsigmoid(torch.zeros(())).item()              # exactly: every margin is exactly 0
    assert [m[k] for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")] == [0.0] * 4
    ev = evaluate_dpo(policy, ref, TOK, PAIRS.select(range(6)), cfg())
    assert (ev["accuracy"], ev["n_ties"], ev["margin"]) == (0.5, 6, 0.0)


def test_lora_reference_is_the_sft_model_even_when_sft_trained_the_adapters():
    sft = lora_policy()
    with torch.no_grad():
        for n, p in sft.named_parameters():
            if "lora_B" in n: p.normal_(std=0.3)                            # SFT trained the adapters
    policy, ref = make_dpo_models(sft, TOK)
    b = batch(3)
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(concatenated_forward(ref, b)), torch.cat(concatenated_forward(sft, b)), rtol=1e-5, atol=1e-3)
    assert get_batch_loss_metrics(policy, ref, b)[1]["rewards/margins"] == 0.0


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_training_moves_every_trainable_parameter_and_never_the_reference(kind):
    policy, ref = make_dpo_models(tiny() if kind == "full" else lora_policy(), TOK)
    trainable = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    ref_weights = {n: p.detach().clone() for n, p in ref.named_parameters()}
    b = batch(4)
    with torch.no_grad(): ref_logps = torch.cat(concatenated_forward(ref, b))
    assert trainable and (kind == "full") == (not frozen)
    # LoRA's B starts at 0, so A's gradient is 0 in the first step: two steps move every adapter weight
    train_dpo(policy, ref, TOK, PAIRS, None, cfg(max_steps=1 if kind == "full" else 2, weight_decay=0.0), progress=False)
    moved = {n: not torch.equal(trainable[n], p) for n, p in policy.named_parameters() if p.requires_grad}
    assert all(moved.values()), [n for n, v in moved.items() if not v]
    assert all(torch.equal(frozen[n], p) for n, p in policy.named_parameters() if not p.requires_grad)
    assert all(torch.equal(ref_weights[n], p) for n, p in ref.named_parameters())
    assert all(p.grad is None for p in ref.parameters())
    with torch.no_grad(): assert torch.equal(torch.cat(concatenated_forward(ref, b)), ref_logps)   # bit-identical outputs


def test_a_few_steps_on_a_fixed_batch_lower_the_loss():
    policy, ref = make_dpo_models(tiny(), TOK)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3, weight_decay=0.0)
    b = batch(4)
    losses = []
    for _ in range(8):
        loss, m = get_batch_loss_metrics(policy, ref, b)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(2), abs=1e-7)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.5 and m["rewards/accuracies"] == 1.0 and m["rewards/margins"] > 0


def no_time(rows):
    return json.dumps([{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows])


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, kind):
    def run(out, **kw):
        c = cfg(max_steps=5, save_every=2, warmup=1, output_dir=str(out), kl_samples=2, kl_max_new_tokens=4)
        p, r = make_dpo_models(tiny() if kind == "full" else lora_policy(), TOK)
        return train_dpo(p, r, TOK, PAIRS, PAIRS.select(range(4)), c, progress=False, **kw), p
    full, p_full = run(tmp_path / "full")
    d = tmp_path / "killed"
    run(d, stop_after_steps=3)                                 # step 3 logged, its checkpoint (step 2 is on disk) lost
    assert [r["step"] for r in read_metrics(d / "metrics.jsonl")] == [1, 2, 3]
    resumed, p_res = run(d, resume=True)
    rows = read_metrics(d / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and no_time(rows) == no_time(full) == no_time(resumed)
    assert "eval_kl" in rows[-1] and (d / "metrics.csv").exists() and (d / "dpo.png").exists()
    for (n, a), b in zip(p_full.named_parameters(), p_res.parameters()): assert torch.equal(a, b), n


def test_the_saved_plot_marks_each_loss_at_its_own_start(tmp_path, monkeypatch):
    "The loss at pi = pi_ref is log 2 for DPO and (1 / (2 beta))^2 for IPO; the plot's reference line says which."
    import open_chatgpt.dpo as dpo_mod
    for loss_type, beta in (("sigmoid", 0.1), ("ipo", 0.5)):
        seen = {}
        monkeypatch.setattr(dpo_mod, "plot_dpo", lambda h, path, start_loss=math.log(2), **kw: seen.update(start=start_loss))
        policy, ref = make_dpo_models(tiny(), TOK)
        h = train_dpo(policy, ref, TOK, PAIRS, None, cfg(loss_type=loss_type, beta=beta, output_dir=str(tmp_path / loss_type)),
                      progress=False)
        assert h[0]["loss"] == pytest.approx(seen["start"], abs=1e-6), (loss_type, h[0]["loss"], seen)


def test_a_cut_pair_keeps_one_prompt_for_both_answers():
    "Truncation cuts the prompt once per pair (truncate_dpo_pair): both answers are scored in the same context."
    i = next(i for i in range(len(PAIRS)) if len(TOK(PAIRS[i]["chosen"])["input_ids"]) != len(TOK(PAIRS[i]["rejected"])["input_ids"])
             and len(TOK(PAIRS[i]["prompt"])["input_ids"]) > 8)
    n = max(len(TOK(PAIRS[i][k])["input_ids"]) for k in ("chosen", "rejected")) + 1 + 4
    b = DPOCollator(TOK, n)([PAIRS[i]])
    ctx = [b["input_ids"][r][(b["labels"][r] == -100) & (b["attention_mask"][r] == 1)].tolist() for r in (0, 1)]
    P = len(TOK(PAIRS[i]["prompt"])["input_ids"])                    # (the tiny tokenizer has no chat template)
    assert ctx[0] == ctx[1] and min(P, n // 2) <= len(ctx[0]) < P     # cut, but never below half the window
    full = DPOCollator(TOK, 10 ** 9)([PAIRS[i]])                       # the answers lose their ends, not their starts
    for r in (0, 1):
        got, whole = (x["input_ids"][r][x["labels"][r] != -100].tolist() for x in (b, full))
        assert got == whole[:len(got)]

def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="no response tokens"):
        get_batch_logps(torch.zeros(1, 3, 5), torch.full((1, 3), -100))
    with pytest.raises(ValueError, match="2B rows"):
        b = batch(2); concatenated_forward(tiny(), {k: v[:3] for k, v in b.items()})
    with pytest.raises(ValueError, match="exceeds the policy's context"):
        p, r = make_dpo_models(tiny_model("gpt2", TOK, d=32, n_layer=1, n_head=2, n_positions=32), TOK)
        train_dpo(p, r, TOK, PAIRS, None, cfg(max_length=64), progress=False)
    with pytest.raises(ValueError, match="chosen == rejected"):
        evaluate_dpo(*make_dpo_models(tiny(), TOK), TOK, [dict(prompt="a", chosen=" b", rejected=" b")], cfg())


@pytest.mark.skipif(not BENCH_PY.exists(), reason="bench/.venv missing: run `bash bench/setup.sh` to compare with TRL")
def test_dpo_agrees_with_trl():
    "bench/agree_dpo.py in bench/.venv: log-probs, loss, statistics and every gradient equal TRL 0.11.4's DPOTrainer."
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([str(BENCH_PY), str(ROOT / "bench" / "agree_dpo.py")], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {l.split("|")[1].strip(): l.split("|")[2:-1] for l in p.stdout.splitlines() if l.startswith("| ")}
    for k in ("loss", "gradients (every policy parameter)", "logps (policy, chosen and rejected)", "rewards/margins"):
        assert len(rows[k]) == 6 and all(float(v) <= 1e-5 for v in rows[k]), (k, rows[k])
    assert "All quantities agree." in p.stdout


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_steps_and_evaluation_in_bf16_only_where_native(monkeypatch, native):
    "cpu_bf16: the steps' and the held-out evaluation's forwards (policy and reference) in bf16 where native, else"
    " float32; the first loss is still exactly log 2 (pi = pi_ref in the same precision) and every weight trains."
    import open_chatgpt.dpo as dpo_mod
    monkeypatch.setattr(dpo_mod, "native_bf16", lambda device: native)
    policy, ref = dpo_mod.make_dpo_models(tiny_model("gpt2", TOK, d=32, n_layer=1, n_head=2), TOK)
    seen = []
    for m in (policy, ref): m.register_forward_hook(lambda mod, args, out: seen.append(out.logits.dtype))
    before = [p.detach().clone() for p in policy.parameters()]
    pairs = sample_pairs("train").select(range(16))
    hist = dpo_mod.train_dpo(policy, ref, TOK, pairs, sample_pairs("test").select(range(4)),
                             dpo_mod.DPOConfig(learning_rate=1e-3, batch_size=4, max_steps=2, max_length=64, kl_samples=0,
                                               cpu_bf16=True), progress=False)
    assert set(seen) == {torch.bfloat16 if native else torch.float32}, set(seen)
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    chosen, rejected = dpo_mod.pair_logps(policy, TOK, sample_pairs("test").select(range(4)), dpo_mod.DPOConfig(cpu_bf16=True))
    assert not chosen.requires_grad and not rejected.requires_grad     # no graph kept across the evaluation's batches
    assert all(not torch.equal(a, p) for a, p in zip(before, policy.parameters()))

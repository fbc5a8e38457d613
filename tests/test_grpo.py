"""Chapter 9 (open_chatgpt.grpo): group advantages on hand-computed cases, naive == vectorised, zero-std groups,
the on-policy first update, what a step changes (full model and LoRA), a short run, exact resume, and -- where
bench/.venv-trl-new exists (`bash bench/setup_trl_new.sh`) -- agreement with TRL's GRPOTrainer on the same batch."""
import dataclasses
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from open_chatgpt.data import get_tokenizer, sample_prompts
from open_chatgpt.grpo import (GRPOConfig, LOSS_TYPES, aggregate_loss, grpo_advantages, grpo_loss, grpo_per_token_loss,
                               grpo_step, make_grpo_models, rloo_advantages, train_grpo, zero_std_groups)
from open_chatgpt.models import FAMILIES, tiny_model
from open_chatgpt.plumbing import read_metrics
from open_chatgpt.ppo import rollout
from open_chatgpt.ppo_core import ppo_policy_loss

ROOT = Path(__file__).resolve().parents[1]
TRL_NEW_PY = ROOT / "bench" / ".venv-trl-new" / "bin" / "python"


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


@pytest.fixture(scope="module")
def prompts():
    return sample_prompts("train")["prompt"][:40]


def test_advantages_hand_computed():
    r = torch.tensor([1., 2., 3., 6., 5., 5., 5., 5.])
    # group 1: mean 3, deviations (-2, -1, 0, 3), unbiased std sqrt(14/3); group 2: all equal
    std = math.sqrt(14 / 3)
    torch.testing.assert_close(grpo_advantages(r, 4), torch.tensor([-2, -1, 0, 3, 0, 0, 0, 0.]) / (std + 1e-4))
    torch.testing.assert_close(grpo_advantages(r, 4, "none"), torch.tensor([-2, -1, 0, 3, 0, 0, 0, 0.]))
    torch.testing.assert_close(grpo_advantages(r, 4, "batch"), torch.tensor([-2, -1, 0, 3, 0, 0, 0, 0.]) / (r.std() + 1e-4))
    # RLOO: r_i - mean of the other three, e.g. 1 - (2 + 3 + 6) / 3 = -8/3
    torch.testing.assert_close(rloo_advantages(r, 4), torch.tensor([-8 / 3, -4 / 3, 0, 4, 0, 0, 0, 0.]))
    torch.testing.assert_close(rloo_advantages(torch.tensor([0., 1.]), 2), torch.tensor([-1., 1.]))


def test_advantages_naive_equals_vectorised():
    g = torch.Generator().manual_seed(0)
    for G in (2, 3, 5):
        r = torch.randn(4 * G, generator=g)
        grpo, rloo = [], []
        for k in range(0, len(r), G):
            grp = r[k:k + G].tolist()
            mean = sum(grp) / G
            std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (G - 1))
            grpo += [(x - mean) / (std + 1e-4) for x in grp]
            rloo += [x - (sum(grp) - x) / (G - 1) for x in grp]
        torch.testing.assert_close(grpo_advantages(r, G), torch.tensor(grpo), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rloo_advantages(r, G), torch.tensor(rloo), atol=1e-5, rtol=1e-5)


def test_all_equal_groups_give_zero_advantage_and_are_counted():
    r = torch.tensor([0., 0., 0., 1., 2., 4., 0.7, 0.7, 0.7])
    assert zero_std_groups(r, 3).tolist() == [True, False, True]          # 0.7 - mean(0.7, 0.7, 0.7) != 0 in float32
    for adv in (grpo_advantages(r, 3), grpo_advantages(r, 3, "none"), grpo_advantages(r, 3, "batch"), rloo_advantages(r, 3)):
        assert adv[:3].eq(0).all() and adv[6:].eq(0).all() and adv[3:6].ne(0).all(), adv   # exactly 0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="do not split"): grpo_advantages(torch.ones(5), 2)
    with pytest.raises(ValueError, match=">= 2"): rloo_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError, match="nan"): grpo_advantages(torch.tensor([1., float("nan")]), 2)
    with pytest.raises(ValueError, match="scale_rewards='none'"): GRPOConfig(advantage="rloo").validate()
    with pytest.raises(ValueError, match="generation_dtype must be one of"): GRPOConfig(generation_dtype="bf16").validate()
    with pytest.raises(ValueError, match="shape"): grpo_per_token_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))


def _naive_loss(lp, old, adv, ref, mask, beta, eps, loss_type, L):
    rows = []
    for i in range(lp.shape[0]):
        row = []
        for t in range(lp.shape[1]):
            if not mask[i, t]: continue
            rho, A, d = math.exp(lp[i, t] - old[i, t]), float(adv[i]), float(ref[i, t] - lp[i, t])
            row.append(-min(rho * A, min(max(rho, 1 - eps), 1 + eps) * A) + beta * (math.exp(d) - d - 1))
        rows.append(row)
    if loss_type == "grpo": return sum(sum(r) / len(r) for r in rows) / len(rows)
    if loss_type == "bnpo": return sum(map(sum, rows)) / sum(map(len, rows))
    return sum(map(sum, rows)) / (len(rows) * L)


def test_loss_naive_equals_vectorised_and_bnpo_is_chapter5():
    g = torch.Generator().manual_seed(1)
    B, T = 6, 7
    old = -3 * torch.rand(B, T, generator=g)
    lp, ref = old + 0.4 * torch.randn(B, T, generator=g), old + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B,), generator=g)[:, None]).long()
    for lt in LOSS_TYPES:
        loss, per_token, st = grpo_loss(lp, old, adv, mask, ref, 0.1, 0.2, lt, 9)
        assert abs(float(loss) - _naive_loss(lp, old, adv, ref, mask, 0.1, 0.2, lt, 9)) < 1e-5, lt
        assert per_token[mask == 0].eq(0).all()
    assert 0 < float(st["policy/clipfrac"]) < 1                          # the clip is exercised
    torch.testing.assert_close(grpo_loss(lp, old, adv, mask, loss_type="bnpo")[0],
                               ppo_policy_loss(lp, old, adv[:, None].expand(B, T), mask, 0.2)[0])


def test_dr_grpo_weighs_every_token_the_same():
    mask = torch.zeros(2, 10, dtype=torch.long); mask[0, :2] = 1; mask[1, :] = 1
    grads = {}
    for lt in LOSS_TYPES:
        lp = torch.zeros(2, 10, requires_grad=True)
        grpo_loss(lp, torch.zeros(2, 10), torch.ones(2), mask, loss_type=lt, max_completion_length=10)[0].backward()
        grads[lt] = (lp.grad[0, 0].item(), lp.grad[1, 0].item())
    assert grads["grpo"][0] == pytest.approx(5 * grads["grpo"][1])     # length bias: 1 / |y_i|
    assert grads["dr_grpo"][0] == pytest.approx(grads["dr_grpo"][1]) == pytest.approx(-1 / 20)
    assert grads["bnpo"][0] == pytest.approx(grads["bnpo"][1]) == pytest.approx(-1 / 12)


def _lora(model):
    from peft import LoraConfig, get_peft_model
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn", "c_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))


def _step(tok, prompts, policy, ref, cfg, seed=0):
    torch.manual_seed(seed)
    batch = rollout(policy, tok, [p for p in prompts[:cfg.batch_size] for _ in range(cfg.num_generations)], cfg)
    rewards = torch.randn(len(batch["responses"]), generator=torch.Generator().manual_seed(seed))   # no all-equal group
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    return grpo_step(policy, ref, opt, batch, rewards, cfg)


@pytest.mark.parametrize("train_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("micro_batch_size", [0, 1])   # 1: the minibatch's later rows compare a no-grad pass with a grad one
def test_first_update_is_on_policy(tok, prompts, train_dtype, micro_batch_size):
    policy, ref = make_grpo_models(tiny_model("llama", tok, d=32, n_layer=1, n_head=2), tok)
    cfg = GRPOConfig(batch_size=2, num_generations=4, mini_batch_size=4, num_iterations=2, max_new_tokens=6, max_prompt_length=32,
                     train_dtype=train_dtype, micro_batch_size=micro_batch_size)
    st = _step(tok, prompts, policy, ref, cfg)
    assert st["policy/first_ratio_min"] == st["policy/first_ratio_max"] == 1.0     # bit-identical forward pass
    assert st["objective/kl"] == 0.0 and st["grpo/updates"] == 4
    assert st["policy/ratio_max"] > 1.0                                             # later minibatches are off-policy


@pytest.mark.parametrize("use_lora", [False, True])
def test_step_changes_every_trainable_parameter_and_not_the_reference(tok, prompts, use_lora):
    sft = tiny_model("gpt2", tok, d=32, n_layer=1, n_head=2)
    if use_lora: sft = _lora(sft)
    policy, ref = make_grpo_models(sft, tok)
    trainable = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in ref.named_parameters()}
    if use_lora: assert trainable and all("lora_" in n for n in trainable) and type(ref).__name__ == "AdapterDisabled"
    cfg = GRPOConfig(batch_size=2, num_generations=4, mini_batch_size=8, max_new_tokens=6, max_prompt_length=32, beta=0.04)
    _step(tok, prompts, policy, ref, cfg)
    if use_lora:   # trained adapters were merged and fresh ones start at B = 0: A's gradient is 0 until B has moved
        assert all(not torch.equal(p, trainable[n]) for n, p in policy.named_parameters() if "lora_B" in n)
        _step(tok, prompts, policy, ref, cfg)
    unchanged = [n for n, p in policy.named_parameters() if p.requires_grad and torch.equal(p, trainable[n])]
    assert not unchanged, f"not updated: {unchanged}"
    moved = [n for n, p in ref.named_parameters() if not torch.equal(p, frozen[n])]
    assert not moved, f"the reference changed: {moved}"
    assert all(not p.requires_grad for p in ref.parameters())



def test_gradient_checkpointing_with_lora_is_exact(tok, prompts):
    "LoRA (frozen base, so the inputs must require grad for the recomputation): the same adapters as without, then off."
    import copy
    from open_chatgpt.sft import is_checkpointing
    base = _lora(tiny_model("gpt2", tok, d=32, n_layer=2, n_head=2))
    out = {}
    for ck in (False, True):
        torch.manual_seed(0)                                  # the fresh adapters' initialisation
        policy, ref = make_grpo_models(copy.deepcopy(base), tok)
        lora0 = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
        frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
        seen = []
        policy.register_forward_pre_hook(lambda m, *a: seen.append(any(is_checkpointing(x) for x in m.modules())))
        cfg = GRPOConfig(batch_size=2, num_generations=4, mini_batch_size=4, num_iterations=2, max_new_tokens=6,
                         max_prompt_length=32, beta=0.04, gradient_checkpointing=ck)
        _step(tok, prompts, policy, ref, cfg)
        out[ck] = {n: p.detach().clone() for n, p in policy.named_parameters()}
        assert any(not torch.equal(out[ck][n], v) for n, v in lora0.items() if "lora_B" in n)   # the adapters trained
        assert all(torch.equal(out[ck][n], v) for n, v in frozen.items())                    # the base did not
        assert any(seen) == ck and not any(is_checkpointing(m) for m in policy.modules())  # on in the update, off after
    assert out[False].keys() == out[True].keys()
    assert all(torch.equal(out[False][n], out[True][n]) for n in out[False])

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lora", [False, True])
def test_micro_batches_give_the_minibatch_step(tok, prompts, family, lora):
    """`micro_batch_size=1` (one unpadded completion per forward/backward, the passes weighted by their share) = one
    padded pass per minibatch: the same weights after a step (SGD: the gradients themselves) and the same statistics,
    for every family, full or LoRA, each loss type, a second off-policy pass included; on-policy at first."""
    import copy
    from open_chatgpt.sft import add_lora
    torch.manual_seed(0)
    sft = tiny_model(family, tok, d=32, n_layer=1, n_head=2)
    if lora: sft = add_lora(sft, dict(r=4, lora_alpha=8, lora_dropout=0.0))   # peft's modules per family
    policy, ref = make_grpo_models(sft, tok)
    loss_type = LOSS_TYPES[FAMILIES.index(family) % len(LOSS_TYPES)]          # each loss type on two families
    c0 = GRPOConfig(batch_size=2, num_generations=4, mini_batch_size=4, num_iterations=2, max_new_tokens=8,
                    max_prompt_length=32, beta=0.04, loss_type=loss_type)
    torch.manual_seed(0)
    batch = rollout(policy, tok, [p for p in sorted(prompts, key=len)[::13][:2] for _ in range(4)], c0)
    for i, n in enumerate([8, 3, 6, 0, 8, 5, 2, 7]):                          # different lengths, one empty
        batch["response_mask"][i, n:] = 0; batch["response"][i, n:] = tok.pad_token_id
    assert batch["query_mask"].sum(1).unique().numel() > 1                    # prompts of different lengths: padding
    rewards = torch.randn(8, generator=torch.Generator().manual_seed(1))
    out = []
    for c in (c0, dataclasses.replace(c0, micro_batch_size=1)):
        p, calls = copy.deepcopy(policy), []
        p.register_forward_hook(lambda *a: calls.append(1))
        opt = torch.optim.SGD([q for q in p.parameters() if q.requires_grad], lr=1.0)
        torch.manual_seed(2); st = grpo_step(p, ref, opt, batch, rewards, c)
        out.append(({n: q.detach() for n, q in p.named_parameters() if q.requires_grad}, st))
        n_pass = 8 // c.forward_batch_size                                     # passes over the batch, 2 with grad
        assert len(calls) == 2 * n_pass + n_pass - 1, len(calls)               # old forwards in those passes, 1st reused
    (w0, s0), (w1, s1) = out
    for n in w0: torch.testing.assert_close(w0[n], w1[n], atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")
    for k in ("losses/policy_loss", "policy/clipfrac", "policy/approxkl", "policy/ratio_max", "objective/kl"):
        torch.testing.assert_close(torch.tensor(s0[k]), torch.tensor(s1[k]), atol=1e-6, rtol=1e-5)
    assert s1["policy/first_ratio_min"] == s1["policy/first_ratio_max"] == 1.0 and s0["policy/ratio_max"] > 1.0


def _direction_reward(toy):
    "Share of response tokens whose (initial) embedding has a positive first coordinate: learnable in a few steps."
    S = toy.get_input_embeddings().weight[:, 0].detach() > 0                       # (vocab,) bool

    def reward_fn(prompts, responses, batch):
        m = batch["response_mask"].bool()
        return (S[batch["response"]] & m).sum(1).float() / m.sum(1).float()
    return reward_fn


@pytest.mark.parametrize("variant", [dict(), dict(advantage="rloo", scale_rewards="none", loss_type="dr_grpo")])
def test_short_run_raises_the_reward(tok, prompts, variant):
    toy = tiny_model("gpt2", tok, d=32, n_layer=1, n_head=2)
    policy, ref = make_grpo_models(toy, tok)
    cfg = GRPOConfig(batch_size=4, num_generations=4, mini_batch_size=8, max_new_tokens=8, max_prompt_length=32,
                     learning_rate=3e-2, total_steps=20, seed=0, **variant)
    h = train_grpo(policy, ref, tok, _direction_reward(toy), prompts, cfg, progress=False)
    first, last = (sum(r["env/reward_mean"] for r in rows) / 3 for rows in (h[:3], h[-3:]))
    assert last > first + 0.1, (first, last)                   # 0.50 -> 0.89 (GRPO), 0.51 -> 0.66 (RLOO)
    assert h[-1]["objective/kl"] > 0 and set(h[0]) >= {"frac_reward_zero_std", "objective/entropy", "policy/clipfrac",
                                                         "response/length", "response/eos_frac", "time/step"}


def test_resume_equals_uninterrupted(tok, prompts, tmp_path):
    toy = tiny_model("gpt2", tok, d=32, n_layer=1, n_head=2)

    def run(out, **kw):
        cfg = GRPOConfig(batch_size=2, num_generations=3, mini_batch_size=3, num_iterations=2, max_new_tokens=5,
                         max_prompt_length=24, total_steps=4, save_every=2, learning_rate=1e-3, output_dir=str(out))
        policy, ref = make_grpo_models(toy, tok)
        return train_grpo(policy, ref, tok, _direction_reward(toy), prompts, cfg, progress=False, **kw), policy

    full, p_full = run(tmp_path / "full")
    run(tmp_path / "cut", stop_after_steps=3)
    resumed, p_resumed = run(tmp_path / "cut", resume=True)
    rows = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    drop_time = lambda rs: json.dumps([{k: v for k, v in r.items() if not k.startswith("time/")} for r in rs])
    assert drop_time(rows) == drop_time(full)
    for (n, a), (_, b) in zip(p_full.named_parameters(), p_resumed.named_parameters()): assert torch.equal(a, b), n
    assert (tmp_path / "full" / "metrics.csv").exists() and (tmp_path / "full" / "reward_kl.png").exists()


@pytest.mark.skipif(not TRL_NEW_PY.exists(),
                    reason="bench/.venv-trl-new missing: run `bash bench/setup_trl_new.sh` to compare with TRL's GRPOTrainer")
def test_grpo_agrees_with_trl():
    "bench/agree_grpo.py in bench/.venv-trl-new: our loss (3 loss types), per-token loss, gradients and advantages == TRL's."
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([str(TRL_NEW_PY), str(ROOT / "bench" / "agree_grpo.py")], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {l.split("|")[1].strip(): l.split("|")[2].strip() for l in p.stdout.splitlines() if l.startswith("| ")}
    rows = {k: float(v) for k, v in rows.items() if k != "quantity"}
    assert len(rows) >= 15 and all(v <= 1e-5 for v in rows.values()), rows
    for k in ("loss, loss_type='grpo'", "loss, loss_type='bnpo'", "loss, loss_type='dr_grpo'",
              "per-token loss (every response token)", "advantages, scale_rewards='group'",
              "RLOO advantages (RLOOTrainer, beta=0)"):
        assert k in rows, k

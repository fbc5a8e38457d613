"""Tests for open_chatgpt.ppo_core.

The reference implementations below are written independently, transcribed from the formulas as TRL 0.11's
classic `trl/core.py` and `trl/trainer/ppo_trainer.py` compute them (multiply-by-mask averages, Bessel-corrected
variance, the `lastgaelam` reverse loop over the padded response, clipped losses with TRL's clipfrac, the adaptive
KL controller of Ziegler et al. 2019), plus a plain per-sequence GAE on Python floats. Our functions must agree with
them to 1e-6 on random, padded inputs.
"""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from open_chatgpt.ppo_core import (
    AdaptiveKLController, FixedKLController, compute_gae, compute_rewards, entropy_from_logits, kl_penalty,
    logprobs_from_logits, masked_mean, masked_var, masked_whiten, ppo_policy_loss, ppo_value_loss,
)

ATOL = 1e-6
DT = torch.float64


# ----------------------------------------------------------------------------- references (TRL 0.11 formulas)
def trl_masked_mean(x, m):
    return (x * m).sum() / m.sum()


def trl_masked_var(x, m, unbiased=True):
    mu = trl_masked_mean(x, m)
    var = trl_masked_mean((x - mu) ** 2, m)
    if unbiased:
        n = m.sum()
        var = var * n / (n - 1)
    return var


def trl_masked_whiten(x, m, shift_mean=True):
    mu, var = trl_masked_mean(x, m), trl_masked_var(x, m)
    out = (x - mu) / torch.sqrt(var + 1e-8)
    return out + mu if not shift_mean else out


def trl_compute_rewards(scores, logprobs, ref_logprobs, masks, kl_coef, kind="kl"):
    rewards, non_score = [], []
    for s, lp, rlp, m in zip(scores, logprobs, ref_logprobs, masks):
        d = lp - rlp
        kl = {"kl": d, "mse": 0.5 * d * d}[kind]
        nsr = -kl_coef * kl
        r = nsr.clone()
        r[m.nonzero()[-1]] += s
        rewards.append(r)
        non_score.append(nsr)
    return torch.stack(rewards), torch.stack(non_score)


def trl_compute_advantages(values, rewards, mask, gamma, lam):
    """TRL's loop: mask values and rewards, then run lastgaelam backwards over every position of the row."""
    values, rewards = values * mask, rewards * mask
    gen_len = rewards.shape[-1]
    lastgaelam, rev = 0.0, []
    for t in range(gen_len - 1, -1, -1):
        nxt = values[:, t + 1] if t + 1 < gen_len else 0.0
        delta = rewards[:, t] + gamma * nxt - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        rev.append(lastgaelam)
    adv = torch.stack(rev[::-1], dim=1)
    return adv, adv + values  # raw advantages (before TRL whitens them), returns


def trl_losses(old_logprobs, values, logprobs, vpreds, advantages, returns, mask, cliprange, cliprange_value):
    vclip = torch.max(torch.min(vpreds, values + cliprange_value), values - cliprange_value)
    vf1, vf2 = (vpreds - returns) ** 2, (vclip - returns) ** 2
    vf_loss = 0.5 * trl_masked_mean(torch.max(vf1, vf2), mask)
    vf_clipfrac = trl_masked_mean((vf2 > vf1).double(), mask)
    ratio = torch.exp(logprobs - old_logprobs)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    pg_loss = trl_masked_mean(torch.max(pg1, pg2), mask)
    pg_clipfrac = trl_masked_mean((pg2 > pg1).double(), mask)
    approxkl = 0.5 * trl_masked_mean((logprobs - old_logprobs) ** 2, mask)
    policykl = trl_masked_mean(old_logprobs - logprobs, mask)
    return dict(pg_loss=pg_loss, vf_loss=vf_loss, pg_clipfrac=pg_clipfrac, vf_clipfrac=vf_clipfrac,
                approxkl=approxkl, policykl=policykl)


class RefAdaptiveKL:
    def __init__(self, init, target, horizon):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, current, n_steps):
        err = current / self.target - 1
        err = -0.2 if err < -0.2 else (0.2 if err > 0.2 else err)
        self.value = self.value * (1 + err * n_steps / self.horizon)


def ref_gae_per_sequence(rewards, values, mask, gamma, lam):
    """Plain Python: for each row take its response tokens in order and run GAE on lists of floats."""
    adv = torch.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[i, t] != 0]
        r = [float(rewards[i, t]) for t in idx]
        v = [float(values[i, t]) for t in idx]
        a = [0.0] * len(idx)
        for k in range(len(idx) - 1, -1, -1):
            v_next = v[k + 1] if k + 1 < len(idx) else 0.0
            a_next = a[k + 1] if k + 1 < len(idx) else 0.0
            a[k] = r[k] + gamma * v_next - v[k] + gamma * lam * a_next
        for k, t in enumerate(idx):
            adv[i, t] = a[k]
    return adv, (adv + values) * (mask != 0)


# ----------------------------------------------------------------------------- helpers
def padded_mask(batch, seq, gen, min_len=2, side="both"):
    """Contiguous response per row with left padding, right padding, or both."""
    m = torch.zeros(batch, seq, dtype=torch.long)
    for i in range(batch):
        n = int(torch.randint(min_len, seq + 1, (), generator=gen))
        if side == "left":
            start = seq - n
        elif side == "right":
            start = 0
        else:
            start = int(torch.randint(0, seq - n + 1, (), generator=gen))
        m[i, start:start + n] = 1
    return m


def batch(seed, side="both", B=6, T=11, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    mask = padded_mask(B, T, g, side=side)
    logprobs = -r(B, T).abs()
    return dict(mask=mask, logprobs=logprobs, old_logprobs=logprobs + 0.3 * r(B, T),
                ref_logprobs=logprobs + 0.2 * r(B, T), values=r(B, T), vpreds=r(B, T), scores=r(B),
                rewards=r(B, T), advantages=r(B, T), returns=r(B, T))


SIDES = ["left", "right", "both"]
on = lambda x, m: x[m.bool()]  # compare on response tokens only


# ----------------------------------------------------------------------------- log-probs and entropy
@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_logprobs_memory_safe_matches_naive(chunk_size):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 1000, generator=g, dtype=DT) * 5
    labels = torch.randint(0, 1000, (3, 9), generator=g)
    naive = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, labels, chunk_size), naive, atol=1e-10, rtol=0)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size), -(p * torch.log_softmax(logits, -1)).sum(-1),
                               atol=1e-10, rtol=0)


def test_logprobs_gradient_and_low_precision():
    logits = torch.randn(2, 4, 50, requires_grad=True)
    labels = torch.randint(0, 50, (2, 4))
    logprobs_from_logits(logits, labels, chunk_size=3).sum().backward()
    expected = torch.nn.functional.one_hot(labels, 50) - torch.softmax(logits.detach(), -1)
    torch.testing.assert_close(logits.grad, expected, atol=1e-6, rtol=0)
    lp16 = logprobs_from_logits(logits.detach().bfloat16(), labels)
    assert lp16.dtype == torch.float32
    naive = torch.log_softmax(logits.detach().bfloat16().float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(lp16, naive, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- masked statistics vs TRL
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("seed", range(5))
def test_masked_stats_match_trl(side, seed):
    b = batch(seed, side)
    x, m = b["values"] * 3 + 1, b["mask"]
    torch.testing.assert_close(masked_mean(x, m), trl_masked_mean(x, m), atol=ATOL, rtol=0)
    torch.testing.assert_close(masked_var(x, m), trl_masked_var(x, m), atol=ATOL, rtol=0)
    torch.testing.assert_close(masked_var(x, m, unbiased=False), trl_masked_var(x, m, False), atol=ATOL, rtol=0)
    for shift in (True, False):
        torch.testing.assert_close(on(masked_whiten(x, m, shift), m), on(trl_masked_whiten(x, m, shift), m),
                                   atol=ATOL, rtol=0)
    torch.testing.assert_close(masked_mean(x, m, axis=1), (x * m).sum(1) / m.sum(1), atol=ATOL, rtol=0)
    torch.testing.assert_close(masked_mean(x, m.bool()), masked_mean(x, m.float()), atol=0, rtol=0)


# ----------------------------------------------------------------------------- rewards vs TRL
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kind,trl_kind", [("k1", "kl"), ("k2", "mse")])
def test_compute_rewards_matches_trl(side, kind, trl_kind):
    for seed in range(4):
        b = batch(seed, side)
        m = b["mask"]
        rw, nsr, kl = compute_rewards(b["scores"], b["logprobs"], b["ref_logprobs"], m, 0.05, kind)
        ref_rw, ref_nsr = trl_compute_rewards(b["scores"], b["logprobs"], b["ref_logprobs"], m, 0.05, trl_kind)
        torch.testing.assert_close(on(rw, m), on(ref_rw, m), atol=ATOL, rtol=0)
        torch.testing.assert_close(on(nsr, m), on(ref_nsr, m), atol=ATOL, rtol=0)
        assert (rw[m == 0] == 0).all() and (kl[m == 0] == 0).all()
        # the score lands on the last response token, and only there
        last = [int(row.nonzero()[-1]) for row in m]
        torch.testing.assert_close(rw - nsr, torch.zeros_like(rw).index_put_(
            (torch.arange(len(last)), torch.tensor(last)), b["scores"]), atol=ATOL, rtol=0)


def test_kl_estimators_formulas():
    lp, ref = torch.tensor([-1.0, -2.0, -0.5], dtype=DT), torch.tensor([-2.0, -1.0, -0.5], dtype=DT)
    d = lp - ref
    torch.testing.assert_close(kl_penalty(lp, ref, "k1"), d)
    torch.testing.assert_close(kl_penalty(lp, ref, "k2"), 0.5 * d ** 2)
    rho = torch.exp(ref - lp)
    torch.testing.assert_close(kl_penalty(lp, ref, "k3"), rho - 1 - torch.log(rho))


def test_kl_estimators_unbiased():
    g = torch.Generator().manual_seed(3)
    pol, ref = torch.randn(30, generator=g, dtype=DT), 0.5 * torch.randn(30, generator=g, dtype=DT)
    lp_all, ref_all = torch.log_softmax(pol, 0), torch.log_softmax(ref, 0)
    true_kl = (lp_all.exp() * (lp_all - ref_all)).sum()
    # exact expectations under pi (no sampling noise): k1 and k3 are unbiased, k2 is not
    exp = lambda k: (lp_all.exp() * kl_penalty(lp_all, ref_all, k)).sum()
    torch.testing.assert_close(exp("k1"), true_kl, atol=1e-12, rtol=0)
    torch.testing.assert_close(exp("k3"), true_kl, atol=1e-12, rtol=0)
    assert abs(float(exp("k2") - true_kl)) > 1e-4


# ----------------------------------------------------------------------------- GAE
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.95), (0.9, 0.0), (1.0, 1.0), (0.5, 0.7)])
def test_gae_matches_trl_and_per_sequence_reference(side, gamma, lam):
    for seed in range(4):
        b = batch(seed, side)
        m = b["mask"]
        adv, ret = compute_gae(b["rewards"], b["values"], m, gamma, lam)
        trl_adv, trl_ret = trl_compute_advantages(b["values"], b["rewards"], m, gamma, lam)
        torch.testing.assert_close(on(adv, m), on(trl_adv, m), atol=ATOL, rtol=0)
        torch.testing.assert_close(on(ret, m), on(trl_ret, m), atol=ATOL, rtol=0)
        ref_adv, ref_ret = ref_gae_per_sequence(b["rewards"], b["values"], m, gamma, lam)
        torch.testing.assert_close(adv, ref_adv, atol=ATOL, rtol=0)  # including zeros off the mask
        torch.testing.assert_close(ret, ref_ret, atol=ATOL, rtol=0)


def test_gae_hand_computed():
    # rewards (0, 0, 1), values 0.5, gamma 0.9, lam 0.5 -> deltas (-0.05, -0.05, 0.5)
    r = torch.tensor([[7.0, 0.0, 0.0, 1.0, 7.0, 7.0]], dtype=DT)
    v = torch.tensor([[7.0, 0.5, 0.5, 0.5, 7.0, 7.0]], dtype=DT)
    m = torch.tensor([[0, 1, 1, 1, 0, 0]])
    adv, ret = compute_gae(r, v, m, gamma=0.9, lam=0.5)
    expected = torch.tensor([[0, 0.02875, 0.175, 0.5, 0, 0]], dtype=DT)
    torch.testing.assert_close(adv, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(ret, expected + v * m, atol=1e-12, rtol=0)
    # lam = 0: one-step TD errors; the last token does not bootstrap from the padding after it
    adv0, _ = compute_gae(r, v, m, gamma=0.9, lam=0.0)
    torch.testing.assert_close(adv0, torch.tensor([[0, -0.05, -0.05, 0.5, 0, 0]], dtype=DT), atol=1e-12, rtol=0)


@pytest.mark.parametrize("side", SIDES)
def test_gae_gamma1_lam1_is_monte_carlo_minus_values(side):
    b = batch(11, side)
    m = b["mask"]
    adv, ret = compute_gae(b["rewards"], b["values"], m, 1.0, 1.0)
    mc = (b["rewards"] * m).flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(adv, (mc - b["values"]) * m, atol=ATOL, rtol=0)
    torch.testing.assert_close(ret, mc * m, atol=ATOL, rtol=0)


def test_gae_holes_in_the_middle_are_skipped():
    # not needed for RLHF masks, but the semantics are defined: masked positions are not time steps
    g = torch.Generator().manual_seed(5)
    r, v = torch.randn(4, 9, generator=g, dtype=DT), torch.randn(4, 9, generator=g, dtype=DT)
    m = (torch.rand(4, 9, generator=g) > 0.4).long()
    m[:, 0] = 1
    adv, ret = compute_gae(r, v, m, 0.95, 0.9)
    ref_adv, ref_ret = ref_gae_per_sequence(r, v, m, 0.95, 0.9)
    torch.testing.assert_close(adv, ref_adv, atol=ATOL, rtol=0)
    torch.testing.assert_close(ret, ref_ret, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- losses vs TRL, end to end
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_full_ppo_step_matches_trl(side, dtype, atol):
    for seed in range(4):
        b = batch(seed, side, dtype=dtype)
        m = b["mask"]
        kl_coef, gamma, lam, cr, crv = 0.1, 1.0, 0.95, 0.2, 0.2
        # ours
        rewards, _, _ = compute_rewards(b["scores"], b["old_logprobs"], b["ref_logprobs"], m, kl_coef)
        adv, ret = compute_gae(rewards, b["values"], m, gamma, lam)
        adv = masked_whiten(adv, m)
        pg_loss, pg_stats = ppo_policy_loss(b["logprobs"], b["old_logprobs"], adv, m, cr)
        vf_loss, vf_stats = ppo_value_loss(b["vpreds"], b["values"], ret, m, crv)
        # TRL chain
        t_rewards, _ = trl_compute_rewards(b["scores"], b["old_logprobs"], b["ref_logprobs"], m, kl_coef)
        t_adv, t_ret = trl_compute_advantages(b["values"], t_rewards, m, gamma, lam)
        t_adv = trl_masked_whiten(t_adv, m)
        t = trl_losses(b["old_logprobs"], b["values"] * m, b["logprobs"], b["vpreds"], t_adv, t_ret, m, cr, crv)
        close = lambda a, e: torch.testing.assert_close(a.to(DT), e.to(DT), atol=atol, rtol=0)
        close(pg_loss, t["pg_loss"])
        close(vf_loss, t["vf_loss"])
        close(pg_stats["policy/clipfrac"], t["pg_clipfrac"])
        close(vf_stats["val/clipfrac"], t["vf_clipfrac"])
        close(pg_stats["policy/approxkl"], t["policykl"])
        close(pg_stats["policy/approxkl_k2"], t["approxkl"])
        assert 0 < float(pg_stats["policy/clipfrac"]) < 1  # the test exercises both branches


def test_policy_stats_match_cleanrl_formulas():
    b = batch(2)
    m = b["mask"].bool()
    _, s = ppo_policy_loss(b["logprobs"], b["old_logprobs"], b["advantages"], b["mask"], 0.2)
    logratio = (b["logprobs"] - b["old_logprobs"])[m]
    ratio = logratio.exp()
    torch.testing.assert_close(s["policy/approxkl"], (-logratio).mean(), atol=ATOL, rtol=0)  # old_approx_kl
    torch.testing.assert_close(s["policy/approxkl_k3"], ((ratio - 1) - logratio).mean(), atol=ATOL, rtol=0)
    torch.testing.assert_close(s["policy/ratio_mean"], ratio.mean(), atol=ATOL, rtol=0)
    torch.testing.assert_close(s["policy/ratio_max"], ratio.max(), atol=ATOL, rtol=0)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in s.values())


def test_value_stats_explained_variance():
    b = batch(4)
    m = b["mask"].bool()
    _, s = ppo_value_loss(b["vpreds"], b["values"], b["returns"], b["mask"], 0.2)
    y, yhat = b["returns"][m], b["vpreds"][m]
    torch.testing.assert_close(s["val/explained_variance"], 1 - (y - yhat).var() / y.var(), atol=ATOL, rtol=0)
    _, s_none = ppo_value_loss(b["vpreds"], b["values"], b["returns"], b["mask"], None)
    torch.testing.assert_close(s_none["loss/value"], 0.5 * ((yhat - y) ** 2).mean(), atol=ATOL, rtol=0)
    assert float(s_none["val/clipfrac"]) == 0.0


# ----------------------------------------------------------------------------- KL controllers
def test_adaptive_kl_matches_reference():
    g = torch.Generator().manual_seed(0)
    ours, ref = AdaptiveKLController(0.2, 6.0, 10000), RefAdaptiveKL(0.2, 6.0, 10000)
    for kl in (torch.rand(200, generator=g) * 15).tolist():
        ours.update(kl, 256)
        ref.update(kl, 256)
        assert math.isclose(ours.value, ref.value, rel_tol=1e-12)
    assert ours.update(torch.tensor(12.0), 256) == pytest.approx(ref.value * (1 + 0.2 * 256 / 10000))
    fixed = FixedKLController(0.3)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.3


# ----------------------------------------------------------------------------- property tests (hypothesis)
PROP = settings(max_examples=40, deadline=None, derandomize=True)
seeds = st.integers(0, 10_000)


@PROP
@given(seed=seeds, scale=st.sampled_from([1.0, 50.0, 1e3, 1e6]), cr=st.floats(0.01, 0.5))
def test_policy_loss_finite_for_extreme_logprob_differences(seed, scale, cr):
    g = torch.Generator().manual_seed(seed)
    lp = (torch.randn(3, 8, generator=g) * scale).requires_grad_()
    old = torch.randn(3, 8, generator=g) * scale
    adv = torch.randn(3, 8, generator=g) * 3
    m = padded_mask(3, 8, g, min_len=1)
    loss, stats = ppo_policy_loss(lp, old, adv, m, cr)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    assert all(torch.isfinite(v) for v in stats.values())
    k3 = kl_penalty(lp.detach(), old, "k3")  # the unguarded estimator may overflow, the loss may not
    assert not torch.isnan(k3).any()


@PROP
@given(seed=seeds, cr=st.floats(0.05, 0.4))
def test_clipping_bounds_the_gradient(seed, cr):
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(4, 7, generator=g, dtype=DT)
    lp = (old + torch.randn(4, 7, generator=g, dtype=DT)).requires_grad_()
    adv = torch.randn(4, 7, generator=g, dtype=DT)
    m = padded_mask(4, 7, g, min_len=1)
    ppo_policy_loss(lp, old, adv, m, cr)[0].backward()
    ratio, n, grad = (lp - old).exp().detach(), m.sum(), lp.grad
    outside = ((adv > 0) & (ratio > 1 + cr)) | ((adv < 0) & (ratio < 1 - cr))
    assert (grad[outside | (m == 0)] == 0).all()  # past the clip in the advantage's direction: no gradient
    pos = (adv > 0) & (m == 1)
    assert (grad[pos].abs() <= adv[pos] * (1 + cr) / n + 1e-12).all()  # A > 0: |grad| <= A (1 + eps) / n
    inside = ~outside & (m == 1)
    torch.testing.assert_close(grad[inside], (-adv * ratio / n)[inside], atol=1e-10, rtol=0)


@PROP
@given(seed=seeds, loc=st.floats(-100, 100), scale=st.floats(0.01, 100), shift=st.booleans())
def test_whitening_mean0_std1(seed, loc, scale, shift):
    g = torch.Generator().manual_seed(seed)
    x = loc + scale * torch.randn(5, 9, generator=g, dtype=DT)
    m = padded_mask(5, 9, g, min_len=2)
    w = masked_whiten(x, m, shift_mean=shift)
    target_mean = 0.0 if shift else float(masked_mean(x, m))
    assert abs(float(masked_mean(w, m)) - target_mean) < 1e-6 * max(1.0, abs(target_mean))
    var_x = float(masked_var(x, m))
    assert abs(float(masked_var(w, m)) - var_x / (var_x + 1e-8)) < 1e-9  # exactly 1 up to the 1e-8 epsilon
    assert abs(float(masked_var(w, m)) - 1.0) < 1e-3
    assert (w[m == 0] == 0).all()


@PROP
@given(seed=seeds, fill=st.sampled_from([0.0, 1e6, -1e6, float("inf"), float("nan")]),
       kind=st.sampled_from(["k1", "k2", "k3"]))
def test_masked_positions_never_change_any_result(seed, fill, kind):
    b = batch(seed, B=4, T=8)
    m = b["mask"]

    def everything(bb):
        lp = bb["logprobs"].clone().requires_grad_()
        vp = bb["vpreds"].clone().requires_grad_()
        rw, nsr, kl = compute_rewards(bb["scores"], bb["old_logprobs"], bb["ref_logprobs"], m, 0.1, kind)
        adv, ret = compute_gae(rw, bb["values"], m, 0.99, 0.95)
        adv = masked_whiten(adv, m)
        pg, pgs = ppo_policy_loss(lp, bb["old_logprobs"], adv, m, 0.2)
        vf, vfs = ppo_value_loss(vp, bb["values"], ret, m, 0.2)
        (pg + vf).backward()
        out = [masked_mean(bb["values"], m), masked_var(bb["values"], m), masked_mean(bb["values"], m, axis=1),
               on(masked_whiten(bb["values"], m, False), m), on(rw, m), on(nsr, m), on(kl, m), on(adv, m), on(ret, m),
               pg, vf, on(lp.grad, m), on(vp.grad, m), *pgs.values(), *vfs.values()]
        return [o.detach() for o in out] + [lp.grad[m == 0], vp.grad[m == 0]]

    clean = everything(b)
    dirty = {k: (v.masked_fill(m == 0, fill) if v.dim() == 2 else v) for k, v in b.items() if k != "mask"}
    for a, d in zip(clean, everything(dirty)):
        torch.testing.assert_close(a, d, atol=0, rtol=0, equal_nan=False)
    assert all((x == 0).all() for x in clean[-2:])  # masked tokens get no gradient


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_value_errors():
    b = batch(0, B=3, T=5)
    m, lp, v = b["mask"], b["logprobs"], b["values"]
    empty = torch.zeros_like(m)
    one = empty.clone()
    one[1, 2] = 1
    cases = [
        (lambda: masked_mean(v, m[:, :4]), "same (batch, seq) shape"),
        (lambda: masked_mean(v, empty), "empty"),
        (lambda: masked_var(v, empty), "empty"),
        (lambda: masked_whiten(v, empty), "empty"),
        (lambda: masked_var(v, one), "at least 2"),
        (lambda: masked_mean(v, m * 0.5), "only 0 and 1"),
        (lambda: masked_mean(v, empty.index_fill(0, torch.tensor([0]), 1), axis=1), "empty mask"),
        (lambda: kl_penalty(lp, lp[:, :4]), "shape mismatch"),
        (lambda: kl_penalty(lp, lp, "kl"), "unknown KL estimator"),
        (lambda: compute_rewards(b["scores"][:2], lp, lp, m, 0.1), "(batch,)"),
        (lambda: compute_rewards(b["scores"][:, None], lp, lp, m, 0.1), "(batch,)"),
        (lambda: compute_rewards(b["scores"], lp, lp, empty, 0.1), "empty"),
        (lambda: compute_rewards(b["scores"], lp, lp[:, :4], m, 0.1), "shape mismatch"),
        (lambda: compute_gae(v, v[:, :4], m, 1.0, 0.95), "shape mismatch"),
        (lambda: compute_gae(v, v, m[:, :4], 1.0, 0.95), "same (batch, seq) shape"),
        (lambda: compute_gae(v, v, empty, 1.0, 0.95), "empty"),
        (lambda: ppo_policy_loss(lp, lp, v[:2], m, 0.2), "shape mismatch"),
        (lambda: ppo_policy_loss(lp, lp, v, empty, 0.2), "empty"),
        (lambda: ppo_value_loss(v, v, v[:, :3], m, 0.2), "shape mismatch"),
        (lambda: ppo_value_loss(v, v, v, empty, 0.2), "empty"),
        (lambda: logprobs_from_logits(torch.randn(3, 5, 10), torch.zeros(3, 4, dtype=torch.long)), "do not match"),
        (lambda: logprobs_from_logits(torch.randn(3, 5, 10), torch.full((3, 5), -100)), "must be in"),
        (lambda: logprobs_from_logits(torch.randn(3, 5, 10), torch.zeros(3, 5)), "integer token ids"),
        (lambda: AdaptiveKLController(0.1, target=-1, horizon=100), "must be positive"),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError) as e:
            fn()
        assert msg in str(e.value), (msg, str(e.value))

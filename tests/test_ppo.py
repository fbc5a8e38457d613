"PPO trainer (chapter 6): rollout details, determinism, kill-and-resume, bad input."
import dataclasses, json, math
from pathlib import Path

import pytest
import torch

from open_chatgpt.data import get_tokenizer, sample_prompts, train_tokenizer
from open_chatgpt.models import FAMILIES, tiny_model
from open_chatgpt.ppo import (PPOConfig, Critic, PolicyAndValue, _sequences, evaluate_policy, forward_logprobs_values,
                              make_ppo_models, old_logprobs_values, ppo_minibatch_backward, read_metrics,
                              reward_model_fn, rollout, score, sentiment_reward_fn, train_ppo, truncate_after_eos)
from open_chatgpt.sft import add_lora

TOK = get_tokenizer()
PROMPTS = list(sample_prompts("train")["prompt"][:24])


def tiny(seed=0):
    return tiny_model("gpt2", TOK, seed=seed, d=32, n_layer=1, n_head=2).eval()


def cfg(**kw):
    base = dict(batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=6, max_prompt_length=24, total_steps=4,
                save_every=2, learning_rate=1e-3, init_kl_coef=0.1, target=1.0, horizon=50)
    return PPOConfig(**{**base, **kw})


def length_reward(prompts, responses):  # a cheap deterministic reward: longer responses score higher
    return torch.tensor([len(r) / 10.0 for r in responses])


def run(out=None, model_seed=0, **kw):
    c = cfg(output_dir=str(out) if out else None, **{k: v for k, v in kw.items() if k in PPOConfig.__dataclass_fields__})
    pv, ref = make_ppo_models(tiny(model_seed), TOK, critic_init="sft", shared_backbone=c.shared_backbone)
    rest = {k: v for k, v in kw.items() if k not in PPOConfig.__dataclass_fields__}
    return train_ppo(pv, ref, TOK, rest.pop("reward_fn", length_reward), PROMPTS, c, progress=False, **rest), pv


def no_time(rows):
    return json.dumps([{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows])


def test_truncate_after_eos_keeps_first_eos_only():
    r = torch.tensor([[3, 0, 4, 0], [0, 5, 5, 5], [7, 7, 7, 7]])
    resp, m, has = truncate_after_eos(r, eos_token_id=0, pad_token_id=1)
    assert resp.tolist() == [[3, 0, 1, 1], [0, 1, 1, 1], [7, 7, 7, 7]]
    assert m.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert has.tolist() == [True, True, False]


def test_rollout_left_padding_and_logprobs_match_unpadded():
    model, c = tiny(), cfg(max_new_tokens=8)
    batch = rollout(model, TOK, PROMPTS[:4], c, do_sample=False)
    assert (batch["query_mask"][:, -1] == 1).all()                       # left padded: every prompt ends in the last column
    assert not (batch["response"][batch["response_mask"] == 0] != TOK.pad_token_id).any()
    for i in range(4):
        alone = rollout(model, TOK, PROMPTS[i:i + 1], c, do_sample=False)
        assert alone["responses"][0] == batch["responses"][i]
    ids = torch.cat([batch["query"], batch["response"]], 1); am = torch.cat([batch["query_mask"], batch["response_mask"]], 1)
    lp, _, _ = forward_logprobs_values(model, ids, am, batch["query"].shape[1])
    i = int(batch["query_mask"].sum(1).argmin()); keep = am[i].bool()
    lp1, _, _ = forward_logprobs_values(model, ids[i:i + 1, keep], am[i:i + 1, keep], int(batch["query_mask"][i].sum()))
    n = int(batch["response_mask"][i].sum())
    torch.testing.assert_close(lp[i, :n], lp1[0, :n], atol=1e-4, rtol=1e-4)


def test_deterministic_with_seed_and_different_with_other_seed():
    a, _ = run(seed=3); b, _ = run(seed=3); c, _ = run(seed=4)
    assert no_time(a) == no_time(b)
    assert no_time(a) != no_time(c)


def test_kill_and_resume_gives_every_step_once_and_same_result(tmp_path):
    full, pv_full = run(tmp_path / "full", total_steps=5)
    d = tmp_path / "killed"
    part, _ = run(d, total_steps=5, stop_after_steps=3)          # step 3 logged, its checkpoint never written
    assert [r["step"] for r in read_metrics(d / "metrics.jsonl")] == [1, 2, 3]
    resumed, pv_res = run(d, total_steps=5, resume=True)
    rows = read_metrics(d / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert no_time(rows) == no_time(full)
    for (k, a), (_, b) in zip(pv_full.state_dict().items(), pv_res.state_dict().items()):
        assert torch.equal(a, b), k
    assert (d / "metrics.csv").read_text().count("\n") == 6 and (d / "reward_kl.png").exists()


def test_nan_reward_raises_before_update_and_keeps_checkpoint(tmp_path):
    calls = []
    def flaky(prompts, responses):
        calls.append(1)
        return torch.full((len(responses),), float("nan") if len(calls) == 3 else 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        run(tmp_path, total_steps=5, reward_fn=flaky)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["step"] == 2
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]          # no temporary files left behind


def high_id_reward(prompts, responses, batch):  # token-level: share of response tokens in the upper half of the vocab
    m = batch["response_mask"].float()
    return ((batch["response"] >= 2048).float() * m).sum(1) / m.sum(1)


def test_ppo_raises_the_reward_and_adaptive_kl_coef_reacts(monkeypatch):
    base = tiny
    def peaked(seed=0):  # a random model with large logits: few likely tokens per position, so 12 steps can move it
        m = base(seed)
        with torch.no_grad(): m.transformer.wte.weight.mul_(30)
        return m
    monkeypatch.setitem(globals(), "tiny", peaked)
    hist, _ = run(total_steps=12, batch_size=8, mini_batch_size=4, ppo_epochs=2, learning_rate=3e-3, max_new_tokens=10,
                  reward_fn=high_id_reward)
    first = sum(h["env/reward_mean"] for h in hist[:3]) / 3
    last = sum(h["env/reward_mean"] for h in hist[-3:]) / 3
    assert last > first + 0.05, (first, last)
    assert hist[-1]["objective/kl"] > 0
    for now, nxt in zip(hist, hist[1:]):   # the controller moves beta towards the target: down below it, up above it
        assert (nxt["objective/kl_coef"] - now["objective/kl_coef"]) * (now["objective/kl"] - 1.0) > 0, (now, nxt)
    for k in ["objective/scores", "objective/kl", "objective/entropy", "objective/kl_coef", "losses/policy_loss",
              "losses/value_loss", "policy/clipfrac", "policy/approxkl", "val/clipfrac", "val/explained_variance",
              "response/length", "time/rollout", "time/update", "env/reward_mean", "env/reward_std"]:
        assert k in hist[-1], k


def test_early_stop_on_target_kl_and_shared_backbone():
    hist, pv = run(total_steps=2, ppo_epochs=4, target_kl=1e-9, learning_rate=1e-2, shared_backbone=True)
    assert pv.shared and hist[-1]["ppo/early_stop"] == 1 and hist[-1]["ppo/updates"] < 4 * 2


def test_missing_eos_penalty_and_bad_scores():
    b = dict(prompts=["a", "b"], responses=["x", "y"], has_eos=torch.tensor([True, False]))
    raw, s = score(lambda p, r: torch.tensor([1.0, 1.0]), b, cfg(missing_eos_penalty=2.0))
    assert s.tolist() == [1.0, -1.0] and raw.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="one score per response"):
        score(lambda p, r: torch.zeros(3), b)


def test_config_that_cannot_fit_the_context():
    pv, ref = make_ppo_models(tiny(), TOK, critic_init="sft")
    with pytest.raises(ValueError, match="does not fit"):
        train_ppo(pv, ref, TOK, length_reward, PROMPTS, cfg(max_prompt_length=500, max_new_tokens=100), progress=False)
    with pytest.raises(ValueError, match="multiple of"):
        cfg(batch_size=5).validate()


class TextRM(torch.nn.Module):
    "A stand-in reward model with its own (different) tokenizer: scores the number of its tokens."
    def __init__(self, tokenizer):
        super().__init__(); self.tokenizer, self.seen = tokenizer, []
    def score_texts(self, texts, batch_size=16, max_length=512):
        self.seen += list(texts)
        return torch.tensor([float(len(self.tokenizer(t)["input_ids"])) for t in texts])


def test_reward_model_with_a_different_tokenizer_scores_decoded_text():
    other = train_tokenizer(PROMPTS * 3, vocab_size=300)
    rm = TextRM(other)
    fn = reward_model_fn(rm, TOK)
    batch = rollout(tiny(), TOK, PROMPTS[:3], cfg(), do_sample=False)
    raw, _ = score(fn, batch)
    assert raw.shape == (3,) and rm.seen[0].startswith(PROMPTS[0])
    for text, ended in zip(rm.seen, batch["has_eos"].tolist()):          # EOS only where the policy emitted it
        assert text.endswith(other.eos_token) == ended
    # a critic cannot start from a reward model whose vocabulary differs from the policy's
    rm_model = type("RM", (torch.nn.Module,), {})()
    torch.nn.Module.__init__(rm_model)
    rm_model.backbone = tiny_model("gpt2", other, d=32, n_layer=1, n_head=2); rm_model.head = torch.nn.Linear(32, 1)
    with pytest.raises(ValueError, match="vocabulary"):
        make_ppo_models(tiny(), TOK, rm_model, critic_init="reward")


def test_critic_from_reward_model_copies_backbone_and_head():
    rm = torch.nn.Module(); rm.backbone = tiny(1); rm.head = torch.nn.Linear(32, 1)
    critic = Critic.from_reward_model(rm)
    torch.testing.assert_close(critic.v_head.weight, rm.head.weight)
    assert critic.v_head is not rm.head


def test_sentiment_reward_and_evaluate_policy():
    fn = sentiment_reward_fn()
    assert fn(["p"], ["What a wonderful, happy day!"])[0] > 0.5 and fn(["p"], ["terrible awful"])[0] < -0.5
    pv, ref = make_ppo_models(tiny(), TOK, critic_init="sft")
    ev = evaluate_policy(pv, TOK, fn, PROMPTS[:6], cfg(), ref_policy=ref, batch_size=4)
    assert ev["n"] == 6 and abs(ev["kl"]) < 1e-4 and len(ev["samples"]) == 6
    ev2 = evaluate_policy(pv, TOK, fn, PROMPTS[:6], cfg(), batch_size=4)
    assert ev2["reward_mean"] == ev["reward_mean"]                        # fixed evaluation seed


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lora", [False, True])
def test_micro_batches_give_the_minibatch_gradient(family, lora):
    """`micro_batch_size=1` (one unpadded row per forward/backward) = one padded pass over the minibatch: the same
    gradient and statistics, for every family, full or LoRA (shared backbone); and on-policy its ratio is exactly 1."""
    torch.manual_seed(0)
    sft = tiny_model(family, TOK).eval()
    if lora: sft = add_lora(sft, dict(r=4, lora_alpha=8, lora_dropout=0.0))   # peft's default modules per family
    model, ref = make_ppo_models(sft, TOK, critic_init="sft", shared_backbone=lora)
    c0 = PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=1, max_new_tokens=12, max_prompt_length=40)
    c1 = dataclasses.replace(c0, micro_batch_size=1)
    prompts = sorted(PROMPTS, key=len)[::6][:4]                       # prompts of different lengths: padding in the batch
    batch = rollout(model, TOK, prompts, c0)
    for i, n in enumerate([12, 5, 9, 2]):                             # responses of different lengths (as if ended)
        batch["response_mask"][i, n:] = 0; batch["response"][i, n:] = TOK.pad_token_id
    assert batch["query_mask"].sum(1).unique().numel() > 1
    ids, am, mask, P = _sequences(batch)
    perm = torch.tensor([2, 0, 3, 1])
    def data(c, noise=0.0):
        g = torch.Generator().manual_seed(1)
        old_lp, old_v, _, _ = old_logprobs_values(model, ref, batch, c, perm)
        return dict(input_ids=ids, attention_mask=am, P=P, mask=mask,
                    old_logprobs=old_lp + noise * torch.randn(mask.shape, generator=g),
                    old_values=old_v + noise * torch.randn(mask.shape, generator=g),
                    advantages=torch.randn(mask.shape, generator=g), returns=torch.randn(mask.shape, generator=g))
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    def backward(c, d):
        model.zero_grad(set_to_none=True); model.train(); calls.clear()
        st = ppo_minibatch_backward(model, d, perm, c)
        model.eval()
        assert len(calls) == len(perm) // c.forward_batch_size                 # one forward pass per micro-batch
        return [p.grad.clone() for p in model.parameters() if p.requires_grad], st
    _, on = backward(c1, data(c1))                                    # old forwards in the same one-row passes
    assert (on["policy/approxkl"].item(), on["policy/clipfrac"].item(), on["val/clipfrac"].item()) == (0.0, 0.0, 0.0)
    d = data(c0, noise=0.3)                                           # off-policy: some tokens clipped
    (g0, s0), (g1, s1) = backward(c0, d), backward(c1, d)
    assert s0["policy/clipfrac"] > 0
    for a, b in zip(g0, g1): torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    for k in s0: torch.testing.assert_close(s0[k], s1[k], atol=1e-6, rtol=1e-5)
    d["mask"] = mask.clone(); d["mask"][perm[1]] = 0                  # a row without response tokens: its pass adds nothing
    (g0, s0), (g1, s1) = backward(c0, d), backward(c1, d)
    for a, b in zip(g0, g1): torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    for k in s0: torch.testing.assert_close(s0[k], s1[k], atol=1e-6, rtol=1e-5)


def sampler_model(family, lora):
    "A tiny model of `family` in eval mode, with a LoRA adapter that changes its outputs (B non-zero) if `lora`."
    torch.manual_seed(0)
    model = tiny_model(family, TOK).eval()
    if lora:
        model = add_lora(model, dict(r=4, lora_alpha=8, lora_dropout=0.0)).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n: p.normal_(0, 0.5)                      # an adapter that changes the outputs
    return model


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lora", [False, True])
def test_sampler_logprobs_equal_a_forward_pass(family, lora):
    """`rollout(..., return_logprobs=True)`: each sampled token's log-prob as the sampler computed it equals the
    forward pass's (`forward_logprobs_values`) on the same sequences, for every family, full or LoRA (adapters trained:
    B non-zero), with left padding, a shared prefill (groups), temperature and top-k; 0 past each response's end."""
    model = sampler_model(family, lora)
    c = PPOConfig(max_new_tokens=10, max_prompt_length=40, temperature=0.7, top_k=30)
    prompts = [PROMPTS[0]] * 3 + sorted(PROMPTS, key=len)[:2] + [PROMPTS[5]] * 2
    head = (model.get_base_model() if lora else model).get_output_embeddings()
    for bias in (0.25, 0.5, 1.0, 1.5, 2.0, 3.0):                       # raise EOS until some answers end, not all:
        def eos_bias(m, inputs, logits):                                 # rows leave the batch mid-way
            logits = logits.clone(); logits[..., TOK.eos_token_id] += bias; return logits
        hook = head.register_forward_hook(eos_bias)
        torch.manual_seed(0)
        b = rollout(model, TOK, prompts, c, return_logprobs=True)
        if b["has_eos"].any() and not b["has_eos"].all(): break
        hook.remove()
    assert b["has_eos"].any() and not b["has_eos"].all(), b["has_eos"]
    assert b["query_mask"].sum(1).unique().numel() > 1                   # prompts of different lengths: left padding
    ids, am = torch.cat([b["query"], b["response"]], 1), torch.cat([b["query_mask"], b["response_mask"]], 1)
    lp, _, _ = forward_logprobs_values(model, ids, am, b["query"].shape[1], temperature=0.7)
    hook.remove()
    m = b["response_mask"].bool()
    torch.testing.assert_close(b["logprobs"][m], lp[m], atol=1e-5, rtol=1e-5)
    assert (~m).any() and (b["logprobs"][~m] == 0).all() and b["logprobs"].shape == b["response"].shape
    assert (b["logprobs"][m] < 0).all()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lora", [False, True])
def test_bf16_generation_samples_in_bf16_and_keeps_its_own_logprobs(family, lora):
    """`generation_dtype="bfloat16"`: the sampler's matmuls run in bf16 (the fp32 weights untouched, frozen ones marked
    only while it samples, also after an error), the batch says so, its log-probs are those of the bf16 policy (nearer
    a forward pass under the same autocast than the fp32 one), and `answer_kl` scores such a batch with two bf16
    forwards: a policy against itself reads exactly 0."""
    from transformers.pytorch_utils import Conv1D
    from open_chatgpt.evaluation import answer_kl
    from open_chatgpt.ppo import generation_autocast
    model = sampler_model(family, lora)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = [p.requires_grad for p in model.parameters()]
    dtypes, marked, matmuls = [], [], (torch.nn.Linear, Conv1D)        # GPT-2's blocks are Conv1D
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype)) for m in model.modules()
             if isinstance(m, matmuls)]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    hooks.append(model.register_forward_pre_hook(lambda m, a: marked.append(all(p.requires_grad for p in frozen))))
    c = PPOConfig(max_new_tokens=10, max_prompt_length=40, temperature=0.7, generation_dtype="bfloat16")
    torch.manual_seed(0)
    b = rollout(model, TOK, PROMPTS[:6], c, return_logprobs=True)
    for h in hooks: h.remove()
    assert len(dtypes) > 10 and set(dtypes) == {torch.bfloat16}, set(dtypes)   # every matmul layer computed in bf16
    assert b["generation_dtype"] == "bfloat16"
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert (not lora or frozen) and marked and all(marked)             # frozen weights marked (cast once) while sampling
    assert [p.requires_grad for p in model.parameters()] == flags      # ... and frozen again afterwards
    with pytest.raises(RuntimeError, match="boom"):
        with torch.no_grad(), generation_autocast("bfloat16", "cpu", model): raise RuntimeError("boom")
    assert [p.requires_grad for p in model.parameters()] == flags      # also after an error inside the context
    ids, am = torch.cat([b["query"], b["response"]], 1), torch.cat([b["query_mask"], b["response_mask"]], 1)
    m, P = b["response_mask"].bool(), b["query"].shape[1]
    lp32, _, _ = forward_logprobs_values(model, ids, am, P, temperature=0.7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp16, _, _ = forward_logprobs_values(model, ids, am, P, temperature=0.7)
    err16, err32 = (b["logprobs"] - lp16)[m].abs().mean(), (b["logprobs"] - lp32)[m].abs().mean()
    assert err16 < 0.05 and err16 < err32, (err16, err32)               # closer to the bf16 forward than to fp32's
    dtypes.clear()
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype)) for m in model.modules()
             if isinstance(m, matmuls)]
    kl = answer_kl(model, model, b, temperature=0.7)   # policy and reference forwards in bf16, not the sampler's log-probs
    for h in hooks: h.remove()
    assert len(dtypes) > 10 and set(dtypes) == {torch.bfloat16}, set(dtypes)
    assert (kl == 0).all(), kl                                          # a policy against itself: exactly 0, as in fp32
    torch.manual_seed(0)
    b32 = rollout(model, TOK, PROMPTS[:6], PPOConfig(**{**dataclasses.asdict(c), "generation_dtype": "float32"}),
                  return_logprobs=True)
    assert b32["generation_dtype"] == "float32"
    ids32 = torch.cat([b32["query"], b32["response"]], 1)
    am32, m32 = torch.cat([b32["query_mask"], b32["response_mask"]], 1), b32["response_mask"].bool()
    lp, _, _ = forward_logprobs_values(model, ids32, am32, b32["query"].shape[1], temperature=0.7)
    torch.testing.assert_close(b32["logprobs"][m32], lp[m32], atol=1e-5, rtol=1e-5)      # fp32: as before, exact

def test_generation_dtype_auto_follows_the_machine(monkeypatch):
    "'auto' samples in bf16 exactly where `native_bf16` says bf16 matmuls are native; a typo fails in `validate`."
    from open_chatgpt import ppo as ppo_mod
    model = tiny()
    for native, want in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(ppo_mod, "native_bf16", lambda device, native=native: native)
        assert rollout(model, TOK, PROMPTS[:2], cfg(generation_dtype="auto"))["generation_dtype"] == want
    with pytest.raises(ValueError, match="generation_dtype must be one of"):
        cfg(generation_dtype="fp16").validate()


def test_rollout_draws_with_the_configured_sampler(monkeypatch):
    "rollout hands PPOConfig.sampler to every sample_next call (GRPO's rollout is the same function)."
    import open_chatgpt.ppo as ppo_mod
    seen, real = [], ppo_mod.sample_next
    def spy(*args, **kw):
        seen.append(args[5] if len(args) > 5 else kw.get("sampler", "inverse_cdf")); return real(*args, **kw)
    monkeypatch.setattr(ppo_mod, "sample_next", spy)
    model = tiny_model("gpt2", TOK, d=32, n_layer=1, n_head=2).eval()
    for sampler in ("multinomial", "inverse_cdf"):
        seen.clear()
        ppo_mod.rollout(model, TOK, sample_prompts("train")["prompt"][:2], PPOConfig(max_new_tokens=4, sampler=sampler))
        assert seen and set(seen) == {sampler}, (sampler, seen)
    with pytest.raises(ValueError, match="sampler must be one of"): PPOConfig(sampler="gumbel").validate()

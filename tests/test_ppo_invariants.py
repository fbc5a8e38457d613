"""The checks that good RL code bases rely on, run on the PPO trainer (chapter 6) in the configurations people use:
every trainable module updates and every frozen one does not; on-policy sanity (ratio exactly 1 on the first minibatch,
for every family with dropout in its config); a LoRA policy gets position ids and a critic; the value loss falls;
devices, RNG state, KL bookkeeping and early stopping behave as documented."""
import copy

import pytest
import torch

from open_chatgpt.data import get_tokenizer, hh_prompt, sample_prompts
from open_chatgpt.models import FAMILIES, tiny_config
from open_chatgpt import ppo as ppo_mod
from open_chatgpt.ppo import (PPOConfig, forward_logprobs_values, make_kl_controller, make_ppo_models, ppo_step,
                              reward_model_fn, rollout, score, train_ppo)
from open_chatgpt.reward import RewardModel

TOK = get_tokenizer()
PROMPTS = [hh_prompt("Hi"), hh_prompt("How do I bake bread at home without yeast?"),
           hh_prompt("Tell me a joke about cats and dogs and birds, please."), hh_prompt("What is 2 + 2?")]
DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout", "attention_dropout", "hidden_dropout",
                "activation_dropout", "summary_first_dropout")


def family_model(family, seed=0, dropout=0.1, **kw):
    "A tiny model of `family` with dropout 0.1 in every dropout field its config has (GPT-2's and OPT's hub default)."
    from transformers import AutoModelForCausalLM
    from open_chatgpt.models import prepare_model
    cfg = tiny_config(family, len(TOK), d=32, n_layer=2, n_head=2, **kw)
    cfg.bos_token_id = cfg.eos_token_id = TOK.eos_token_id; cfg.pad_token_id = TOK.pad_token_id
    for k in DROPOUT_KEYS:
        if hasattr(cfg, k): setattr(cfg, k, dropout)
    torch.manual_seed(seed)
    return prepare_model(AutoModelForCausalLM.from_config(cfg), TOK).eval()


def lora(model, family):
    "Random (not zero) LoRA adapters, so the adapted model differs from the base."
    from peft import LoraConfig, get_peft_model
    targets = {"gpt2": ["c_attn"], "gptj": ["q_proj", "v_proj"], "gpt_neox": ["query_key_value"], "opt": ["q_proj", "v_proj"],
               "bloom": ["query_key_value"], "llama": ["q_proj", "v_proj"]}[family]
    torch.manual_seed(1)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                                            init_lora_weights=False, task_type="CAUSAL_LM"))


def cfg(**kw):
    base = dict(batch_size=4, mini_batch_size=2, ppo_epochs=2, max_new_tokens=8, max_prompt_length=32,
                learning_rate=1e-3, init_kl_coef=0.1, target=1.0, horizon=50, total_steps=1)
    return PPOConfig(**{**base, **kw})


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    after = module.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def one_step(model, ref, reward_fn, c, prompts=PROMPTS):
    batch = rollout(model, TOK, prompts[:c.batch_size], c)
    _, scores = score(reward_fn, batch, c)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=c.learning_rate, eps=1e-5)
    return ppo_step(model, ref, opt, batch, scores, make_kl_controller(c), c), batch


def frozen_rm(seed=1):
    "A reward model as the pipeline loads it: from a saved RM, then `rm.eval().requires_grad_(False)`."
    rm = RewardModel(family_model("gpt2", seed=seed), TOK)
    return rm.eval().requires_grad_(False)


# ---- defect 1: the critic copied from a frozen reward model must train ------------------------------------------
@pytest.mark.parametrize("use_lora", [False, True])
def test_every_trainable_param_updates_and_frozen_ones_do_not(use_lora):
    sft = family_model("gpt2")
    if use_lora: sft = lora(sft, "gpt2")
    rm = frozen_rm()
    rm_before = snapshot(rm)
    model, ref = make_ppo_models(sft, TOK, rm, critic_init="reward")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    never = sorted(n for n, p in model.critic.named_parameters() if not p.requires_grad)
    assert not never, f"critic parameters that never train: {never[:5]}"
    if use_lora: assert all("lora_" in n for n in trainable if n.startswith("policy."))
    before, ref_before = snapshot(model), snapshot(ref)
    one_step(model, ref, reward_model_fn(rm, TOK), cfg())
    moved = changed(before, model)
    stuck = sorted(n for n in trainable if n not in moved)
    assert not stuck, f"{len(stuck)} trainable tensors did not change after a PPO step: {stuck[:5]}"
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert not (moved & frozen), sorted(moved & frozen)[:5]
    assert not changed(ref_before, ref) and not changed(rm_before, rm)   # reference and reward model bit-identical


def test_pipeline_ppo_models_train_the_critic(tmp_path):
    "Exactly the pipeline's configuration (quick run: tiny policy, RM from the SFT model, critic from the RM)."
    from open_chatgpt.pipeline import PipelineConfig, QUICK_RUN, ppo_models, run_reward, run_sft
    c = PipelineConfig(output_dir=str(tmp_path)).update(copy.deepcopy(QUICK_RUN))
    run_sft(c, log=lambda *a: None); run_reward(c, log=lambda *a: None)
    parts = ppo_models(c)
    model, ref, rm = parts["model"], parts["ref"], parts["reward_model"]
    assert not model.shared and model.critic is not None
    before, ref_before, rm_before = snapshot(model), snapshot(ref), snapshot(rm)
    one_step(model, ref, parts["reward_fn"], parts["config"], list(sample_prompts("train")["prompt"][:8]))
    moved = changed(before, model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("critic.")}, "the critic has no trainable parameters"
    assert trainable <= moved, sorted(trainable - moved)[:5]
    assert not changed(ref_before, ref) and not changed(rm_before, rm)


# ---- defect 2: dropout (modules and functional) off, so the first minibatch is exactly on-policy --------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("generation_dtype,train_dtype", [("float32", "float32"), ("bfloat16", "float32"),
                                                          ("bfloat16", "bfloat16")])   # sampling; the update's forwards
@pytest.mark.parametrize("micro_batch_size", [0, 1])   # 1: the minibatch's later rows compare a no-grad pass with a grad one
def test_first_minibatch_is_on_policy(family, generation_dtype, train_dtype, micro_batch_size, monkeypatch):
    calls = []
    real = ppo_mod.ppo_policy_loss
    def spy(logprobs, old_logprobs, advantages, mask, clip_range):
        loss, stats = real(logprobs, old_logprobs, advantages, mask, clip_range)
        calls.append((logprobs.detach(), old_logprobs, mask, stats))
        return loss, stats
    monkeypatch.setattr(ppo_mod, "ppo_policy_loss", spy)
    sft = family_model(family)
    model, ref = make_ppo_models(sft, TOK, critic_init="sft")
    c = cfg(batch_size=4, mini_batch_size=2, ppo_epochs=1, total_steps=2, generation_dtype=generation_dtype,
            train_dtype=train_dtype, micro_batch_size=micro_batch_size)
    hist = train_ppo(model, ref, TOK, lambda p, r: torch.tensor([len(x) / 10 for x in r]), PROMPTS, c, progress=False)
    assert hist[0]["objective/kl"] == 0.0        # step 1: policy == reference, forwarded in the same passes (bf16 too)
    per_step, passes = len(calls) // 2, c.mini_batch_size // c.forward_batch_size
    k = passes + (passes > 1)                          # a call per pass, then one for the minibatch's statistics
    for first in calls[:k] + calls[per_step:per_step + k]:   # the first minibatch of step 1 and of step 2
        lp, old, m, stats = first
        m = m.bool()
        assert torch.equal(lp[m], old[m]), f"{family}: ratio != 1 on the first minibatch: max |log ratio| " \
                                           f"{(lp[m] - old[m]).abs().max():.2e}"
        assert stats["policy/approxkl"].item() == 0 and stats["policy/clipfrac"].item() == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_disable_dropout_zeroes_config_and_functional_dropout(family):
    m = ppo_mod.disable_dropout(family_model(family))
    for k in DROPOUT_KEYS:
        assert getattr(m.config, k, 0.0) in (0, 0.0, None), (family, k, getattr(m.config, k))
    m.train()
    ids = torch.randint(0, len(TOK), (2, 12))
    with torch.no_grad():
        a, b = m(input_ids=ids).logits, m(input_ids=ids).logits
    assert torch.equal(a, b), f"{family}: two forward passes in train mode differ: dropout is still on"


# ---- defect 3: LoRA policies get position ids; padded batch == one sequence at a time ------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_lora_policy_padded_equals_alone(family):
    model = lora(family_model(family, dropout=0.0), family)
    c = cfg(max_new_tokens=6)
    batch = rollout(model, TOK, PROMPTS[:3], c, do_sample=False)
    assert (batch["query_mask"][:, 0] == 0).any()          # left padding present
    ids = torch.cat([batch["query"], batch["response"]], 1); am = torch.cat([batch["query_mask"], batch["response_mask"]], 1)
    P = batch["query"].shape[1]
    with torch.no_grad():
        lp, _, _ = forward_logprobs_values(model, ids, am, P)
        for i in range(3):
            q = batch["query"][i][batch["query_mask"][i].bool()]; n = int(batch["response_mask"][i].sum())
            one = torch.cat([q, batch["response"][i][:n]])[None]
            lp1, _, _ = forward_logprobs_values(model, one, torch.ones_like(one), len(q))
            torch.testing.assert_close(lp[i, :n], lp1[0], atol=1e-4, rtol=1e-4, msg=lambda s: f"{family}+LoRA: {s}")


# ---- defect 4: a critic from a LoRA policy ---------------------------------------------------------------------------
def test_separate_critic_from_a_lora_policy_trains():
    sft = lora(family_model("llama", dropout=0.0), "llama")
    model, ref = make_ppo_models(sft, TOK, critic_init="sft", shared_backbone=False)
    before = snapshot(model)
    stats, _ = one_step(model, ref, lambda p, r: torch.tensor([len(x) / 10 for x in r]), cfg())
    moved = changed(before, model)
    assert any(n.startswith("critic.") for n in moved) and any(n.startswith("policy.") for n in moved)
    assert torch.isfinite(torch.tensor(stats["losses/value_loss"]))


def test_lora_reference_is_the_same_weights_with_the_adapter_disabled():
    sft = lora(family_model("gpt2", dropout=0.0), "gpt2")
    model, ref = make_ppo_models(sft, TOK, critic_init="sft", shared_backbone=True)
    base = {p.data_ptr() for n, p in model.policy.named_parameters() if "lora_" not in n}
    ref_ptrs = {p.data_ptr() for p in ref.parameters()}
    assert ref_ptrs <= base, "the LoRA reference holds its own copy of the weights"
    ids = torch.randint(2, len(TOK), (2, 10)); am = torch.ones_like(ids)
    with torch.no_grad():
        sft_logits = sft(input_ids=ids, attention_mask=am).logits       # the SFT model's adapters are trained (non-zero)
        start = ref(input_ids=ids, attention_mask=am).logits
        torch.testing.assert_close(start, sft_logits, atol=1e-4, rtol=1e-4)   # reference = SFT model (merged + fresh adapters)
        torch.testing.assert_close(model.policy(input_ids=ids, attention_mask=am).logits, sft_logits, atol=1e-4, rtol=1e-4)
        for n, p in model.policy.named_parameters():
            if "lora_B" in n: p.add_(0.1)                                # as PPO moves the adapters ...
        with model.policy.disable_adapter(): want = model.policy(input_ids=ids, attention_mask=am).logits
        got = ref(input_ids=ids, attention_mask=am).logits
        adapted = model.policy(input_ids=ids, attention_mask=am).logits
    assert torch.equal(got, want) and torch.equal(got, start) and not torch.allclose(got, adapted)   # ... the reference stays


# ---- defect 5: PPO checkpoints carry the CUDA RNG state ------------------------------------------------------------
def test_ppo_checkpoint_saves_and_restores_cuda_rng(tmp_path, monkeypatch):
    fake = [torch.ByteTensor([1, 2, 3])]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: fake)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.append(s))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: None)
    reward = lambda p, r: torch.tensor([len(x) / 10 for x in r])
    c = cfg(ppo_epochs=1, total_steps=1, output_dir=str(tmp_path))
    model, ref = make_ppo_models(family_model("gpt2", dropout=0.0), TOK, critic_init="sft")
    train_ppo(model, ref, TOK, reward, PROMPTS, c, progress=False)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert "cuda" in state["rng"] and torch.equal(state["rng"]["cuda"][0], fake[0])
    c2 = cfg(ppo_epochs=1, total_steps=2, output_dir=str(tmp_path))
    train_ppo(model, ref, TOK, reward, PROMPTS, c2, resume=True, progress=False)
    assert restored and torch.equal(restored[0][0], fake[0])


# ---- defect 6: scores land on the policy's device ------------------------------------------------------------------
def test_scores_follow_the_batch_device():
    batch = dict(prompts=["a", "b"], responses=["x", "yy"], has_eos=torch.tensor([True, False], device="meta"),
                 query=torch.zeros(2, 3, dtype=torch.long, device="meta"))
    raw, scores = score(lambda p, r: torch.tensor([1.0, 2.0]), batch, cfg(missing_eos_penalty=1.0))
    assert raw.device.type == "meta" and scores.device.type == "meta"


# ---- the audit: EOS only where emitted; one KL estimator drives penalty, log and controller; early stop per epoch ---
class TextRM(torch.nn.Module):
    "A stand-in reward model with its own tokenizer, which records the texts it scores."
    def __init__(self, tokenizer):
        super().__init__(); self.tokenizer, self.seen = tokenizer, []
    def score_texts(self, texts, batch_size=16, max_length=512):
        self.seen += list(texts)
        return torch.zeros(len(texts))


def test_different_tokenizer_rm_sees_eos_only_where_the_policy_emitted_it():
    from open_chatgpt.data import train_tokenizer
    rm = TextRM(train_tokenizer(PROMPTS * 3, vocab_size=300))
    eos = rm.tokenizer.eos_token
    batch = dict(prompts=["p1", "p2"], responses=[" ended", " cut off"], has_eos=torch.tensor([True, False]),
                 query=torch.zeros(2, 1, dtype=torch.long))
    score(reward_model_fn(rm, TOK), batch)
    assert rm.seen[0].endswith(" ended" + eos) and rm.seen[1].endswith(" cut off") and not rm.seen[1].endswith(eos)


@pytest.mark.parametrize("est", ["k1", "k3"])
def test_kl_estimator_drives_penalty_log_and_controller(est, monkeypatch):
    seen = []
    model, ref = make_ppo_models(family_model("gpt2", dropout=0.0), TOK, critic_init="sft")
    with torch.no_grad():                                   # move the policy away from the reference
        for p in model.policy.parameters(): p.add_(0.05 * torch.randn_like(p))
    c = cfg(kl_estimator=est, ppo_epochs=1)
    ctl = make_kl_controller(c)
    monkeypatch.setattr(ctl, "update", lambda kl, n: seen.append(kl))
    batch = rollout(model, TOK, PROMPTS, c)
    _, scores = score(lambda p, r: torch.zeros(len(r)), batch, c)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    stats = ppo_step(model, ref, opt, batch, scores, ctl, c)
    assert seen == [stats["objective/kl"]] and stats["objective/kl"] == stats[f"objective/kl_{est}"]
    assert stats["objective/kl_k1"] != stats["objective/kl_k3"]


def test_early_stopping_checks_mean_k3_once_per_epoch():
    model, ref = make_ppo_models(family_model("gpt2", dropout=0.0), TOK, critic_init="sft")
    c = cfg(batch_size=4, mini_batch_size=1, ppo_epochs=4, target_kl=1e-12, learning_rate=1e-2)
    stats, _ = one_step(model, ref, lambda p, r: torch.tensor([len(x) / 10 for x in r]), c)
    assert stats["ppo/early_stop"] == 1
    assert stats["ppo/updates"] == 4            # the whole first epoch (4 minibatches), then stop


# ---- learning signals -----------------------------------------------------------------------------------------------
def test_value_loss_falls_on_a_fixed_batch():
    model, ref = make_ppo_models(family_model("gpt2", dropout=0.0), TOK, critic_init="sft")
    c = cfg(ppo_epochs=1, learning_rate=3e-3, vf_coef=1.0)
    batch = rollout(model, TOK, PROMPTS, c)
    scores = torch.tensor([1.0, -1.0, 2.0, 0.5])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=c.learning_rate, eps=1e-5)
    ctl = make_kl_controller(c)
    losses = [ppo_step(model, ref, opt, batch, scores, ctl, c)["losses/value_loss"] for _ in range(6)]
    assert losses[-1] < 0.5 * losses[0], losses


# ---- the sampler: greedy sample_tokens == HF generate, every family, with and without LoRA ------------------------
@pytest.mark.parametrize("use_lora", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_sample_tokens_greedy_equals_generate(family, use_lora):
    from open_chatgpt.data import PromptCollator
    from open_chatgpt.ppo import sample_tokens, truncate_after_eos
    model = family_model(family, dropout=0.0)
    def eos_bias(module, args, kwargs, out):    # EOS once a row's length is a multiple of 4: rows end at different steps
        n = kwargs["attention_mask"].sum(1)                                                  # (batch,) real tokens so far
        out.logits[..., TOK.eos_token_id] += 8.0 * (n % 4 == 0).float()[:, None]
    model.register_forward_hook(eos_bias, with_kwargs=True)
    if use_lora: model = lora(model, family)
    b = PromptCollator(TOK, 48)([{"prompt": p} for p in PROMPTS])
    ids, am = b["input_ids"], b["attention_mask"]
    ours = sample_tokens(model, ids, am, 12, TOK.eos_token_id, TOK.pad_token_id, do_sample=False)
    with torch.no_grad():
        hf = model.generate(input_ids=ids, attention_mask=am, max_new_tokens=12, min_new_tokens=1, do_sample=False,
                            pad_token_id=TOK.pad_token_id, eos_token_id=TOK.eos_token_id)[:, ids.shape[1]:]
    hf = torch.nn.functional.pad(hf, (0, 12 - hf.shape[1]), value=TOK.pad_token_id)
    a, ma, ea = truncate_after_eos(ours, TOK.eos_token_id, TOK.pad_token_id)
    b_, mb, eb = truncate_after_eos(hf, TOK.eos_token_id, TOK.pad_token_id)
    assert len(set(ma.sum(1).tolist())) > 1, "the check needs rows that end at different steps"
    assert torch.equal(a, b_) and torch.equal(ma, mb), f"{family}{' + LoRA' if use_lora else ''}: {a} vs {b_}"


# ---- the two samplers: 'multinomial' draws HF generate's tokens from a seed; 'inverse_cdf' the same distribution ----
def _sampled(model, sampler, seed, n_new=10):
    from open_chatgpt.data import PromptCollator
    from open_chatgpt.ppo import sample_tokens
    b = PromptCollator(TOK, 48)([{"prompt": p} for p in PROMPTS])
    torch.manual_seed(seed)
    return sample_tokens(model, b["input_ids"], b["attention_mask"], n_new, TOK.eos_token_id, TOK.pad_token_id,
                         sampler=sampler), b


def test_multinomial_sampler_draws_generates_tokens():
    "With sampler='multinomial' the same seed draws HF generate's tokens, up to the first step any row ends."
    model = family_model("gpt2", dropout=0.0)
    ours, b = _sampled(model, "multinomial", seed=3)
    torch.manual_seed(3)
    with torch.no_grad():
        hf = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=10,
                            min_new_tokens=1, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                            pad_token_id=TOK.pad_token_id, eos_token_id=TOK.eos_token_id)[:, b["input_ids"].shape[1]:]
    ended = (ours == TOK.eos_token_id).any(0).nonzero()
    upto = int(ended[0]) + 1 if len(ended) else ours.shape[1]        # the random streams part after a row ends
    assert upto >= 3, "the check needs a few steps before any row ends"
    assert torch.equal(ours[:, :upto], hf[:, :upto])
    other, _ = _sampled(model, "inverse_cdf", seed=3)                  # the default draws other tokens from the seed
    assert not torch.equal(other[:, :upto], ours[:, :upto])


def test_samplers_same_first_token_distribution():
    "Over many seeds the first sampled token has the same distribution under both samplers (the model's softmax)."
    from open_chatgpt.data import PromptCollator
    model = family_model("gpt2", dropout=0.0)
    bias = torch.zeros(len(TOK)); bias[[10, 200, 3000]] = torch.tensor([9.0, 8.5, 8.0])   # a peaked distribution
    def peak(module, args, out): out.logits.add_(bias)                  # (in place: the hook returns None)
    model.register_forward_hook(peak)
    b = PromptCollator(TOK, 48)([{"prompt": PROMPTS[0]}])
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[0, -1]
    logits[TOK.eos_token_id] = -float("inf")                          # barred on the first step (min_new_tokens=1)
    p = logits.softmax(-1)[[10, 200, 3000]]
    assert 0.1 < p.min() and p.sum() < 0.95, p                        # three likely words, and a tail
    for sampler in ("inverse_cdf", "multinomial"):
        firsts = torch.cat([_sampled(model, sampler, seed=s, n_new=1)[0][:1, 0] for s in range(500)])
        freq = torch.stack([(firsts == t).float().mean() for t in (10, 200, 3000)])
        assert torch.allclose(freq, p, atol=0.07), (sampler, freq, p)  # 3.5 standard errors at 500 draws


# ---- autocast goes around forward passes, never around a training loop -------------------------------------------
def test_ppo_step_in_bf16_sees_its_own_updates():
    """train_dtype='bfloat16': every minibatch forward enters autocast itself, so after the first optimizer step the
    forwards use the new weights (inside one outer autocast block they would not: the ratio would stay exactly 1)."""
    calls = []
    real = ppo_mod.ppo_policy_loss
    def spy(logprobs, old_logprobs, advantages, mask, clip_range):
        calls.append((logprobs.detach(), old_logprobs, mask.bool()))
        return real(logprobs, old_logprobs, advantages, mask, clip_range)
    model, ref = make_ppo_models(family_model("llama", dropout=0.0), TOK, critic_init="sft")
    c = cfg(batch_size=4, mini_batch_size=2, ppo_epochs=2, learning_rate=1e-2, train_dtype="bfloat16")
    seen = []                                          # (grad on?, output dtype) of every linear layer of the actor
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype)))
             for m in model.policy.modules() if isinstance(m, torch.nn.Linear)]
    ppo_mod.ppo_policy_loss = spy
    try: one_step(model, ref, lambda p, r: torch.tensor([len(x) / 10 for x in r]), c)
    finally:
        ppo_mod.ppo_policy_loss = real
        for h in hooks: h.remove()
    assert (True, torch.bfloat16) in seen and (False, torch.bfloat16) in seen   # the update's passes and the old/ref ones
    assert (True, torch.float32) not in seen                                    # no pass with grad left in fp32
    lp, old, m = calls[0]
    assert torch.equal(lp[m], old[m])                                  # the first minibatch: exactly on-policy
    assert any(not torch.equal(lp[m], old[m]) for lp, old, m in calls[1:]), "the update never saw its own steps"


def test_trainers_refuse_an_outer_autocast():
    from open_chatgpt.dpo import DPOConfig, make_dpo_models, train_dpo
    from open_chatgpt.grpo import GRPOConfig, grpo_step, make_grpo_models
    from open_chatgpt.reward import RewardConfig, train_reward
    from open_chatgpt.sft import SFTConfig, train_sft
    from open_chatgpt.data import sample_pairs, sample_sft
    model, ref = make_ppo_models(family_model("gpt2", dropout=0.0), TOK, critic_init="sft")
    c = cfg()
    batch = rollout(model, TOK, PROMPTS[:c.batch_size], c)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    policy, gref = make_grpo_models(family_model("gpt2", dropout=0.0), TOK)
    gc = GRPOConfig(batch_size=2, num_generations=2, mini_batch_size=4, max_new_tokens=4, max_prompt_length=32)
    gbatch = rollout(policy, TOK, [p for p in PROMPTS[:2] for _ in range(2)], gc)
    dpol, dref = make_dpo_models(family_model("gpt2", dropout=0.0), TOK)
    pairs = sample_pairs("train").select(range(4))
    runs = {"ppo_step": lambda: ppo_step(model, ref, opt, batch, torch.zeros(4), make_kl_controller(c), c),
            "ppo_update": lambda: ppo_mod.ppo_update(model, opt, {}, [torch.arange(4)], c),
            "grpo_step": lambda: grpo_step(policy, gref, torch.optim.Adam(policy.parameters()), gbatch, torch.randn(4), gc),
            "train_dpo": lambda: train_dpo(dpol, dref, TOK, pairs, config=DPOConfig(max_steps=1, batch_size=2), progress=False),
            "train_sft": lambda: train_sft(family_model("gpt2", dropout=0.0), TOK, sample_sft("train").select(range(4)),
                                           config=SFTConfig(max_steps=1, batch_size=2), progress=False),
            "train_reward": lambda: train_reward(RewardModel(family_model("gpt2", dropout=0.0), TOK), TOK, pairs,
                                                 config=RewardConfig(max_steps=1, batch_size=2), progress=False)}
    before = snapshot(model)
    for name, run in runs.items():
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="inside torch.autocast"): run()
    assert not changed(before, model)                                   # refused before anything trained


def test_resume_refuses_a_setting_added_since_the_run_began(tmp_path):
    "A run from before a config field existed ran with its default: resuming it with another value is a change."
    from open_chatgpt.plumbing import open_run
    (tmp_path / "checkpoints").mkdir()
    torch.save({}, tmp_path / "checkpoints" / "last.pt")
    old = {k: v for k, v in ppo_mod.asdict(cfg()).items() if k != "train_dtype"}       # recorded before train_dtype
    (tmp_path / "ppo_config.json").write_text(ppo_mod.json.dumps(old))
    with pytest.raises(ValueError, match="train_dtype"): open_run(tmp_path, True, cfg(train_dtype="bfloat16"), "ppo", lambda ck: 3)
    (tmp_path / "ppo_config.json").write_text(ppo_mod.json.dumps(old))
    assert open_run(tmp_path, True, cfg(), "ppo", lambda ck: 3)[0] == 3             # the default it ran with: resumes

"""Reward model (chapter 4): padding invariance on every family, K-wise == mean pairwise, bad input, save/load,
normalisation, and that training learns a preference it can only get from the data."""
import itertools
import math
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st

from open_chatgpt.data import PairwiseCollator, get_tokenizer, hh_prompt, sample_pairs
from open_chatgpt.models import tiny_model
from open_chatgpt.reward import (RewardConfig, RewardModel, check_pairs, evaluate_reward, fit_reward_bias, kwise_loss,
                                 pairwise_loss, train_reward, train_reward_trainer, wilson_interval)

TOK = get_tokenizer()
PAIRS = [dict(prompt=hh_prompt("Hi"), chosen=" Hello! How can I help?", rejected=" Go away."),
         dict(prompt=hh_prompt("How do I bake bread?"), chosen=" Mix flour, water, salt and yeast, then bake.",
              rejected=" I don't know.")] + [sample_pairs("train")[i] for i in range(2)]  # short and long: real padding


def bert(tok, seed=0):
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=96, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    return BertModel(cfg).eval()


def opt_projected(tok, seed=0):
    "OPT whose output is projected to word_embed_proj_dim (32) != hidden_size (64): the head must read 32."
    from transformers import OPTConfig, OPTForCausalLM
    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, ffn_dim=128,
                    word_embed_proj_dim=32, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    return OPTForCausalLM(cfg).eval()


BACKBONES = {
    "gpt2": lambda: tiny_model("gpt2", TOK, d=32),
    "opt": lambda: opt_projected(TOK),
    "gpt_neox": lambda: tiny_model("gpt_neox", TOK, d=32),
    "bloom": lambda: tiny_model("bloom", TOK, d=32),
    "llama": lambda: tiny_model("llama", TOK, d=32),
    "bert": lambda: bert(TOK),
}


@pytest.mark.parametrize("family", list(BACKBONES))
def test_reward_at_last_real_token_ignores_padding(family):
    rm = RewardModel(BACKBONES[family](), TOK).eval()
    torch.nn.init.normal_(rm.v_head.bias)  # any head
    right = PairwiseCollator(TOK, max_length=48, padding_side="right")(PAIRS)
    left = PairwiseCollator(TOK, max_length=48, padding_side="left")(PAIRS)
    assert (right["attention_mask"] == 0).any() and (left["attention_mask"][:, 0] == 0).any()  # padding on both sides
    with torch.no_grad():
        r_right = rm(right["input_ids"], right["attention_mask"])
        r_left = rm(left["input_ids"], left["attention_mask"])
        alone = torch.stack([rm(ids[m.bool()][None], torch.ones(1, int(m.sum()), dtype=torch.long))[0]
                             for ids, m in zip(right["input_ids"], right["attention_mask"])])
    assert r_right.shape == (8,) and r_right.dtype == torch.float32
    assert alone.std() > 1e-4  # the rewards differ between sequences, so equality below means something
    torch.testing.assert_close(r_right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(r_left, alone, atol=1e-5, rtol=0)
    # reading the last column would be wrong under right padding: the test can tell the difference
    with torch.no_grad():
        h = rm.base(input_ids=right["input_ids"], attention_mask=right["attention_mask"]).last_hidden_state[:, -1]
        naive = rm.v_head(h).squeeze(-1)
    assert (naive - alone).abs().max() > 1e-3


def test_hidden_size_across_families():
    assert RewardModel(opt_projected(TOK)).v_head.in_features == 32  # OPT: word_embed_proj_dim, not hidden_size
    assert RewardModel(bert(TOK)).v_head.in_features == 48
    assert RewardModel(tiny_model("gpt2", TOK, d=32)).v_head.in_features == 32


@settings(max_examples=60, deadline=None)
@given(K=st.integers(2, 4), seed=st.integers(0, 10_000), scale=st.floats(0.1, 10.0))
def test_kwise_equals_mean_pairwise_over_all_pairs(K, seed, scale):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(K, generator=g, dtype=torch.float64) * scale
    ranks = torch.randperm(K, generator=g)
    winners, losers = zip(*[(i, j) if ranks[i] < ranks[j] else (j, i) for i, j in itertools.combinations(range(K), 2)])
    assert len(winners) == math.comb(K, 2)
    expected = pairwise_loss(rewards[list(winners)], rewards[list(losers)])
    torch.testing.assert_close(kwise_loss(rewards, ranks), expected, atol=1e-6, rtol=1e-6)
    # with a margin too
    torch.testing.assert_close(kwise_loss(rewards, ranks, margin=0.5),
                               pairwise_loss(rewards[list(winners)], rewards[list(losers)], margin=0.5), atol=1e-6, rtol=1e-6)


def test_kwise_gradient_pushes_ranked_order():
    r = torch.zeros(3, requires_grad=True)
    kwise_loss(r, [2, 0, 1]).backward()  # response 1 is best, then 2, then 0
    assert r.grad[1] < r.grad[2] < r.grad[0]  # gradient descent raises the best most


def test_pairwise_loss_values_and_margin():
    assert pairwise_loss(torch.zeros(5), torch.zeros(5)).item() == pytest.approx(math.log(2))
    assert pairwise_loss(torch.tensor([3.0]), torch.tensor([1.0]), margin=2.0).item() == pytest.approx(math.log(2))
    per_pair = pairwise_loss(torch.tensor([3.0, 0.0]), torch.tensor([1.0, 0.0]), margin=torch.tensor([2.0, 0.0]))
    assert per_pair.item() == pytest.approx(math.log(2))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="same shape"): pairwise_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="empty"): pairwise_loss(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="at least 2 responses"): kwise_loss(torch.tensor([1.0]), [0])
    with pytest.raises(ValueError, match="at least 2 responses"): kwise_loss(torch.zeros(0), [])
    with pytest.raises(ValueError, match="shape"): kwise_loss(torch.zeros(3), [0, 1])
    with pytest.raises(ValueError, match="same rank"): kwise_loss(torch.tensor([1.0, 2.0, 3.0]), [1, 1, 1])
    with pytest.raises(ValueError, match="ties"): kwise_loss(torch.tensor([1.0, 2.0, 3.0]), [0, 1, 1], ties="error")
    # ties are skipped by default and the loss is normalised by the untied pairs
    got = kwise_loss(torch.tensor([3.0, 1.0, 2.0]), [0, 1, 1])
    assert got.item() == pytest.approx(pairwise_loss(torch.tensor([3.0, 3.0]), torch.tensor([1.0, 2.0])).item())
    same = [dict(prompt=hh_prompt("hi"), chosen=" Hello!", rejected=" Hello! "), PAIRS[0]]
    with pytest.raises(ValueError, match="chosen == rejected"): check_pairs(same)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert len(check_pairs(same, drop_identical=True)) == 1 and "dropped 1" in str(w[0].message)
    with pytest.raises(ValueError, match="lacks column"): check_pairs([dict(prompt="p", chosen=" a")])
    with pytest.raises(ValueError, match="empty"): check_pairs([dict(prompt="p", chosen=" a", rejected="  ")])
    rm = RewardModel(tiny_model("gpt2", TOK, d=32))
    with pytest.raises(ValueError, match="all zeros"): rm(torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match="no tokenizer"): rm.score_texts(["hi"])
    with pytest.raises(ValueError, match="margin"): RewardConfig(margin=-1.0)
    from transformers import T5Config, T5Model
    t5 = T5Model(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match="encoder-decoder"): RewardModel(t5)
    with pytest.raises(ValueError, match="cannot load a reward model"): RewardModel.from_pretrained("/no/such/dir")


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_save_load_roundtrip_identical_rewards(tmp_path, family):
    rm = RewardModel(BACKBONES[family](), TOK).eval()
    rm.bias.fill_(0.7); rm.bias_std = 1.5
    batch = PairwiseCollator(TOK, 48, padding_side="left")(PAIRS)
    with torch.no_grad(): before = rm(batch["input_ids"], batch["attention_mask"])
    rm.save_pretrained(tmp_path / "rm")
    names = {p.name for p in (tmp_path / "rm").iterdir()}
    assert {"model.safetensors", "reward_head.safetensors", "reward_config.json", "config.json"} <= names
    assert not any(n.endswith(".bin") for n in names)
    rm2 = RewardModel.from_pretrained(tmp_path / "rm")
    with torch.no_grad(): after = rm2(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(before, after)
    assert rm2.bias.item() == pytest.approx(0.7) and rm2.bias_std == 1.5 and type(rm2.backbone) is type(rm.backbone)
    texts = [TOK.decode(ids[m.bool()]) for ids, m in zip(batch["input_ids"], batch["attention_mask"])]
    torch.testing.assert_close(rm2.score_texts(texts, batch_size=3), before, atol=1e-5, rtol=0)


def test_from_pretrained_plain_model_builds_fresh_head(tmp_path):
    lm = tiny_model("llama", TOK, d=32)
    lm.save_pretrained(tmp_path / "lm"); TOK.save_pretrained(tmp_path / "lm")
    rm = RewardModel.from_pretrained(tmp_path / "lm")
    assert rm.bias.item() == 0 and rm.v_head.in_features == 32 and rm.tokenizer is not None
    assert rm.score_texts(["\n\nHuman: hi\n\nAssistant: hello" + TOK.eos_token]).shape == (1,)


def test_fit_reward_bias_centres_reference_rewards():
    rm = RewardModel(tiny_model("gpt2", TOK, d=32), TOK).eval()
    torch.nn.init.constant_(rm.v_head.bias, 5.0)  # a large offset to remove
    refs = [dict(prompt=p["prompt"], response=p["chosen"]) for p in sample_pairs("test").select(range(24))]
    mean, std = fit_reward_bias(rm, TOK, refs, max_length=64)
    assert mean == pytest.approx(rm.bias.item()) and abs(mean) > 2 and std > 0
    texts = [r["prompt"] + r["response"] + TOK.eos_token for r in refs]
    scores = rm.score_texts(texts, max_length=64)
    assert abs(scores.mean().item()) < 1e-4 and scores.std().item() == pytest.approx(std, rel=1e-4)
    with pytest.raises(ValueError, match="at least 2"): fit_reward_bias(rm, TOK, ["p"], [" r"])


def test_evaluate_counts_ties_as_half_and_wilson():
    rm = RewardModel(tiny_model("gpt2", TOK, d=32), TOK)
    torch.nn.init.zeros_(rm.v_head.weight)  # every reward equal: every pair a tie
    ev = evaluate_reward(rm, TOK, sample_pairs("test").select(range(10)), max_length=32)
    assert ev["accuracy"] == 0.5 and ev["n_ties"] == 10 and ev["n"] == 10 and len(ev["margins"]) == 10
    lo, hi = wilson_interval(50, 100)
    assert (round(lo, 3), round(hi, 3)) == (0.404, 0.596)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0 and 0.15 < hi < 0.17


def synthetic_pairs(n, seed):
    "Chosen responses say 'thanks'-ish words, rejected ones do not: a preference only the data can teach."
    import random
    rnd = random.Random(seed)
    good, bad = ["Sure, happy to help.", "Thank you, glad to help!"], ["No.", "Figure it out yourself."]
    topics = ["bread", "cats", "math", "the weather", "music", "trains", "python", "gardens"]
    out = []
    for _ in range(n):
        p = hh_prompt(f"Tell me about {rnd.choice(topics)}.")
        out.append(dict(prompt=p, chosen=" " + rnd.choice(good), rejected=" " + rnd.choice(bad)))
    return out


def test_train_reward_learns_a_preference_from_data():
    from datasets import Dataset
    train, test = Dataset.from_list(synthetic_pairs(64, 0)), Dataset.from_list(synthetic_pairs(32, 1))
    rm = RewardModel(tiny_model("gpt2", TOK, d=32, n_layer=1), TOK)
    before = evaluate_reward(rm, TOK, test, max_length=32)["accuracy"]
    cfg = RewardConfig(learning_rate=3e-3, max_steps=12, batch_size=16, max_length=32, eval_every=6, log_every=3, seed=0)
    hist = train_reward(rm, TOK, train, test, cfg, progress=False)
    ev = evaluate_reward(rm, TOK, test, max_length=32)
    assert ev["accuracy"] == 1.0 and ev["ci_low"] > 0.5 and ev["mean_margin"] > 0, (before, ev)
    assert hist["step"][-1] == 12 and hist["eval_acc"][-1] == 1.0
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    for k in ("step", "train_loss", "train_acc", "eval_acc", "eval_ci_low", "eval_margin"):
        assert len(hist[k]) == len(hist["step"])


def test_fit_reward_bias_centres_what_a_response_only_model_reads():
    "A response-only reward model is normalised on the responses alone, as it is trained, evaluated and used in PPO."
    rm = RewardModel(tiny_model("gpt2", TOK, d=32), TOK, with_prompt=False).eval()
    torch.nn.init.normal_(rm.v_head.weight, std=1.0); torch.nn.init.constant_(rm.v_head.bias, 5.0)
    refs = [dict(prompt=p["prompt"], response=p["chosen"]) for p in sample_pairs("test").select(range(24))]
    fit_reward_bias(rm, TOK, refs, max_length=64)
    scores = rm.score_texts([r["response"] + TOK.eos_token for r in refs], max_length=64)
    assert abs(scores.mean().item()) < 1e-4, scores.mean()


def test_scoring_text_formats_like_training_for_a_chat_template_reward_model():
    "reward_model_fn's text path gives a chat-template reward model the rows it was trained on (no HH leading space)."
    import copy
    from open_chatgpt.data import PairwiseCollator
    from open_chatgpt.ppo import reward_model_fn
    chat = copy.deepcopy(TOK)
    chat.chat_template = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + eos_token + '\\n'}}"
                          "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}")
    pair = sample_pairs("test")[0]
    for wp in (True, False):
        rm = RewardModel(tiny_model("gpt2", TOK, d=32), chat, with_prompt=wp).eval()
        row = PairwiseCollator(rm.tokenizer, 512, with_prompt=wp)([pair])
        want = rm(row["input_ids"][:1], row["attention_mask"][:1])
        got = reward_model_fn(rm, max_length=512)([pair["prompt"]], [pair["chosen"]])          # HH answer: leading space
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

def test_trainer_path_reads_what_the_model_reads(monkeypatch):
    "The Trainer path feeds a response-only model the response alone, and fits the probe when linear_probe is set."
    import open_chatgpt.reward as R
    from datasets import Dataset
    seen = []
    class Recording(R.PairwiseCollator):
        def __call__(self, records): seen.append(self.with_prompt); return super().__call__(records)
    monkeypatch.setattr(R, "PairwiseCollator", Recording)
    rm = RewardModel(tiny_model("gpt2", TOK, d=32, n_layer=1), TOK, with_prompt=False)
    train = Dataset.from_list(synthetic_pairs(32, 0))
    train_reward_trainer(rm, TOK, train, None, RewardConfig(max_steps=1, batch_size=8, max_length=32, device="cpu"))
    assert seen and not any(seen)
    probe = RewardModel(tiny_model("gpt2", TOK, d=32, n_layer=1), TOK)
    w0 = probe.v_head.weight.detach().clone()
    h = train_reward_trainer(probe, TOK, train, None, RewardConfig(linear_probe=True, epochs=0, max_length=32, device="cpu"))
    assert not torch.equal(probe.v_head.weight, w0) and h["step"] == []          # the probe alone: fitted, no steps

def test_trainer_path_learns_and_saves(tmp_path):
    from datasets import Dataset
    train, test = Dataset.from_list(synthetic_pairs(64, 0)), Dataset.from_list(synthetic_pairs(32, 1))
    rm = RewardModel(tiny_model("gpt2", TOK, d=32, n_layer=1), TOK)
    cfg = RewardConfig(learning_rate=3e-3, max_steps=12, batch_size=16, max_length=32, eval_every=6, log_every=3,
                       output_dir=str(tmp_path / "out"), device="cpu")
    hist = train_reward_trainer(rm, TOK, train, test, cfg)
    assert hist["eval_acc"] == 1.0 and any(v is not None for v in hist["eval_loss"])
    rm2 = RewardModel.from_pretrained(tmp_path / "out")
    texts = [r["prompt"] + r["chosen"] + TOK.eos_token for r in synthetic_pairs(4, 2)]
    torch.testing.assert_close(rm2.score_texts(texts), rm.score_texts(texts))


def test_critic_from_reward_model_starts_at_the_reward():
    "PPO's critic copies the RM's backbone and head: its value at the last real token is the raw reward."
    from open_chatgpt.ppo import Critic
    rm = RewardModel(tiny_model("gpt2", TOK, d=32), TOK).eval()
    batch = PairwiseCollator(TOK, 48)(PAIRS)
    critic = Critic.from_reward_model(rm).eval()
    with torch.no_grad():
        values = critic(batch["input_ids"], batch["attention_mask"])  # (batch, seq)
        last = batch["attention_mask"].sum(1) - 1
        torch.testing.assert_close(values[torch.arange(len(last)), last], rm(batch["input_ids"], batch["attention_mask"], raw=True))

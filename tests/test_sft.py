"Chapter 3 (SFT): model loading across families, LoRA, exact resume, the Trainer path, bad input."
import math
import warnings
from dataclasses import asdict

import pytest
import torch

from open_chatgpt.data import SFTCollator, get_tokenizer, sample_sft
from open_chatgpt.sft import (LoraSettings, SFTConfig, check_causal_lm, evaluate_sft, filter_sft, generate, load_policy,
                              n_params, rouge, save_policy, sft_loss, tiny_policy, train_sft, train_sft_trainer)

TOK = get_tokenizer()
TRAIN, TEST = sample_sft("train"), sample_sft("test")
TINY = dict(n_layer=1, n_embd=32, n_head=2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "Test runners share few cores: one torch thread each avoids OpenMP thrashing (restored afterwards)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fitting(n, max_length=64, ds=TRAIN):
    "The first demonstrations of `ds` that fit in `max_length` (no drop warnings in the tests)."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return filter_sft(ds.select(range(3 * n)), TOK, max_length).select(range(n))


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# ---- models


def test_tiny_policy_contract():
    m = tiny_policy(TOK)
    assert type(m).__name__ == "GPT2LMHeadModel"
    assert m.config.vocab_size == len(TOK) and m.config.n_positions == 512
    assert (m.config.eos_token_id, m.config.pad_token_id) == (TOK.eos_token_id, TOK.pad_token_id)
    assert 1e6 < n_params(m) < 1e7  # "a few million"
    assert max_diff(m, tiny_policy(TOK)) == 0 and max_diff(m, tiny_policy(TOK, seed=1)) > 0
    state = torch.get_rng_state(); tiny_policy(TOK, **TINY, seed=5)
    assert torch.equal(state, torch.get_rng_state())  # building a model leaves the caller's RNG alone


@pytest.mark.parametrize("family", ["gpt2", "opt", "gpt_neox", "bloom", "gptj", "llama"])
def test_load_policy_families(family, tmp_path):
    from open_chatgpt.models import tiny_model
    src = tiny_model(family, TOK, d=32, n_layer=1, n_head=2)
    src.config.pad_token_id = None  # like GPT-2 / OPT checkpoints: load_policy must fill it from the tokenizer
    save_policy(src, TOK, tmp_path)
    m = load_policy(str(tmp_path), tokenizer=get_tokenizer(str(tmp_path)))
    assert m.config.pad_token_id == TOK.pad_token_id
    assert n_params(m) < 1e6
    b = SFTCollator(TOK, 32)([TRAIN[0]])
    with torch.no_grad():
        assert torch.allclose(m(**b).logits, src.eval()(**b).logits, atol=1e-5)
    out = generate(m, TOK, [TRAIN[0]["prompt"], "\n\nHuman: hi\n\nAssistant:"], max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)


def test_load_policy_rejects_non_causal(tmp_path):
    from transformers import BertConfig, BertForMaskedLM, BertModel, T5Config, T5ForConditionalGeneration
    bert = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertForMaskedLM(bert).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="bidirectional encoder.*decoder-only causal LM"):
        load_policy(str(tmp_path / "bert"))
    T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)
                               ).save_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match="encoder-decoder"):
        load_policy(str(tmp_path / "t5"))
    with pytest.raises(ValueError, match="cannot load a model config"):
        load_policy(str(tmp_path / "nothing-here"))
    with pytest.raises(ValueError, match="no causal-LM head"):
        check_causal_lm(BertModel(bert))
    with pytest.raises(ValueError, match="no causal-LM head"):
        train_sft(tiny_policy(TOK, **TINY).transformer, TOK, TRAIN, None, SFTConfig(max_steps=1))


def test_lora_trains_only_adapters(tmp_path):
    save_policy(tiny_policy(TOK, n_layer=2, n_embd=64, n_head=2), TOK, tmp_path / "base")
    m = load_policy(str(tmp_path / "base"), tokenizer=TOK, lora=dict(r=4, lora_alpha=8))
    assert 0 < n_params(m, trainable=True) < 0.05 * n_params(m)
    frozen = {k: v.clone() for k, v in m.named_parameters() if not v.requires_grad}
    lora0 = {k: v.clone() for k, v in m.named_parameters() if v.requires_grad}
    train_sft(m, TOK, fitting(16), None, SFTConfig(max_steps=3, batch_size=8, max_length=64, learning_rate=1e-2,
                                                   warmup=0), progress=False)
    assert all(torch.equal(v, dict(m.named_parameters())[k]) for k, v in frozen.items())  # base frozen
    assert any(not torch.equal(v, dict(m.named_parameters())[k]) for k, v in lora0.items())  # adapters moved
    with pytest.raises(ValueError, match="cannot add LoRA"):
        load_policy(str(tmp_path / "base"), lora=LoraSettings(target_modules=["no_such_module"]))


# ---- loss, evaluation, generation, rouge


def test_sft_loss_matches_hf_and_prompt_is_context():
    m = tiny_policy(TOK, **TINY)
    b = SFTCollator(TOK, 64)([TRAIN[i] for i in range(4)])
    with torch.no_grad():
        out = m(**b)
        assert torch.allclose(sft_loss(out.logits, b["labels"]), out.loss, atol=1e-5)
        other = b["input_ids"].clone(); prompt = b["labels"] == -100
        other[prompt & (b["attention_mask"] == 1)] = 7  # a different prompt changes the loss (it is context)...
        assert not torch.allclose(sft_loss(m(input_ids=other, attention_mask=b["attention_mask"]).logits, b["labels"]), out.loss)
    ev = evaluate_sft(m, TOK, TEST.select(range(8)), max_length=64)
    assert abs(ev["loss"] - math.log(len(TOK))) < 0.3 and math.isclose(ev["perplexity"], math.exp(ev["loss"]))


def test_generate_batched_equals_one_by_one():
    m = tiny_policy(TOK, **TINY, seed=3)
    prompts = [TEST[i]["prompt"] for i in range(5)]
    batched = generate(m, TOK, prompts, max_new_tokens=6, batch_size=5)
    single = [generate(m, TOK, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single  # left padding does not change what a row generates
    assert TOK.eos_token not in "".join(batched)
    torch.manual_seed(0)
    s = generate(m, TOK, prompts[:2], max_new_tokens=5, do_sample=True, temperature=0.7, top_k=20, top_p=0.9)
    assert len(s) == 2
    with pytest.raises(ValueError, match="context length"):
        generate(m, TOK, prompts, max_new_tokens=600)


def test_rouge_offline():
    r = rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert r == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0}
    assert rouge(["completely different"], ["the cat sat"])["rouge1"] == 0.0
    with pytest.raises(ValueError):
        rouge([], [])


# ---- training


def test_resume_gives_the_same_weights(tmp_path):
    "An interrupted run resumed from its checkpoint ends with the weights of an uninterrupted one."
    ds, ev = fitting(24), fitting(8, ds=TEST)
    c = SFTConfig(max_steps=8, batch_size=4, grad_accum=2, max_length=64, learning_rate=1e-2, warmup=2, eval_every=4,
                  log_every=2, save_every=3, output_dir=str(tmp_path))  # 3 steps per epoch: the cut is mid-epoch
    a = tiny_policy(TOK, **TINY)
    ha = train_sft(a, TOK, ds, ev, SFTConfig(**{**asdict(c), "save_every": 0, "output_dir": None}), progress=False)
    b = tiny_policy(TOK, **TINY)
    train_sft(b, TOK, ds, ev, c, stop_after=4, progress=False)  # checkpoints at 3 and 4 (where it stopped)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert max_diff(a, b) > 1e-3  # b really stopped early
    for ckpt in ("checkpoint-3", "checkpoint-4"):
        fresh = tiny_policy(TOK, **TINY, seed=7)
        hb = train_sft(fresh, TOK, ds, ev, c, resume_from=str(tmp_path / ckpt), progress=False)
        assert max_diff(a, fresh) < 1e-6, ckpt
        assert hb["step"] == ha["step"]
        for k in ("train_loss", "eval_loss"):
            assert all((x is None and y is None) or abs(x - y) < 1e-6 for x, y in zip(ha[k], hb[k])), k
    # the final model is in output_dir, loadable by load_policy
    m = load_policy(str(tmp_path), tokenizer=TOK)
    assert max_diff(m, a) < 1e-6
    with pytest.raises(ValueError, match="no checkpoint"):
        train_sft(tiny_policy(TOK, **TINY), TOK, ds, None, c, resume_from=str(tmp_path / "checkpoint-4" / "x"))


def no_dropout_run(ds, **kw):
    m = tiny_policy(TOK, **TINY)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout): mod.p = 0.0
    train_sft(m, TOK, ds, None, SFTConfig(max_steps=2, max_length=64, warmup=0, learning_rate=1e-2, **kw), progress=False)
    return m


def test_grad_accum_matches_big_batch():
    "Dividing by the step's token count makes 2 x 4 accumulated equal to one batch of 8 (no dropout)."
    ds = fitting(16)
    assert max_diff(no_dropout_run(ds, batch_size=8), no_dropout_run(ds, batch_size=4, grad_accum=2)) < 1e-5


def test_gradient_checkpointing_same_result():
    ds = fitting(8)
    m = no_dropout_run(ds, batch_size=4, gradient_checkpointing=True)
    assert max_diff(no_dropout_run(ds, batch_size=4), m) < 1e-5
    assert not m.is_gradient_checkpointing and m.config.use_cache  # switched off again for generation


def test_training_lowers_held_out_loss():
    ds, ev = fitting(64), fitting(16, ds=TEST)
    m = tiny_policy(TOK, n_layer=1, n_embd=64, n_head=2)
    h = train_sft(m, TOK, ds, ev, SFTConfig(max_steps=20, batch_size=8, max_length=64, learning_rate=1e-2, eval_every=10,
                                           log_every=5), progress=False)
    assert h["step"] == [0, 5, 10, 15, 20] and len({len(v) for v in h.values()}) == 1
    assert h["eval_loss"][-1] < h["eval_loss"][0] - 1.0
    assert h["eval_loss"][0] == pytest.approx(math.log(len(TOK)), abs=0.3)


def test_trainer_path_and_its_resume(tmp_path):
    ds, ev = fitting(32), fitting(8, ds=TEST)
    c = SFTConfig(max_steps=4, batch_size=8, max_length=64, learning_rate=1e-2, eval_every=4, log_every=2, save_every=2,
                  output_dir=str(tmp_path))
    a = tiny_policy(TOK, **TINY)
    tr = train_sft_trainer(a, TOK, ds, ev, c)
    ev_loss = [r["eval_loss"] for r in tr.state.log_history if "eval_loss" in r][-1]
    # one eval batch: the Trainer averages per-batch means, evaluate_sft weighs every token the same
    assert ev_loss == pytest.approx(evaluate_sft(a, TOK, ev, max_length=64, batch_size=8)["loss"], abs=1e-4)
    assert (tmp_path / "checkpoint-2").is_dir() and (tmp_path / "checkpoint-4").is_dir()
    b = tiny_policy(TOK, **TINY, seed=9)
    train_sft_trainer(b, TOK, ds, ev, c, resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert max_diff(a, b) < 1e-5
    with pytest.raises(ValueError, match="DeepSpeed"):
        train_sft_trainer(tiny_policy(TOK, **TINY), TOK, ds, ev, SFTConfig(max_steps=1, deepspeed="no-such-ds.json"))
    with pytest.raises(ValueError, match="train_sft_trainer"):
        train_sft(tiny_policy(TOK, **TINY), TOK, ds, ev, SFTConfig(max_steps=1, deepspeed="ds.json"))


# ---- bad input


def test_bad_input_errors():
    m = tiny_policy(TOK, **TINY)
    with pytest.raises(ValueError, match="train_ds is empty"):
        train_sft(m, TOK, TRAIN.select([]), None, SFTConfig(max_steps=1))
    with pytest.raises(ValueError, match="truncated away"):
        train_sft(m, TOK, TRAIN.select(range(50)), None, SFTConfig(max_steps=1, max_length=2))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['prompt'\]"):
        train_sft(m, TOK, TRAIN.rename_column("prompt", "question"), None, SFTConfig(max_steps=1))
    with pytest.raises(ValueError, match="eval data set is empty"):
        evaluate_sft(m, TOK, TEST.select([]))
    with pytest.raises(ValueError, match="bf16=True needs"):
        train_sft(m, TOK, fitting(4), None, SFTConfig(max_steps=1, bf16=True, device="cpu"))
    for bad in (dict(batch_size=0), dict(lr_schedule="exp"), dict(save_every=5), dict(max_steps=0)):
        with pytest.raises(ValueError):
            SFTConfig(**bad)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        kept = filter_sft(TRAIN.select(range(40)), TOK, 64)
    assert 0 < len(kept) < 40 and "dropped" in str(w[0].message)


def test_deepspeed_passthrough(monkeypatch):
    "The Trainer path runs a DeepSpeed ZeRO-2 config (single CPU process here; `deepspeed`/`accelerate launch` on GPUs)."
    pytest.importorskip("deepspeed")
    from open_chatgpt.sft import DEEPSPEED_ZERO2
    for k, v in dict(MASTER_ADDR="localhost", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0").items():
        monkeypatch.setenv(k, v)
    m = tiny_policy(TOK, **TINY); w0 = m.lm_head.weight.detach().clone()
    # the process group this starts stays up: DeepSpeed caches its groups, so a later ZeRO test in this process
    # (tests/test_families.py) must reuse it; destroying it left those caches stale (test_deepspeed[gpt2] failed)
    tr = train_sft_trainer(m, TOK, fitting(16), None, SFTConfig(max_steps=2, batch_size=4, max_length=64,
                                                                deepspeed=DEEPSPEED_ZERO2, device="cpu"))
    assert tr.is_deepspeed_enabled
    assert math.isfinite(tr.state.log_history[-1]["train_loss"])
    assert not torch.equal(w0, m.lm_head.weight.detach())


def test_load_policy_dtype_and_new_tokens(tmp_path):
    save_policy(tiny_policy(TOK, **TINY), TOK, tmp_path)
    assert load_policy(str(tmp_path), dtype=torch.bfloat16).lm_head.weight.dtype == torch.bfloat16
    tok = get_tokenizer(); tok.add_special_tokens({"additional_special_tokens": ["<|user|>"]})
    m = load_policy(str(tmp_path), tokenizer=tok)
    assert m.get_input_embeddings().weight.shape[0] == len(tok) == len(TOK) + 1  # resized for the new token


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_runs_steps_and_evaluation_in_bf16_only_where_native(monkeypatch, native):
    "cpu_bf16=True: every training and evaluation forward in bf16 where the CPU has it natively, float32 elsewhere;"
    " the weights still train (fp32 master weights) and the default never autocasts."
    import open_chatgpt.sft as sft_mod
    monkeypatch.setattr(sft_mod, "native_bf16", lambda device: native)
    ds, ev = fitting(8), fitting(4, ds=TEST)
    for cpu_bf16 in (False, True):
        m, seen = tiny_policy(TOK, **TINY), []
        m.register_forward_hook(lambda mod, args, out: seen.append(out.logits.dtype))
        before = [p.detach().clone() for p in m.parameters()]
        train_sft(m, TOK, ds, ev, SFTConfig(max_steps=2, batch_size=4, max_length=64, eval_every=0, cpu_bf16=cpu_bf16),
                  progress=False)
        want = torch.bfloat16 if cpu_bf16 and native else torch.float32
        assert seen and set(seen) == {want}, (cpu_bf16, native, set(seen))    # steps and both evaluations
        assert all(p.dtype == torch.float32 for p in m.parameters())
        assert all(not torch.equal(a, p) for a, p in zip(before, m.parameters()) if p.requires_grad)

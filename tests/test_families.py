"""Every model family the course promises, through all three stages, on tiny random models built from config.

For each of GPT-2, GPT-J, GPT-NeoX, OPT, BLOOM and Llama: one SFT step, one reward-model step and one full PPO step
(generate, score, update) with left-padded batches of prompts of different lengths. Each checks finite losses, that
padding changes neither the reward nor the log-probs of the real tokens, and that generation stops at EOS.
The results feed the README's family table (scripts/family_table.py); the last test fails if that table is stale.
"""
import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

from open_chatgpt.data import PairwiseCollator, SFTCollator, get_tokenizer, hh_prompt, sample_pairs
from open_chatgpt.models import FAMILIES, model_inputs, tiny_model
from open_chatgpt.ppo import PPOConfig, forward_logprobs_values, make_ppo_models, reward_model_fn, rollout, score, ppo_step
from open_chatgpt.ppo_core import AdaptiveKLController
from open_chatgpt.reward import RewardModel, pairwise_loss

RESULTS: dict = {}
PROMPTS = [hh_prompt("Hi"), hh_prompt("How do I bake bread at home without yeast?"),
           hh_prompt("Tell me a joke about cats and dogs and birds, please.")]


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


@pytest.fixture(scope="module")
def pairs():
    return [sample_pairs("train")[i] for i in range(4)]


def record(family, stage, status, model=None):
    r = RESULTS.setdefault(family, {})
    r[stage] = status
    n = sum(p.numel() for p in model.parameters()) if model is not None else 0
    if n: r["params"], r["class"] = n, type(model).__name__  # (a ZeRO-3 model's parameters are empty placeholders)


@pytest.fixture
def track(request):
    "Record each stage's outcome for the table, whatever the test's result (tests/conftest.py keeps the report)."
    fam, stage = request.node.callspec.params["family"], request.node.originalname.replace("test_", "")
    box = {}
    yield box
    rep = getattr(request.node, "rep_call", None)
    status = "failed" if rep is None else "passed" if rep.passed else "skipped" if rep.skipped else "failed"
    record(fam, stage, status, box.get("model"))


@pytest.mark.parametrize("family", FAMILIES)
def test_sft(family, tok, pairs, track):
    model = tiny_model(family, tok); track["model"] = model
    batch = SFTCollator(tok, max_length=64)([dict(prompt=p["prompt"], response=p["chosen"]) for p in pairs])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        out = model(**model_inputs(model, batch["input_ids"], batch["attention_mask"]), labels=batch["labels"])
        assert torch.isfinite(out.loss), f"{family}: SFT loss {out.loss}"
        out.loss.backward(); opt.step(); opt.zero_grad(); losses.append(out.loss.item())
    assert losses[1] < losses[0], f"{family}: one SFT step on the same batch did not lower the loss: {losses}"


@pytest.mark.parametrize("family", FAMILIES)
def test_reward(family, tok, pairs, track):
    rm = RewardModel(tiny_model(family, tok), tok); track["model"] = rm.backbone
    right = PairwiseCollator(tok, max_length=64, padding_side="right")(pairs)
    left = PairwiseCollator(tok, max_length=64, padding_side="left")(pairs)
    rm.eval()
    with torch.no_grad():
        r_right = rm(right["input_ids"], right["attention_mask"])
        r_left = rm(left["input_ids"], left["attention_mask"])
        alone = torch.stack([rm(ids[m.bool()][None], torch.ones(1, int(m.sum()), dtype=torch.long))[0]
                             for ids, m in zip(right["input_ids"], right["attention_mask"])])
    torch.testing.assert_close(r_right, alone, atol=1e-4, rtol=1e-4)  # padding never changes a reward
    torch.testing.assert_close(r_left, alone, atol=1e-4, rtol=1e-4)
    rm.train()
    r = rm(right["input_ids"], right["attention_mask"])
    loss = pairwise_loss(r[:len(pairs)], r[len(pairs):])
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in rm.parameters() if p.grad is not None)


@pytest.mark.parametrize("family", FAMILIES)
def test_ppo(family, tok, track):
    torch.manual_seed(0)
    sft = tiny_model(family, tok); track["model"] = sft
    def eos_bias(module, inputs, out):  # EOS ~20% per token (vocab 4096): rows end at different steps
        out.logits[..., tok.eos_token_id] += 7.0                         # part of the policy: sampling and log-probs see it
    sft.register_forward_hook(eos_bias)
    rm = RewardModel(tiny_model(family, tok, seed=1), tok)
    model, ref = make_ppo_models(sft, tok, rm)
    cfg = PPOConfig(batch_size=3, mini_batch_size=3, ppo_epochs=1, max_new_tokens=24, max_prompt_length=32,
                    learning_rate=1e-4, total_steps=1)
    batch = rollout(model, tok, PROMPTS, cfg)
    # left padding: prompts of different lengths all end at the last query column
    assert batch["query_mask"][:, -1].tolist() == [1, 1, 1] and batch["query_mask"][0, 0].item() == 0
    # generation stops at EOS: the mask ends at each row's first EOS, nothing after it is kept
    for resp, m, has_eos in zip(batch["response"], batch["response_mask"], batch["has_eos"]):
        n = int(m.sum())
        if has_eos:
            assert resp[n - 1].item() == tok.eos_token_id and (resp[:n - 1] != tok.eos_token_id).all()
            assert (resp[n:] == tok.pad_token_id).all()
    assert batch["has_eos"].any(), f"{family}: no response ended with EOS"
    # padding never changes the log-probs of the real tokens: batch vs one sequence at a time
    ids = torch.cat([batch["query"], batch["response"]], 1); am = torch.cat([batch["query_mask"], batch["response_mask"]], 1)
    P = batch["query"].shape[1]
    with torch.no_grad():
        lp, _, _ = forward_logprobs_values(ref, ids, am, P)
        for i in range(len(PROMPTS)):
            q = batch["query"][i][batch["query_mask"][i].bool()]; n = int(batch["response_mask"][i].sum())
            one = torch.cat([q, batch["response"][i][:n]])[None]
            lp1, _, _ = forward_logprobs_values(ref, one, torch.ones_like(one), len(q))
            torch.testing.assert_close(lp[i, :n], lp1[0], atol=1e-4, rtol=1e-4)
    raw, scores = score(reward_model_fn(rm, tok), batch, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    stats = ppo_step(model, ref, opt, batch, scores, AdaptiveKLController(0.2, 6.0, 10000), cfg)
    for k in ("losses/policy_loss", "losses/value_loss", "objective/kl"):
        assert k in stats and torch.isfinite(torch.tensor(float(stats[k]))), f"{family}: {k} = {stats.get(k)}"


HAVE_DS = importlib.util.find_spec("deepspeed") is not None


@pytest.mark.skipif(not HAVE_DS, reason="deepspeed is not installed: DS_BUILD_OPS=0 pip install deepspeed")
@pytest.mark.parametrize("family", FAMILIES)
def test_deepspeed(family, tok, pairs, track):
    "ZeRO-3 on one CPU process (gloo): two SFT steps through deepspeed.initialize, then generation with gathered weights."
    import deepspeed
    from open_chatgpt.distributed import ds_config, is_partitioned, resolve_config, setup_distributed, unwrap_for_generation
    setup_distributed(cpu=True, port=29400 + os.getpid() % 500)
    torch.manual_seed(0)
    model = tiny_model(family, tok); track["model"] = model
    cfg = resolve_config(ds_config(stage=3, precision="fp32"), micro_batch_size=len(pairs))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    assert is_partitioned(engine.module), f"{family}: ZeRO-3 did not partition the parameters"
    batch = SFTCollator(tok, max_length=64)([dict(prompt=p["prompt"], response=p["chosen"]) for p in pairs])
    losses = []
    for _ in range(2):
        out = engine(**model_inputs(engine.module, batch["input_ids"], batch["attention_mask"]), labels=batch["labels"])
        assert torch.isfinite(out.loss), f"{family}: ZeRO-3 SFT loss {out.loss}"
        engine.backward(out.loss); engine.step(); losses.append(out.loss.item())
    assert losses[1] < losses[0], f"{family}: a ZeRO-3 step did not lower the loss: {losses}"
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True, padding_side="left")
    with unwrap_for_generation(engine) as m:
        gen = m.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[0] == 2 and gen.shape[1] > enc["input_ids"].shape[1], f"{family}: no tokens generated"


def test_family_table_is_current():
    "The README's family table is rendered from these results (scripts/family_table.py), never edited by hand."
    import importlib.util
    spec = importlib.util.spec_from_file_location("family_table", Path(__file__).parents[1] / "scripts" / "family_table.py")
    ft = importlib.util.module_from_spec(spec); spec.loader.exec_module(ft)
    if os.environ.get("OPEN_CHATGPT_FAMILY_RESULTS"):
        Path(os.environ["OPEN_CHATGPT_FAMILY_RESULTS"]).write_text(json.dumps(RESULTS, indent=1))
        pytest.skip("writing results for scripts/family_table.py")
    assert set(RESULTS) == set(FAMILIES), "run the whole file: the table needs every family"
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert ft.table_in(readme) == ft.render(RESULTS), "README family table is stale: run `python scripts/family_table.py`"

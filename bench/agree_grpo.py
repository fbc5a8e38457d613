#!/usr/bin/env python
"""open_chatgpt.grpo vs Hugging Face TRL's GRPOTrainer (and RLOOTrainer's advantages) on the same batch.

TRL computes everything through its own code paths, on a tiny GPT-2 saved to disk and loaded by the trainer:
  * group advantages: `GRPOTrainer._generate_and_score_completions` (its `_generate` replaced by a function that
    returns our fixed prompt/completion ids, the reward function returning our fixed rewards), for scale_rewards
    "group", "batch" and "none"; RLOO's leave-one-out advantages from `RLOOTrainer._generate_and_score_completions`;
  * the reference log-probs that the same call computes (a perturbed reference, so the KL term is not zero);
  * the loss: `GRPOTrainer._compute_loss` for loss_type "grpo", "bnpo" and "dr_grpo", with old log-probs moved away
    from the current ones so that the clip is active in both directions, and its gradient on every parameter;
    DeepSeekMath's KL term (use_bias_correction_kl=False), and TRL 1.x's default (the KL term times the ratio);
  * the per-token loss: `_compute_loss` with loss_type "bnpo" and a one-hot `tool_mask` (TRL's loss mask is
    completion_mask * tool_mask), which returns exactly one token's loss.
Ours: `grpo_advantages`, `rloo_advantages`, `forward_logprobs_values` and `grpo_loss` on the same tensors.

Run it in the environment with a recent TRL (TRL is not a project dependency):
    bash bench/setup_trl_new.sh && PYTHONPATH=. bench/.venv-trl-new/bin/python bench/agree_grpo.py
Prints a markdown table; exits 1 when a difference exceeds --tol (default 1e-5).
"""
import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
G, N_PROMPTS, PROMPT_LEN, MAX_LEN = 4, 3, 5, 6
BETA, EPSILON = 0.04, 0.2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tol", type=float, default=1e-5, help="largest absolute difference that counts as agreement")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_batch(tok, seed):
    "Prompt ids (all PROMPT_LEN long, so no left padding), completions of varied lengths, rewards with one all-equal group."
    import torch
    g = torch.Generator().manual_seed(seed)
    special = {tok.eos_token_id, tok.pad_token_id}
    rand_ids = lambda n: [i for i in torch.randint(10, len(tok), (n,), generator=g).tolist() if i not in special][:n]
    prompts = [rand_ids(PROMPT_LEN) for _ in range(N_PROMPTS)]
    lengths = [3, 6, 1, 5, 6, 2, 4, 6, 2, 3, 6, 5][:N_PROMPTS * G]
    completions = [rand_ids(n) for n in lengths]
    completions[1][-1] = tok.eos_token_id                                  # some end with EOS, as sampled ones do
    completions[6][-1] = tok.eos_token_id
    prompt_ids = [prompts[i // G] for i in range(N_PROMPTS * G)]
    rewards = [0.3, 1.2, -0.5, 0.9, 2.0, -1.0, 0.25, 0.1, 0.7, 0.7, 0.7, 0.7][:N_PROMPTS * G]   # group 3: all equal
    return prompt_ids, completions, rewards


def padded(prompt_ids, completions, pad_id):
    "Our tensors: (B, P) prompts, (B, R) right-padded completions and their mask."
    import torch
    R = max(len(c) for c in completions)
    query = torch.tensor(prompt_ids)
    response = torch.tensor([c + [pad_id] * (R - len(c)) for c in completions])
    mask = torch.tensor([[1] * len(c) + [0] * (R - len(c)) for c in completions])
    return query, response, mask


def max_diff(a, b, mask=None):
    import torch
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if mask is not None: a, b = a[mask.bool()], b[mask.bool()]
    return float((a - b).abs().max()) if a.numel() else 0.0


def main(argv=None):
    args = parse_args(argv)
    t_start = time.time()
    import torch
    warnings.filterwarnings("ignore")
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig as TRLGRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from open_chatgpt.data import get_tokenizer
    from open_chatgpt.grpo import grpo_advantages, grpo_loss, rloo_advantages
    from open_chatgpt.models import tiny_model
    from open_chatgpt.ppo import disable_dropout, forward_logprobs_values

    torch.manual_seed(args.seed)
    transformers.logging.set_verbosity_error()
    tok = get_tokenizer()
    model_dir = tempfile.mkdtemp(prefix="agree-grpo-")
    with contextlib.redirect_stderr(io.StringIO()):
        tiny_model("gpt2", tok, d=32, n_layer=2, n_head=2, seed=args.seed).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    prompt_ids, completions, rewards = make_batch(tok, args.seed)
    B = len(completions)
    query, response, mask = padded(prompt_ids, completions, tok.pad_token_id)
    ids, am, P = torch.cat([query, response], 1), torch.cat([torch.ones_like(query), mask], 1), query.shape[1]
    texts = tok.batch_decode(response, skip_special_tokens=True)
    reward_fn = lambda completions, **kw: list(rewards)
    reward_fn.__name__ = "fixed_rewards"
    dataset = Dataset.from_dict({"prompt": ["x"] * B})
    common = dict(output_dir=tempfile.mkdtemp(prefix="agree-grpo-out-"), per_device_train_batch_size=B, num_generations=G,
                  max_completion_length=MAX_LEN, beta=BETA, epsilon=EPSILON, use_cpu=True, report_to="none",
                  disable_dropout=True, temperature=1.0, logging_steps=1, bf16=False)   # fp32: TRL defaults to bf16 autocast

    with contextlib.redirect_stderr(io.StringIO()):
        tr = GRPOTrainer(model=model_dir, reward_funcs=reward_fn, train_dataset=dataset, processing_class=tok,
                         args=TRLGRPOConfig(loss_type="grpo", scale_rewards="group", use_bias_correction_kl=False, **common))
    tr.current_gradient_accumulation_steps = 1
    tr._generate = lambda prompts: ([list(p) for p in prompt_ids], [list(c) for c in completions], None, texts, None, {}, None, None)
    with torch.no_grad():                                  # a reference that differs from the policy: KL term not zero
        gen = torch.Generator().manual_seed(args.seed + 1)
        for p in tr.ref_model.parameters(): p.add_(0.05 * torch.randn(p.shape, generator=gen))

    # ---- our two models: the same weights, loaded our way ----
    policy = disable_dropout(AutoModelForCausalLM.from_pretrained(model_dir)).eval()
    ref = disable_dropout(AutoModelForCausalLM.from_pretrained(model_dir)).eval().requires_grad_(False)
    ref.load_state_dict(tr.ref_model.state_dict())
    rows, failures = [], []

    def row(name, diff, note=""):
        rows.append((name, diff, note))
        if not diff <= args.tol: failures.append(name)

    # ---- advantages and reference log-probs through TRL's _generate_and_score_completions ----
    tr.model.train()
    inputs = [{"prompt": "x"} for _ in range(B)]
    r = torch.tensor(rewards)
    for sr in ("group", "batch", "none"):
        tr.scale_rewards = sr
        out = tr._generate_and_score_completions(inputs)
        row(f"advantages, scale_rewards={sr!r}", max_diff(out["advantages"], grpo_advantages(r, G, sr)))
    test = dict(out)
    test["completion_ids"], test["completion_mask"] = test["completion_ids"][:, :response.shape[1]], test["completion_mask"][:, :response.shape[1]]
    assert torch.equal(test["completion_ids"], response) and torch.equal(test["completion_mask"], mask), "TRL padded differently"
    with torch.no_grad():
        our_ref_lp = forward_logprobs_values(ref, ids, am, P)[0]
        trl_lp = tr._get_per_token_logps_and_entropies(tr.model, ids, am, response.shape[1])[0]
    row("reference log-probs (TRL's ref_per_token_logps)", max_diff(test["ref_per_token_logps"], our_ref_lp, mask))
    our_lp = forward_logprobs_values(policy, ids, am, P)[0]
    row("policy log-probs", max_diff(trl_lp, our_lp, mask))
    old = (trl_lp + 0.3 * torch.randn(trl_lp.shape, generator=torch.Generator().manual_seed(args.seed + 2))).detach()
    test["old_per_token_logps"] = old

    # ---- the loss and its gradient, each loss_type (advantages of scale_rewards="group") ----
    tr.scale_rewards = "group"
    test["advantages"] = tr._generate_and_score_completions(inputs)["advantages"]
    adv = grpo_advantages(r, G, "group")
    for lt in ("grpo", "bnpo", "dr_grpo"):
        tr.loss_type = lt
        tr.model.zero_grad(set_to_none=True); policy.zero_grad(set_to_none=True)
        trl_loss = tr._compute_loss(tr.model, test)
        trl_loss.backward()
        lp = forward_logprobs_values(policy, ids, am, P)[0]
        loss, per_token, stats = grpo_loss(lp, old, adv, mask, our_ref_lp, BETA, EPSILON, lt, MAX_LEN)
        loss.backward()
        row(f"loss, loss_type={lt!r}", abs(float(trl_loss) - float(loss)), f"TRL {float(trl_loss):+.6f}")
        grads = {n: p.grad for n, p in tr.model.named_parameters()}
        row(f"gradient of the loss, loss_type={lt!r} (all parameters)",
            max(max_diff(grads[n], p.grad) for n, p in policy.named_parameters()))
    clipfrac = float(stats["policy/clipfrac"])

    # ---- TRL 1.x's default KL weighting: the k3 term times the ratio (use_bias_correction_kl=True) ----
    tr.loss_type, tr.args.use_bias_correction_kl = "grpo", True
    tr.model.zero_grad(set_to_none=True); policy.zero_grad(set_to_none=True)
    trl_loss = tr._compute_loss(tr.model, test)
    trl_loss.backward()
    lp = forward_logprobs_values(policy, ids, am, P)[0]
    loss = grpo_loss(lp, old, adv, mask, our_ref_lp, BETA, EPSILON, "grpo", MAX_LEN, use_bias_correction_kl=True)[0]
    loss.backward()
    row("loss, loss_type='grpo', use_bias_correction_kl=True", abs(float(trl_loss) - float(loss)), f"TRL {float(trl_loss):+.6f}")
    grads = {n: p.grad for n, p in tr.model.named_parameters()}
    row("gradient of that loss (all parameters)", max(max_diff(grads[n], p.grad) for n, p in policy.named_parameters()))
    tr.args.use_bias_correction_kl = False

    # ---- per-token loss: loss_type="bnpo" with a one-hot tool_mask returns one token's loss ----
    tr.loss_type = "bnpo"
    trl_per_token = torch.zeros_like(per_token)
    with torch.no_grad():
        for i, t in mask.nonzero().tolist():
            one_hot = torch.zeros_like(mask); one_hot[i, t] = 1
            trl_per_token[i, t] = tr._compute_loss(tr.model, {**test, "tool_mask": one_hot})
    row("per-token loss (every response token)", max_diff(trl_per_token, per_token, mask),
        f"{int(mask.sum())} tokens, clipfrac {clipfrac:.2f}")

    # ---- RLOO's advantages through RLOOTrainer._generate_and_score_completions ----
    with contextlib.redirect_stderr(io.StringIO()):
        rl = RLOOTrainer(model=model_dir, reward_funcs=reward_fn, train_dataset=dataset, processing_class=tok,
                         args=RLOOConfig(**{**common, "beta": 0.0}, normalize_advantages=False))
    rl._generate = lambda prompts: ([list(p) for p in prompt_ids], [list(c) for c in completions], texts)
    rl.model.train()
    row("RLOO advantages (RLOOTrainer, beta=0)", max_diff(rl._generate_and_score_completions(inputs)["advantages"],
                                                          rloo_advantages(r, G)))

    print(f"GRPO agreement with TRL {trl.__version__} (transformers {transformers.__version__}, torch {torch.__version__}); "
          f"{N_PROMPTS} prompts x {G} completions, beta={BETA}, epsilon={EPSILON}, max_completion_length={MAX_LEN}; "
          f"{time.time() - t_start:.1f} s\n")
    print("| quantity | max abs difference | note |\n|---|---|---|")
    for name, diff, note in rows: print(f"| {name} | {diff:.2e} | {note} |")
    if failures:
        print(f"\nMISMATCH (> {args.tol}): " + "; ".join(failures))
        return 1
    print(f"\nall {len(rows)} quantities agree within {args.tol}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Our DPO (open_chatgpt.dpo, chapter 8) against TRL 0.11.4's DPOTrainer on the same tokenised batch.

Both sides get identical weights (a tiny GPT-2 policy, perturbed away from its frozen reference so that the loss is
not log 2) and the very same batch (our DPOCollator's rows, handed to TRL as chosen_*/rejected_* tensors). We compare
the per-sequence log-probs (TRL's concatenated_forward / get_batch_logps), the loss and TRL's statistics
(get_batch_loss_metrics: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/*), and the
gradient of the loss with respect to every policy parameter, for loss_type="sigmoid", cDPO (label_smoothing=0.1) and
"ipo", in float32 and float64. Prints a markdown table of max |ours - TRL| and exits 1 if any exceeds its tolerance
(float32: 1e-5, relative for log-probs; float64: 1e-9).

Run it in the benchmark's environment (TRL is not a project dependency):
    bash bench/setup.sh && PYTHONPATH=. bench/.venv/bin/python bench/agree_dpo.py
"""
import argparse
import copy
import sys
import tempfile
import warnings


def trl_batch(batch: dict) -> dict:
    "Our DPOCollator batch (2B rows, chosen first) as the chosen_*/rejected_* tensors TRL's DPOTrainer consumes."
    B = batch["input_ids"].shape[0] // 2
    out = {}
    for side, rows in (("chosen", slice(0, B)), ("rejected", slice(B, 2 * B))):
        out[f"{side}_input_ids"] = batch["input_ids"][rows]
        out[f"{side}_attention_mask"] = batch["attention_mask"][rows]
        out[f"{side}_labels"] = batch["labels"][rows]
    return out


def perturb(model, rel: float, seed: int):
    "Add seeded Gaussian noise (rel x each tensor's std) to every trainable weight: the policy leaves its reference."
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                scale = (p.std() if p.numel() > 1 else p.abs().mean()).clamp(min=1e-3)
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * rel * scale)


def compare(variant: dict, dtype, records, a) -> dict:
    "One variant (loss_type, beta, label_smoothing) in one dtype: max |ours - TRL| of each quantity."
    import torch
    import trl
    from datasets import Dataset
    from open_chatgpt.data import get_tokenizer
    from open_chatgpt.dpo import DPOCollator, concatenated_forward, get_batch_loss_metrics, make_dpo_models
    from open_chatgpt.sft import tiny_policy
    tok = get_tokenizer()
    policy, ref = make_dpo_models(tiny_policy(tok, n_layer=2, n_embd=64, n_head=2, seed=0), tok)
    perturb(policy, a.perturb, seed=1)
    policy, ref = policy.to(dtype), ref.to(dtype)
    t_policy, t_ref = copy.deepcopy(policy), copy.deepcopy(ref)
    batch = DPOCollator(tok, a.max_length)(records)
    tb = trl_batch(batch)
    args = trl.DPOConfig(output_dir=tempfile.mkdtemp(prefix="agree_dpo_"), report_to=[], use_cpu=True,
                         beta=variant["beta"], loss_type=variant["loss_type"], label_smoothing=variant["label_smoothing"],
                         max_length=a.max_length, max_prompt_length=a.max_length // 2, remove_unused_columns=False,
                         per_device_train_batch_size=len(records), disable_tqdm=True)
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.DPOTrainer(model=t_policy, ref_model=t_ref, args=args, train_dataset=ds, tokenizer=tok)
    t_policy, t_ref = trainer.model, trainer.ref_model
    avg = variant["loss_type"] == "ipo"                        # TRL 0.11.4 averages the token log-probs for IPO only
    d = lambda x, y: float((torch.as_tensor(x, dtype=torch.float64) - torch.as_tensor(y, dtype=torch.float64)).abs().max())
    res = {}
    policy.train(); t_policy.train()
    with torch.no_grad():
        oc, orj = concatenated_forward(policy, batch, avg)
        rc, rrj = concatenated_forward(ref, batch, avg)
        tc, trj = trainer.concatenated_forward(t_policy, tb)[:2]
        trc, trrj = trainer.concatenated_forward(t_ref, tb)[:2]
    scale = max(1.0, float(torch.cat([oc, orj]).abs().max()))
    res["logps (policy, chosen and rejected)"] = d(torch.cat([oc, orj]), torch.cat([tc, trj])) / scale
    res["logps (reference, chosen and rejected)"] = d(torch.cat([rc, rrj]), torch.cat([trc, trrj])) / scale
    loss, metrics = get_batch_loss_metrics(policy, ref, batch, variant["beta"], variant["loss_type"], variant["label_smoothing"])
    t_loss, t_metrics = trainer.get_batch_loss_metrics(t_policy, tb, "train")
    loss.backward(); t_loss.backward()
    res["loss"] = d(loss.detach(), t_loss.detach())
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        res[k] = d(metrics[k], t_metrics[k])
    res["logps/chosen, logps/rejected (batch means)"] = max(d(metrics[k], t_metrics[k]) for k in ("logps/chosen", "logps/rejected")) / scale
    pairs = list(zip(policy.named_parameters(), t_policy.named_parameters()))
    assert [n for (n, _), _ in pairs] == [n for _, (n, _) in pairs], "parameter lists differ"
    missing = [n for (n, p), _ in pairs if p.grad is None]
    if missing: raise RuntimeError(f"no gradient for {missing[:3]}")
    res["gradients (every policy parameter)"] = max(d(p.grad, q.grad) for (_, p), (_, q) in pairs)
    res["_n_params"] = len(pairs)
    res["_loss"] = loss.item()
    res["_grad_max"] = max(float(p.grad.abs().max()) for (_, p), _ in pairs)
    # the reference never moves and gets no gradient in either library
    assert all(p.grad is None for p in ref.parameters()) and all(p.grad is None for p in t_ref.parameters())
    return res


def tokenisation_check(records) -> tuple[int, int]:
    "How many sequences TRL's own tokenisation (long max_length: no truncation) gives as ours, after TRL's BOS."
    import trl
    from datasets import Dataset
    from open_chatgpt.data import get_tokenizer
    from open_chatgpt.dpo import DPOCollator
    from open_chatgpt.sft import tiny_policy
    tok = get_tokenizer()
    args = trl.DPOConfig(output_dir=tempfile.mkdtemp(prefix="agree_dpo_"), report_to=[], use_cpu=True, max_length=4096,
                         max_prompt_length=2048)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.DPOTrainer(model=tiny_policy(tok, n_layer=1, n_embd=32, n_head=2), args=args, tokenizer=tok,
                                 ref_model=tiny_policy(tok, n_layer=1, n_embd=32, n_head=2), train_dataset=Dataset.from_list(
                                     [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records]))
    batch = DPOCollator(tok, 4096)(records)
    same, B = 0, len(records)
    for i in range(B):
        for side, row in (("chosen", i), ("rejected", B + i)):
            theirs = trainer.train_dataset[i][f"{side}_input_ids"]
            ours = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
            same += theirs == [tok.bos_token_id] + ours
    return same, 2 * B


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=4, help="pairs in the batch")
    p.add_argument("--max-length", type=int, default=96, help="tokens per sequence")
    p.add_argument("--perturb", type=float, default=1.0, help="noise on the policy's weights, x each tensor's std")
    p.add_argument("--tol32", type=float, default=1e-5)
    p.add_argument("--tol64", type=float, default=1e-9)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    import torch
    import trl
    import transformers
    torch.set_num_threads(a.threads)
    from open_chatgpt.data import sample_pairs
    pairs = sample_pairs("train")
    records = [pairs[i] for i in range(a.pairs)]
    variants = {"sigmoid": dict(loss_type="sigmoid", beta=0.1, label_smoothing=0.0),
                "cDPO (label_smoothing 0.1)": dict(loss_type="sigmoid", beta=0.1, label_smoothing=0.1),
                "IPO (beta 0.5)": dict(loss_type="ipo", beta=0.5, label_smoothing=0.0)}
    runs = {f"{name}, fp32": (v, torch.float32) for name, v in variants.items()}
    runs.update({f"{name}, fp64": (v, torch.float64) for name, v in variants.items()})
    def in_dtype(v, dt):
        "compare() with torch's default dtype = dt: transformers 4.45 builds the padding mask in the default dtype and"
        # fills it with finfo(model dtype).min, which overflows float32 for a float64 model (padded rows: a pair is cut
        # as one, so its shorter answer is padded)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dt)
        try: return compare(v, dt, records, a)
        finally: torch.set_default_dtype(prev)
    results = {name: in_dtype(v, dt) for name, (v, dt) in runs.items()}
    names = list(results)
    keys = [k for k in results[names[0]] if not k.startswith("_")]
    print(f"DPO: open_chatgpt.dpo vs TRL {trl.__version__} DPOTrainer (transformers {transformers.__version__}, torch "
          f"{torch.__version__}); tiny GPT-2 (2 layers, 64 wide), {a.pairs} HH pairs, max_length {a.max_length}, "
          f"{results[names[0]]['_n_params']} parameter tensors.\n")
    print("| max abs difference (log-probs: relative) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    failed = []
    for k in keys:
        cells = []
        for n in names:
            tol = a.tol64 if n.endswith("fp64") else a.tol32
            v = results[n][k]
            cells.append(f"{v:.1e}" + ("" if v <= tol else " FAIL"))
            if not v <= tol: failed.append((n, k, v))
        print(f"| {k} | " + " | ".join(cells) + " |")
    print("| (loss value) | " + " | ".join(f"{results[n]['_loss']:.4f}" for n in names) + " |")
    print("| (largest gradient entry) | " + " | ".join(f"{results[n]['_grad_max']:.1e}" for n in names) + " |")
    same, n = tokenisation_check(records)
    print(f"\nTolerances: {a.tol32:g} (fp32), {a.tol64:g} (fp64). Both sides get our tokens; TRL's own tokenisation of "
          f"the same records (untruncated) is BOS + ours for {same}/{n} sequences (not a pass criterion).")
    if failed:
        print("\nMISMATCH: " + "; ".join(f"{n} / {k}: {v:.2e}" for n, k, v in failed))
        return 1
    print("\nAll quantities agree.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

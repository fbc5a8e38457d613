#!/usr/bin/env python
"""PPO updates under bf16 autocast on a CPU (`PPOConfig.train_dtype`, chapter 6's Appendix) against float32, on the
real model: the untouched SmolLM2-135M-Instruct (not the run's SFT model) with REAL_RUN's LoRA and a value head on the
actor (shared_backbone), REAL_RUN's PPO settings (8 rollouts of up to 64 new tokens after prompts of up to 192, two
epochs of minibatches of 4), HH training prompts in the seed's order, made-up scores (a fixed normal draw), the torch
threads `make demo` uses. Each of REPEATS rollouts is sampled once (bf16, as the real run samples); then `ppo_step`
runs on it from the same weights in each setting, the settings in rotating order: wall seconds, the first minibatch's
largest |log-ratio| over all its rows (exactly 0 when old and new forwards agree), and how close the bf16 update (the change of every
trained parameter over the step's four Adam steps) is to the float32 one with the same micro-batches.

    .venv/bin/python bench/cpu_bf16_ppo.py > bench/cpu-bf16-ppo.md     # about 5 minutes here
"""
import copy, dataclasses, os, statistics, sys, time
import torch
from open_chatgpt import ppo as P
from open_chatgpt.data import get_tokenizer, load_prompts
from open_chatgpt.pipeline import PPO_DEFAULTS, REAL_RUN
from open_chatgpt.plumbing import machine_name
from open_chatgpt.sft import add_lora, load_policy, native_bf16

REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
SETTINGS = [("float32", 1), ("bfloat16", 1), ("float32", 4), ("bfloat16", 4)]   # (train_dtype, micro_batch_size)
load0 = os.getloadavg()[0]
tok = get_tokenizer("smollm2-135m-instruct")
torch.manual_seed(0)
model, ref = P.make_ppo_models(add_lora(load_policy("smollm2-135m-instruct", tokenizer=tok), REAL_RUN["lora"]), tok,
                               critic_init="sft", shared_backbone=True)
c = P.PPOConfig(**{**PPO_DEFAULTS, **REAL_RUN["ppo"]})
prompts = list(load_prompts("sample", "train")["prompt"])
start = copy.deepcopy(model.state_dict())
trained = [n for n, p in model.named_parameters() if p.requires_grad]
rows = {s: dict(wall=[], first=[], delta=[]) for s in SETTINGS}
for r in range(REPEATS):
    model.load_state_dict(start)
    torch.manual_seed(r)
    batch = P.rollout(model, tok, P.prompt_batch(prompts, r + 1, c.batch_size, c.seed), c)
    scores = torch.randn(c.batch_size, generator=torch.Generator().manual_seed(r))
    for s in SETTINGS[r % len(SETTINGS):] + SETTINGS[:r % len(SETTINGS)]:
        cs = dataclasses.replace(c, train_dtype=s[0], micro_batch_size=s[1])
        model.load_state_dict(start)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cs.learning_rate, eps=1e-5)
        seen, real = [], P.ppo_policy_loss
        def spy(lp, old, adv, m, cr): seen.append((lp - old)[m.bool()].abs().max().item()); return real(lp, old, adv, m, cr)
        P.ppo_policy_loss = spy
        torch.manual_seed(100 + r); t = time.perf_counter()
        try: P.ppo_step(model, ref, opt, batch, scores, P.make_kl_controller(cs), cs)
        finally: P.ppo_policy_loss = real
        passes = cs.mini_batch_size // cs.forward_batch_size       # a loss call per pass, then one for the statistics
        rows[s]["wall"].append(time.perf_counter() - t); rows[s]["first"].append(max(seen[:passes + (passes > 1)]))
        now = dict(model.named_parameters())
        rows[s]["delta"].append(torch.cat([(now[n].detach() - start[n]).flatten() for n in trained]))
        print(f"rollout {r} {s}: {rows[s]['wall'][-1]:.1f} s", file=sys.stderr)
med = statistics.median
base = med(rows[("float32", 1)]["wall"])
print("# PPO updates in bf16 autocast against float32 on a CPU (`bench/cpu_bf16_ppo.py`)\n")
print(f"Machine: {machine_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; native bf16: "
      f"{native_bf16('cpu')}; load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end. Model: the "
      f"untouched SmolLM2-135M-Instruct + REAL_RUN's LoRA, a value head on the actor; REAL_RUN's PPO settings "
      f"({c.batch_size} rollouts, {c.ppo_epochs} epochs of minibatches of {c.mini_batch_size}); {REPEATS} rollouts, "
      f"each updated from the same weights in every setting (old, reference and minibatch forwards, backward, Adam).\n")
print("| train_dtype | micro_batch_size | ppo_step wall s (median) | / float32, micro-batch 1 | first minibatch max abs log-ratio | update cosine with float32, same micro-batches |")
print("|---|---|---|---|---|---|")
for s in SETTINGS:
    ref_s = ("float32", s[1])
    cos = [float(torch.nn.functional.cosine_similarity(a, b, 0)) for a, b in zip(rows[s]["delta"], rows[ref_s]["delta"])]
    w = med(rows[s]["wall"])
    print(f"| {s[0]} | {s[1]} | {w:.2f} | {w / base:.2f} | {max(rows[s]['first']):.1e} | "
          f"{'-' if s[0] == 'float32' else ', '.join(f'{x:.3f}' for x in cos)} |")
print("\nEach step's wall seconds: " + "; ".join(f"{s[0]}/{s[1]}: {', '.join(f'{x:.1f}' for x in rows[s]['wall'])}" for s in SETTINGS) + ".")

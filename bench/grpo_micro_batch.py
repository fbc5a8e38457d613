"""One real-model GRPO update (SmolLM2-135M-Instruct + LoRA and GRPO settings as the pipeline's REAL_RUN), whole
minibatches vs micro_batch_size=1, on the same fixed rollout: CPU time of grpo_step, the two alternating, one torch
thread, and the largest difference of the trained weights (Adam's first step: about lr where a gradient is ~0).

    .venv/bin/python bench/grpo_micro_batch.py [REPEATS]      # about 3 minutes with 3 repeats
"""
import copy, dataclasses, os, sys, time
import torch
from open_chatgpt.data import get_tokenizer, sample_prompts
from open_chatgpt.grpo import GRPOConfig, grpo_step, make_grpo_models
from open_chatgpt.pipeline import REAL_RUN
from open_chatgpt.plumbing import machine_name
from open_chatgpt.ppo import rollout
from open_chatgpt.sft import load_policy
torch.set_num_threads(1)
print(f"machine: {machine_name()}, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, 1 thread")
tok = get_tokenizer("smollm2-135m-instruct")
policy, ref = make_grpo_models(load_policy("smollm2-135m-instruct", tokenizer=tok, lora=REAL_RUN["lora"]), tok)
g = REAL_RUN["grpo"]
c0 = GRPOConfig(**{k: v for k, v in g.items() if k not in ("total_steps", "save_every")}, max_new_tokens=64, max_prompt_length=192)
prompts = sample_prompts("train")["prompt"][:2]
torch.manual_seed(0)
batch = rollout(policy, tok, [p for p in prompts for _ in range(4)], c0)
print("response lengths", batch["response_mask"].sum(1).tolist(), "prompt lengths", batch["query_mask"].sum(1).tolist())
rewards = torch.randn(8, generator=torch.Generator().manual_seed(1))
res = {0: [], 1: []}; weights = {}
for rep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2):
    for mb in ((0, 1) if rep % 2 == 0 else (1, 0)):
        p = copy.deepcopy(policy); opt = torch.optim.Adam([q for q in p.parameters() if q.requires_grad], lr=2e-4)
        c = dataclasses.replace(c0, micro_batch_size=mb)
        torch.manual_seed(2); t0 = time.process_time(); grpo_step(p, ref, opt, batch, rewards, c); dt = time.process_time() - t0
        res[mb].append(dt); weights[mb] = {n: q.detach().clone() for n, q in p.named_parameters() if q.requires_grad}
        print(f"micro_batch_size={mb}: {dt:.1f} CPU s", flush=True)
diff = max(float((weights[0][n] - weights[1][n]).abs().max()) for n in weights[0])
import statistics as s
print(f"load average at the end {os.getloadavg()[0]:.1f}")
print(f"median CPU s: whole {s.median(res[0]):.1f}, micro=1 {s.median(res[1]):.1f}; max weight difference {diff:.2e}")

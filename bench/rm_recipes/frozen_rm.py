"""End-to-end frozen-feature reward model (the recommended GOLD recipe, also a cheap proxy alternative):
backbone cut after K layers, pooled hidden states of the response text, a pairwise logistic head.
Trains on all train pairs, reports test, times training and scoring (1 thread). Saves the head.
usage: python frozen_rm.py --model smollm2-135m-instruct --layers 8 --pools mean,last --C 1e-4"""
import argparse, time
from common import *
from formats import encode
from transformers import AutoTokenizer, AutoModel
from open_chatgpt.models import resolve_model
from probe import fit_head

p = argparse.ArgumentParser()
p.add_argument("--model", default="smollm2-135m-instruct"); p.add_argument("--layers", type=int, default=8)
p.add_argument("--pools", default="mean,last"); p.add_argument("--fmt", default="resp"); p.add_argument("--max_length", type=int, default=128)
p.add_argument("--C", type=float, default=1e-4); p.add_argument("--save", default=None)
a = p.parse_args()

class FrozenRM:
    def __init__(self, model, layers, pools, fmt, max_length):
        path = resolve_model(model); self.tok = AutoTokenizer.from_pretrained(path)
        self.bert = self.tok.cls_token is not None
        if self.tok.pad_token is None: self.tok.pad_token = self.tok.eos_token
        self.m = AutoModel.from_pretrained(path).eval()
        if not self.bert:
            self.m.layers = self.m.layers[:layers]; self.m.norm = torch.nn.Identity()   # hidden state after `layers` blocks
        elif layers < self.m.config.num_hidden_layers: self.m.encoder.layer = self.m.encoder.layer[:layers]
        self.pools, self.fmt, self.L = pools, fmt, max_length; self.w = None
    @torch.no_grad()
    def features(self, prompts, responses, bs=32):
        items = [encode(self.tok, p, r, self.fmt, self.L, self.bert)[0] for p, r in zip(prompts, responses)]
        order = sorted(range(len(items)), key=lambda i: len(items[i])); out = [None] * len(items)
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]; T = max(len(items[i]) for i in idx)
            ids = torch.full((len(idx), T), self.tok.pad_token_id); m = torch.zeros_like(ids)
            for j, i in enumerate(idx): ids[j, :len(items[i])] = torch.tensor(items[i]); m[j, :len(items[i])] = 1
            h = self.m(input_ids=ids, attention_mask=m).last_hidden_state
            f = []
            if "mean" in self.pools: f.append((h * m[..., None]).sum(1) / m.sum(1, keepdim=True))
            if "last" in self.pools: f.append(h[torch.arange(len(idx)), m.sum(1) - 1])
            if "first" in self.pools: f.append(h[:, 0])
            f = torch.cat(f, 1).numpy()
            for j, i in enumerate(idx): out[i] = f[j]
        return np.stack(out)
    def score(self, prompts, responses): return self.features(prompts, responses) @ self.w

S = splits()
rm = FrozenRM(a.model, a.layers, a.pools.split(","), a.fmt, a.max_length)
tr = S["train"]; t = time.time()
F = rm.features([r["prompt"] for r in tr] * 2, [r["chosen"] for r in tr] + [r["rejected"] for r in tr])
rm.w = fit_head(F[:len(tr)], F[len(tr):], a.C); train_s = time.time() - t
te = S["test"]; t = time.time()
sc = rm.score([r["prompt"] for r in te] * 2, [r["chosen"] for r in te] + [r["rejected"] for r in te]); score_s = time.time() - t
m = sc[:len(te)] - sc[len(te):]; res = acc(m)
name = f"frozen {a.model} first {a.layers} layers {a.fmt}{a.max_length} pools={a.pools} logistic C={a.C}"
log_result(exp="frozen_rm", recipe=name, split="test", train_s=train_s, score_s_per_1000=score_s / (2 * len(te)) * 1000, **res)
save_margins("frozen_rm__" + name.replace(" ", "_"), "test", m)
print(name, fmt(res), f"train {train_s:.0f}s (features of {2 * len(tr)} texts + head), score {score_s / (2 * len(te)) * 1000:.0f} s per 1000 texts")
if a.save: Path(a.save).mkdir(parents=True, exist_ok=True); np.save(Path(a.save) / "head.npy", rm.w)

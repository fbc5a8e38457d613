"""Fine-tune a reward model (MiniLM or SmolLM2) with the pairwise Bradley-Terry loss; 1 torch thread.
Selection on the val carve-out (fit = train - val); with --final, train on all of train and report test.
example: python ft.py --model minilm-l6 --fmt resp --max_length 128 --pool mean --lr 5e-5 --epochs 2"""
import argparse, math, time, json
from common import *
from formats import encode
from transformers import AutoTokenizer, AutoModel
from open_chatgpt.models import resolve_model

p = argparse.ArgumentParser()
p.add_argument("--model", default="minilm-l6")
p.add_argument("--fmt", default="resp")
p.add_argument("--max_length", type=int, default=128)
p.add_argument("--pool", default="mean", choices=["mean", "first", "last"])
p.add_argument("--mode", default="full", choices=["full", "lora", "head", "topk"])
p.add_argument("--topk", type=int, default=2, help="mode topk: train only the top k layers (+ head)")
p.add_argument("--lora_r", type=int, default=16)
p.add_argument("--lr", type=float, default=5e-5)
p.add_argument("--head_lr", type=float, default=None, help="default: = lr")
p.add_argument("--epochs", type=float, default=1)
p.add_argument("--bs", type=int, default=16)
p.add_argument("--wd", type=float, default=0.0)
p.add_argument("--warmup", type=float, default=0.1)
p.add_argument("--lp_init", action="store_true", help="linear probe (logistic head on frozen pooled features) as head init")
p.add_argument("--lp_C", type=float, default=0.001)
p.add_argument("--layer", type=int, default=-1, help="read this hidden layer (decoders: a middle layer)")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--bucket", action="store_true", help="length-bucketed batches (less padding, ~2x faster)")
p.add_argument("--final", action="store_true", help="train on all train pairs, evaluate on test")
p.add_argument("--eval_test", action="store_true", help="also report test after a fit-only run (not for selection)")
p.add_argument("--save", default=None)
p.add_argument("--tag", default="")
a = p.parse_args()
torch.manual_seed(a.seed); np.random.seed(a.seed)

S = splits()
train = S["train"] if a.final else S["fit"]
evals = {"test": S["test"]} if a.final else {"val": S["val"], **({"test": S["test"]} if a.eval_test else {})}
path = resolve_model(a.model)
tok = AutoTokenizer.from_pretrained(path)
bert = tok.cls_token is not None
if tok.pad_token is None: tok.pad_token = tok.eos_token
backbone = AutoModel.from_pretrained(path)
n_layers = backbone.config.num_hidden_layers
if a.layer != -1 and not bert:   # cut the decoder after `layer` blocks: cheaper and (maybe) better features
    backbone.layers = backbone.layers[:a.layer]; backbone.config.num_hidden_layers = a.layer
    backbone.norm = torch.nn.Identity()
d = backbone.config.hidden_size

class RM(torch.nn.Module):
    def __init__(self, bb):
        super().__init__(); self.bb = bb; self.head = torch.nn.Linear(d, 1)
        torch.nn.init.normal_(self.head.weight, std=1 / math.sqrt(d + 1)); torch.nn.init.zeros_(self.head.bias)
    def feats(self, ids, tt, m):
        kw = dict(input_ids=ids, attention_mask=m)
        if bert: kw["token_type_ids"] = tt
        h = self.bb(**kw).last_hidden_state
        if a.pool == "mean": return (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        if a.pool == "first": return h[:, 0]
        return h[torch.arange(h.shape[0]), m.sum(1) - 1]   # right padding
    def forward(self, ids, tt, m): return self.head(self.feats(ids, tt, m)).squeeze(-1)

rm = RM(backbone)
if a.mode == "lora":
    from peft import LoraConfig, get_peft_model
    targets = ["query", "key", "value", "dense"] if bert else ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    rm.bb = get_peft_model(rm.bb, LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.05, target_modules=targets))
elif a.mode in ("head", "topk"):
    for q in rm.bb.parameters(): q.requires_grad_(False)
    if a.mode == "topk":
        layers = rm.bb.encoder.layer if bert else rm.bb.layers
        for L in layers[-a.topk:]:
            for q in L.parameters(): q.requires_grad_(True)

def batchify(items):
    T = max(len(x[0]) for x in items)
    ids = torch.full((len(items), T), tok.pad_token_id); tt = torch.zeros_like(ids); m = torch.zeros_like(ids)
    for j, (x, y) in enumerate(items):
        ids[j, :len(x)] = torch.tensor(x); tt[j, :len(y)] = torch.tensor(y); m[j, :len(x)] = 1
    return ids, tt, m

def encode_pairs(recs):
    return [(encode(tok, r["prompt"], r["chosen"], a.fmt, a.max_length, bert), encode(tok, r["prompt"], r["rejected"], a.fmt, a.max_length, bert)) for r in recs]

@torch.no_grad()
def score_items(items, fn, bs=32):
    "fn over single texts, length-sorted batches; returns (n, ...) in the original order."
    rm.eval()
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    out = [None] * len(items)
    for s in range(0, len(order), bs):
        idx = order[s:s + bs]; v = fn(*batchify([items[i] for i in idx]))
        for j, i in enumerate(idx): out[i] = v[j]
    return torch.stack(out)

def margins(pairs_enc):
    flat = [x for pr in pairs_enc for x in pr]
    t = time.time(); r = score_items(flat, rm).numpy(); dt = time.time() - t
    return r[0::2] - r[1::2], dt / len(flat) * 1000

tr_enc = encode_pairs(train)
ev_enc = {k: encode_pairs(v) for k, v in evals.items()}
t0 = time.time()
if a.lp_init:   # linear probe on the frozen pooled features of the training pairs
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    flat = [x for pr in tr_enc for x in pr]
    F = score_items(flat, rm.feats).numpy(); c, r_ = F[0::2], F[1::2]
    from probe import fit_head   # drops MiniLM's constant dims (std ~1e-9 there gave a 1e30 weight and a no-op fine-tune)
    w = fit_head(c, r_, a.lp_C); D = c - r_; clf = type("H", (), {"coef_": w[None]})
    rm.head.weight.data = torch.tensor(w, dtype=torch.float32)[None]; rm.head.bias.data.zero_()
    print(f"linear probe init: train acc {(D @ clf.coef_.ravel() > 0).mean():.3f}, {time.time() - t0:.0f}s", flush=True)
lp_s = time.time() - t0

params_head = list(rm.head.parameters())
params_bb = [q for q in rm.bb.parameters() if q.requires_grad]
opt = torch.optim.AdamW([dict(params=params_bb, lr=a.lr), dict(params=params_head, lr=a.head_lr or a.lr)], weight_decay=a.wd)
steps_per_epoch = math.ceil(len(tr_enc) / a.bs)
total = max(1, int(round(a.epochs * steps_per_epoch))); warm = int(a.warmup * total)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / (warm + 1) if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
g = torch.Generator().manual_seed(a.seed)
hist = []; train_s = lp_s; step = 0; losses = []
while step < total:
    perm = torch.randperm(len(tr_enc), generator=g).tolist()
    batches = [perm[s:s + a.bs] for s in range(0, len(perm), a.bs)]
    if a.bucket:   # sort within chunks of 20 batches by pair length, then shuffle the batches
        plen = lambda i: max(len(tr_enc[i][0][0]), len(tr_enc[i][1][0]))
        chunk = 20 * a.bs; batches = []
        for c in range(0, len(perm), chunk):
            srt = sorted(perm[c:c + chunk], key=plen); batches += [srt[s:s + a.bs] for s in range(0, len(srt), a.bs)]
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    for idx in batches:
        if step >= total: break
        t = time.time(); rm.train()
        ids, tt, m = batchify([tr_enc[i][0] for i in idx] + [tr_enc[i][1] for i in idx])
        r = rm(ids, tt, m); B = len(idx)
        loss = -torch.nn.functional.logsigmoid(r[:B] - r[B:]).mean()
        loss.backward(); torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
        train_s += time.time() - t; step += 1; losses.append(loss.item())
        if step % steps_per_epoch == 0 or step == total:
            row = dict(step=step, epoch=round(step / steps_per_epoch, 2), train_loss=float(np.mean(losses[-steps_per_epoch:])), train_s=round(train_s, 1))
            for k, v in ev_enc.items():
                mg, ms = margins(v); row[k] = acc(mg)["acc"]; row["score_ms"] = ms
            hist.append(row); print(json.dumps(row), flush=True)

name = a.tag or f"{a.model} {a.fmt}{a.max_length} pool={a.pool} {a.mode}{'(r=%d)' % a.lora_r if a.mode == 'lora' else ''}{'(k=%d)' % a.topk if a.mode == 'topk' else ''} lr={a.lr} ep={a.epochs}{' bucket' if a.bucket else ''}{' lp_init' if a.lp_init else ''}{' layer=%d' % a.layer if a.layer != -1 else ''} bs={a.bs} seed={a.seed}"
res = dict(exp="ft", recipe=name, final=a.final, train_s=train_s, history=hist, args=vars(a))
for k, v in ev_enc.items():
    mg, ms = margins(v); res[k] = acc(mg); res["score_ms_per_text"] = ms
    save_margins(("final__" if a.final else "fit__") + name.replace(" ", "_").replace("/", "_"), k, mg)
log_result(**res)
print(name, {k: fmt(res[k]) for k in ev_enc}, f"train {train_s:.0f}s, score {res['score_ms_per_text']:.1f} ms/text")
if a.save:
    Path(a.save).mkdir(parents=True, exist_ok=True)
    torch.save(dict(state=rm.state_dict(), args=vars(a)), Path(a.save) / "rm.pt")

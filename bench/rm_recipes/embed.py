"""Frozen-backbone features: pooled hidden states of every (prompt, response) text, cached as .npy.
usage: python embed.py MODEL FMT MAXLEN [layers]   (MODEL: minilm-l6 | smollm2-135m-instruct)"""
import sys, time
from common import *
from formats import encode
from transformers import AutoTokenizer, AutoModel
from open_chatgpt.models import resolve_model

def all_texts(S):
    "(prompt, response) for train-chosen, train-rejected, test-chosen, test-rejected, in that order."
    out = []
    for sp in ("train", "test"):
        for key in ("chosen", "rejected"): out += [(r["prompt"], r[key]) for r in S[sp]]
    return out

@torch.no_grad()
def pooled_features(model, items, pad_id, bert: bool, layers, batch=32):
    """Mean, first- and last-token pooled hidden states of token-id `items` ((ids, type ids) pairs), by hidden-state
    index in `layers` (0 = embeddings): {(layer, pool): (n, hidden)}, and the number of real tokens."""
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    feats = {(l, pool): np.zeros((len(items), model.config.hidden_size), np.float32) for l in layers for pool in ("mean", "first", "last")}
    ntok = 0
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        T = max(len(items[i][0]) for i in idx)
        ids = torch.full((len(idx), T), pad_id or 0); tt = torch.zeros_like(ids); m = torch.zeros_like(ids)
        for j, i in enumerate(idx):
            a, b = items[i]; ids[j, :len(a)] = torch.tensor(a); tt[j, :len(a)] = torch.tensor(b); m[j, :len(a)] = 1
        ntok += int(m.sum())
        kw = dict(input_ids=ids, attention_mask=m, output_hidden_states=True)
        if bert: kw["token_type_ids"] = tt
        hs = model(**kw).hidden_states
        last = m.sum(1) - 1
        for l in layers:
            h = hs[l]
            mean = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
            feats[(l, "mean")][idx] = mean.numpy(); feats[(l, "first")][idx] = h[:, 0].numpy()
            feats[(l, "last")][idx] = h[torch.arange(len(idx)), last].numpy()
    return feats, ntok

def embed(model_name, fmt, max_length, layers=(-1,), batch=32):
    S = splits()
    path = resolve_model(model_name)
    tok = AutoTokenizer.from_pretrained(path)
    bert = tok.cls_token is not None
    model = AutoModel.from_pretrained(path).eval()
    items = [encode(tok, p, r, fmt, max_length, bert) for p, r in all_texts(S)]
    n_layers = model.config.num_hidden_layers
    L = [l if l >= 0 else n_layers + 1 + l for l in layers]  # hidden_states index: 0 = embeddings
    t = time.time()
    feats, ntok = pooled_features(model, items, tok.pad_token_id, bert, L, batch)
    dt = time.time() - t
    for (l, pool), F in feats.items():
        np.save(CACHE / f"emb__{model_name}__{fmt}{max_length}__L{l}__{pool}.npy", F)
    info = dict(exp="embed", model=model_name, fmt=fmt, max_length=max_length, n=len(items), seconds=dt,
                ms_per_text=dt / len(items) * 1000, mean_tokens=ntok / len(items))
    log_result(**info)
    return info

if __name__ == "__main__":
    layers = tuple(int(x) for x in sys.argv[4].split(",")) if len(sys.argv) > 4 else (-1,)
    embed(sys.argv[1], sys.argv[2], int(sys.argv[3]), layers)

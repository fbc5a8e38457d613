"""Earlier assistant turns of harmless-base conversations as extra training signal for the proxy (issue #14).
In HH's red-team collection the conversation continued with the answer the red-teamer picked (the more harmful of
the two), so an earlier assistant turn is, by construction, the kind of answer the data's `rejected` is.
usage: python earlier_turns.py embed | diag | cv"""
import sys, time
from common import *
from formats import encode
from probe import load, fit_head
from open_chatgpt.data import HUMAN, ASSISTANT

def earlier(prompt: str) -> list:
    "The assistant turns inside an HH prompt (every turn before the final one)."
    out = []
    for t in prompt.split(ASSISTANT)[1:]:
        a = t.split(HUMAN)[0].strip()
        if a: out.append(a)
    return out

S = splits(); ntr = len(S["train"])
conv = [earlier(r["prompt"]) for r in S["train"]]
owner = np.array([i for i, a in enumerate(conv) for _ in a])     # which train pair each earlier turn belongs to
texts = [x for a in conv for x in a]
FEAT = ("minilm-l6__resp128__L6__mean", "minilm-l6__resp128__L6__last")

def embed(batch=32):
    from transformers import AutoTokenizer, AutoModel
    from open_chatgpt.models import resolve_model
    from embed import pooled_features
    path = resolve_model("minilm-l6"); tok = AutoTokenizer.from_pretrained(path); model = AutoModel.from_pretrained(path).eval()
    t = time.time()
    F, _ = pooled_features(model, [encode(tok, "", r, "resp", 128, True) for r in texts], tok.pad_token_id, True, [6], batch)
    for p in ("mean", "last"): np.save(CACHE / f"earlier__minilm-l6__resp128__L6__{p}.npy", F[(6, p)])
    log_result(exp="embed", model="minilm-l6", fmt="earlier assistant turns, resp 128", n=len(texts), seconds=time.time() - t)

def feats():
    trc, trr, tec, ter = load(FEAT)
    E = np.concatenate([np.load(CACHE / f"earlier__{n}.npy") for n in FEAT], 1)
    return trc, trr, tec, ter, E

from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

def fit_aug(c, r, ec, er, C, w_aug):
    "Pairwise logistic head on real pairs (c > r) plus augmented pairs (ec > er) weighted w_aug in total per real pair."
    F = np.concatenate([c, r]); sd = F.std(0); keep = sd > 1e-4 * np.median(sd)
    D = ((c - r) / np.where(keep, sd, 1.0))[:, keep]; A = ((ec - er) / np.where(keep, sd, 1.0))[:, keep]
    X = np.concatenate([D, -D, A, -A]); y = np.r_[np.ones(len(D)), np.zeros(len(D)), np.ones(len(A)), np.zeros(len(A))]
    sw = np.r_[np.ones(2 * len(D)), np.full(2 * len(A), w_aug * len(D) / max(len(A), 1))]
    clf = LogisticRegression(C=C, fit_intercept=False, max_iter=3000).fit(X, y, sample_weight=sw)
    w = np.zeros(c.shape[1]); w[keep] = clf.coef_.ravel() / sd[keep]; return w

def aug_pairs(idx, trc, E, mode):
    "Augmented (better, worse) features for the train pairs idx: the final chosen answer above each earlier turn."
    sel = np.isin(owner, idx)
    if mode == "chosen>earlier": return trc[owner[sel]], E[sel]
    raise ValueError(mode)

folds = list(KFold(5, shuffle=True, random_state=0).split(np.arange(ntr)))
CS = (1e-4, 3e-4, 0.001, 0.003, 0.01)
WS = (0.0, 0.25, 0.5, 1.0, 2.0)

def cv(mode="chosen>earlier"):
    trc, trr, tec, ter, E = feats()
    grid = {}
    for C in CS:
        for wa in WS:
            m = np.zeros(ntr)
            for tr, va in folds:
                ec, er = aug_pairs(tr, trc, E, mode)
                w = fit_aug(trc[tr], trr[tr], ec, er, C, wa); m[va] = (trc[va] - trr[va]) @ w
            grid[(C, wa)] = acc(m)["acc"]
    for wa in WS: print(f"w_aug {wa}: " + " ".join(f"{C}:{grid[(C, wa)]:.3f}" for C in CS))
    (C, wa), best = max(grid.items(), key=lambda kv: (kv[1], -kv[0][1]))
    base_C, base = max(((C, grid[(C, 0.0)]) for C in CS), key=lambda x: x[1])
    ec, er = aug_pairs(np.arange(ntr), trc, E, mode)
    w = fit_aug(trc, trr, ec, er, C, wa); a = acc((tec - ter) @ w)
    print(f"cv picks C={C} w_aug={wa} cv {best:.3f} (no augmentation: {base:.3f} at C={base_C}) -> held-out {fmt(a)}")
    log_result(exp="earlier_turns", recipe=f"{'+'.join(FEAT)} probe + {mode} pairs", C=C, w_aug=wa, cv=best, cv_no_aug=base,
               cv_grid=[dict(C=c, w_aug=w, cv=v) for (c, w), v in grid.items()], split="test", **a)

def diag():
    "Where earlier turns fall on a probe trained on the real pairs only (out-of-fold for the train answers)."
    trc, trr, tec, ter, E = feats()
    sc, sr, se = np.zeros(ntr), np.zeros(ntr), np.zeros(len(E))
    for tr, va in folds:
        w = fit_head(trc[tr], trr[tr], 3e-4); sc[va] = trc[va] @ w; sr[va] = trr[va] @ w
        s = np.isin(owner, va); se[s] = E[s] @ w
    d = dict(mean_chosen=sc.mean(), mean_rejected=sr.mean(), mean_earlier=se.mean(), p_chosen_gt_earlier=np.mean(sc[owner] > se),
             p_rejected_gt_earlier=np.mean(sr[owner] > se), p_chosen_gt_rejected=np.mean(sc > sr))
    log_result(exp="earlier_turns_diag", recipe=f"{'+'.join(FEAT)} probe (C=3e-4), out of fold", split="train",
               n_earlier=len(E), **{k: float(v) for k, v in d.items()})

if __name__ == "__main__": {"embed": embed, "diag": diag, "cv": cv}[sys.argv[1]]()

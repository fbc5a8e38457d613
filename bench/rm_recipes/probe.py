"""Frozen features + pairwise logistic head. usage: python probe.py FEATNAME [FEATNAME2 ...]  (concatenated)
FEATNAME is the part of cache/emb__<FEATNAME>.npy, e.g. minilm-l6__resp128__L6__mean"""
import sys, time
from common import *
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

S = splits()
ntr, nte = len(S["train"]), len(S["test"])
valmask = np.array([is_val(r["prompt"]) for r in S["train"]])

def load(names):
    F = np.concatenate([np.load(CACHE / f"emb__{n}.npy") for n in names], 1)
    trc, trr, tec, ter = F[:ntr], F[ntr:2 * ntr], F[2 * ntr:2 * ntr + nte], F[2 * ntr + nte:]
    return trc, trr, tec, ter

def fit_head(c, r, C, seed=0):
    "Pairwise logistic head on standardized features; (near-)constant dims (MiniLM has 3: std < 1e-8) get weight 0."
    F = np.concatenate([c, r]); mu, sd = F.mean(0), F.std(0)
    keep = sd > 1e-4 * np.median(sd)
    D = ((c - r) / np.where(keep, sd, 1.0))[:, keep]
    X = np.concatenate([D, -D]); y = np.r_[np.ones(len(D)), np.zeros(len(D))]   # symmetric: both orders
    clf = LogisticRegression(C=C, fit_intercept=False, max_iter=3000).fit(X, y)
    w = np.zeros(c.shape[1]); w[keep] = clf.coef_.ravel() / sd[keep]          # head in raw feature space: r(x) = w . x
    return w

def run(names, Cs=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0), log=True):
    trc, trr, tec, ter = load(names)
    res = []
    for C in Cs:
        w = fit_head(trc[~valmask], trr[~valmask], C)
        res.append((acc((trc[valmask] - trr[valmask]) @ w)["acc"], C))
    best = max(res, key=lambda x: (x[0], -x[1]))
    t = time.time(); w = fit_head(trc, trr, best[1]); tt = time.time() - t
    m = (tec - ter) @ w; a = acc(m)
    name = "+".join(names)
    print(f"{name}: val {best[0]:.3f} (C={best[1]}) test {fmt(a)}  | val by C: " + " ".join(f"{C}:{v:.3f}" for v, C in res))
    if log:
        log_result(exp="probe", recipe=name, C=best[1], val=best[0], split="test", head_train_s=tt, **a)
        save_margins("probe__" + name, "test", m)
        wv = fit_head(trc[~valmask], trr[~valmask], best[1]); save_margins("probe__" + name, "val", (trc[valmask] - trr[valmask]) @ wv)
    return best[0], a, w

if __name__ == "__main__":
    if sys.argv[1] == "all":
        import glob, os
        for f in sorted(glob.glob(str(CACHE / "emb__*.npy"))):
            run([os.path.basename(f)[5:-4]])
    else: run(sys.argv[1:])

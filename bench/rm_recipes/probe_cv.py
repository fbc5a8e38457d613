"""Frozen features + pairwise logistic head, selected by 5-fold CV on all 1611 train pairs (less noisy than one val split).
usage: python probe_cv.py FEAT[,FEAT2...] [FEAT...]   each arg is one (possibly concatenated) feature set; 'all' = every cached one.
Writes out-of-fold train margins and test margins to cache/margins for stacking."""
import sys, time, glob, os
from common import *
from probe import load, fit_head
from sklearn.model_selection import KFold

S = splits(); ntr = len(S["train"])
CS = (1e-5, 3e-5, 1e-4, 3e-4, 0.001, 0.003, 0.01, 0.03, 0.1)
folds = list(KFold(5, shuffle=True, random_state=0).split(np.arange(ntr)))

def oof(c, r, C):
    m = np.zeros(ntr)
    for tr, va in folds:
        w = fit_head(c[tr], r[tr], C); m[va] = (c[va] - r[va]) @ w
    return m

def run(names, log=True):
    trc, trr, tec, ter = load(names)
    res = [(acc(oof(trc, trr, C))["acc"], C) for C in CS]
    cv, C = max(res, key=lambda x: (x[0], -x[1]))
    t = time.time(); w = fit_head(trc, trr, C); tt = time.time() - t
    m = (tec - ter) @ w; a = acc(m); name = "+".join(names)
    print(f"{name}: cv {cv:.3f} (C={C}) test {fmt(a)} | " + " ".join(f"{C}:{v:.3f}" for v, C in res), flush=True)
    if log:
        log_result(exp="probe_cv", recipe=name, C=C, cv=cv, split="test", head_train_s=tt, **a)
        save_margins("probecv__" + name, "oof", oof(trc, trr, C)); save_margins("probecv__" + name, "test", m)
    return cv, a

if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["all"]: args = [os.path.basename(f)[5:-4] for f in sorted(glob.glob(str(CACHE / "emb__*.npy")))]
    for x in args: run(x.split(","))

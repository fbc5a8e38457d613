"""Stacking: combine out-of-fold margins (5-fold CV on train) of BoW and frozen-feature probes with a tiny logistic stacker.
usage: python stack.py NAME [NAME ...]  (NAME: 'bow:<cfg>' or a probecv__ margin name; see cache/margins)"""
import sys
from common import *
from probe_cv import folds, ntr
from baselines import fit_bow, margins as bow_margins
from sklearn.linear_model import LogisticRegression
S = splits()
BOW = {"tfidf12": ("tfidf", (1, 2), "resp", 1.0, False), "tfidf11": ("tfidf", (1, 1), "resp", 0.3, False),
       "tfidf12pr": ("tfidf", (1, 2), "prompt+resp", 3.0, False), "count11": ("count", (1, 1), "resp", 0.3, False)}

def bow_oof(cfg):
    f = CACHE / "margins" / f"bow_{cfg}__oof.npy"
    if not f.exists():
        tr = S["train"]; m = np.zeros(ntr)
        for a, b in folds:
            V, clf = fit_bow([tr[i] for i in a], *BOW[cfg]); m[b] = bow_margins(V, clf, [tr[i] for i in b], BOW[cfg][2])
        np.save(f, m)
        V, clf = fit_bow(tr, *BOW[cfg]); np.save(CACHE / "margins" / f"bow_{cfg}__test.npy", bow_margins(V, clf, S["test"], BOW[cfg][2]))
    return np.load(f), np.load(CACHE / "margins" / f"bow_{cfg}__test.npy")

def get(name):
    if name.startswith("bow:"): return bow_oof(name[4:])
    return np.load(CACHE / "margins" / f"{name}__oof.npy"), np.load(CACHE / "margins" / f"{name}__test.npy")

def stack(names, log=True):
    O, T = zip(*[get(n) for n in names]); O = np.stack(O, 1); T = np.stack(T, 1)
    sd = O.std(0); O, T = O / sd, T / sd
    fitc = lambda X: LogisticRegression(C=1.0, fit_intercept=False).fit(np.r_[X, -X], np.r_[np.ones(len(X)), np.zeros(len(X))]).coef_.ravel()
    cvm = np.zeros(ntr)
    for a, b in folds: cvm[b] = O[b] @ fitc(O[a])     # stacker CV (second level, same folds)
    w = fitc(O); m = T @ w; a = acc(m)
    singles = " ".join(f"{acc(O[:, j])['acc']:.3f}/{acc(T[:, j])['acc']:.3f}" for j in range(len(names)))
    print(f"STACK {' + '.join(names)}: cv {acc(cvm)['acc']:.3f} test {fmt(a)} w={np.round(w, 2).tolist()} | singles cv/test {singles}", flush=True)
    if log: log_result(exp="stack", recipe=" + ".join(names), cv=acc(cvm)["acc"], split="test", weights=w.tolist(), **a)
    return m

if __name__ == "__main__":
    for g in sys.argv[1:]: stack(g.split(","))

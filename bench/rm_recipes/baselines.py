"""Q1: length baseline and pairwise bag-of-words logistic regression. Selection on val, test reported once per config."""
import time, itertools, sys
import numpy as np
from common import *
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from scipy import sparse

S = splits()
def texts(recs, key, mode):
    if mode == "resp": return [r[key] for r in recs]
    return [r["prompt"] + r[key] for r in recs]

# ---- length baseline: shorter response is chosen (characters; also words)
for unit in ("chars", "words"):
    L = (lambda t: len(t)) if unit == "chars" else (lambda t: len(t.split()))
    for sp in ("val", "test"):
        m = [L(r["rejected"]) - L(r["chosen"]) for r in S[sp]]   # >0 when chosen is shorter
        a = acc(m); print(f"length({unit}) {sp}: {fmt(a)}")
        log_result(exp="length", recipe=f"shorter is chosen ({unit})", split=sp, **a)
        if unit == "chars": save_margins("length", sp, m)

def fit_bow(fit, kind, ngram, mode, C, binary=False, min_df=2, seed=0):
    V = (TfidfVectorizer(ngram_range=ngram, min_df=min_df, sublinear_tf=True) if kind == "tfidf"
         else CountVectorizer(ngram_range=ngram, min_df=min_df, binary=binary))
    V.fit(texts(fit, "chosen", mode) + texts(fit, "rejected", mode))
    D = V.transform(texts(fit, "chosen", mode)) - V.transform(texts(fit, "rejected", mode))
    rng = np.random.default_rng(seed); flip = rng.random(D.shape[0]) < 0.5
    sgn = np.where(flip, -1.0, 1.0)
    X = sparse.diags(sgn) @ D; y = (~flip).astype(int)
    clf = LogisticRegression(C=C, fit_intercept=False, max_iter=5000).fit(X, y)
    return V, clf

def margins(V, clf, recs, mode):
    D = V.transform(texts(recs, "chosen", mode)) - V.transform(texts(recs, "rejected", mode))
    return D @ clf.coef_.ravel()

if __name__ == "__main__":
    grid = []
    for kind, ngram, mode, C, binary in itertools.product(["count", "tfidf"], [(1, 1), (1, 2)], ["resp", "prompt+resp"],
                                                          [0.03, 0.1, 0.3, 1.0, 3.0, 10.0], [False, True]):
        if kind == "tfidf" and binary: continue
        t = time.time()
        V, clf = fit_bow(S["fit"], kind, ngram, mode, C, binary)
        va = acc(margins(V, clf, S["val"], mode))
        grid.append((va["acc"], kind, ngram, mode, C, binary, time.time() - t))
    grid.sort(key=lambda g: -g[0])
    print("top val configs:")
    for g in grid[:12]: print(f"  val {g[0]:.3f} {g[1]} ngram={g[2]} {g[3]} C={g[4]} binary={g[5]} ({g[6]:.1f}s)")
    # test for a few representative configs (best-by-val per (kind, ngram, mode)), refit on all train
    seen = set()
    for g in grid:
        key = (g[1], g[2], g[3])
        if key in seen: continue
        seen.add(key)
        t = time.time()
        V, clf = fit_bow(S["train"], g[1], g[2], g[3], g[4], g[5])
        tt = time.time() - t
        m = margins(V, clf, S["test"], g[3]); a = acc(m)
        t = time.time(); _ = V.transform([r["prompt"] + r["chosen"] for r in S["test"]] * 3); st = (time.time() - t) / (len(S["test"]) * 3) * 1000
        name = f"bow {g[1]} ngram={g[2]} {g[3]} C={g[4]} binary={g[5]}"
        print(f"{name}: val {g[0]:.3f} test {fmt(a)} train {tt:.1f}s")
        log_result(exp="bow", recipe=name, val=g[0], split="test", train_s=tt, score_s_per_1000=st,
                   selected=(g is grid[0]), **a)
        if g is grid[0]: save_margins("bow_best", "test", m); save_margins("bow_best_cfg", "val", margins(*fit_bow(S["fit"], *g[1:6])[:2], S["val"], g[3]))
    best = grid[0]
    V, clf = fit_bow(S["train"], best[1], best[2], best[3], best[4], best[5])
    names = np.array(V.get_feature_names_out()); w = clf.coef_.ravel(); o = np.argsort(w)
    print("\nTOP + (chosen-like):", ", ".join(f"{names[i]!r}:{w[i]:.2f}" for i in o[::-1][:30]))
    print("TOP - (rejected-like):", ", ".join(f"{names[i]!r}:{w[i]:.2f}" for i in o[:30]))

"""Where do the BoW's refusal phrases sit, and does the project's 128-token left-truncated input keep them?"""
import re
from common import *
from formats import encode
from transformers import AutoTokenizer
from open_chatgpt.models import resolve_model
S = splits(); te = S["test"] + S["train"]
tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
PH = {"sorry": r"\bsorry\b", "don't/do not": r"\bdon['’]?t\b|\bdo not\b", "I'm not sure": r"not sure", "no (first word)": r"^\s*no\b",
      "can't/cannot": r"\bcan['’]?t\b|\bcannot\b", "illegal/law": r"\billegal\b|\blaw\b", "here/here's": r"\bhere\b"}
print("phrase: P(in chosen), P(in rejected), rule acc on pairs where exactly one has it (n), all train+test")
for k, rx in PH.items():
    c = np.array([bool(re.search(rx, r["chosen"], re.I)) for r in te]); rj = np.array([bool(re.search(rx, r["rejected"], re.I)) for r in te])
    one = c != rj
    print(f"  {k:16s} {c.mean():.2f} {rj.mean():.2f}  rule acc {(c[one]).mean():.2f} (n={one.sum()})")
# refusal-ish rule on test: the response with (sorry|don't|not sure|can't) earlier is chosen
REF = r"\bsorry\b|\bdon['’]?t\b|\bdo not\b|not sure|\bcan['’]?t\b|\bcannot\b|^\s*no\b|\bI won['’]?t\b"
for sp in ("val", "test"):
    m = [float(bool(re.search(REF, r["chosen"], re.I))) - float(bool(re.search(REF, r["rejected"], re.I))) for r in S[sp]]
    a = acc(m); print(f"refusal-phrase rule ({sp}): {fmt(a)}; decided {np.mean(np.array(m) != 0):.2f} of pairs")
    log_result(exp="rule", recipe="refusal-phrase rule", split=sp, **a)
# position of the first refusal phrase in the response (chars, tokens) and whether the project's input keeps it
pos_tok, kept, total = [], 0, 0
for r in S["test"]:
    for key in ("chosen", "rejected"):
        resp = r[key]; mt = re.search(REF, resp, re.I)
        if not mt: continue
        total += 1
        n_before = len(tok(resp[:mt.start()], add_special_tokens=False)["input_ids"])
        n_resp = len(tok(resp, add_special_tokens=False)["input_ids"])
        pos_tok.append(n_before)
        kept += (n_resp + 1 - n_before) <= 128   # response end kept; phrase survives if it lies in the last 127 response tokens
print(f"test responses with a refusal phrase: {total}; token position in response: median {np.median(pos_tok):.0f}, 90th pct {np.percentile(pos_tok, 90):.0f}; kept by 128-token left truncation: {kept / total:.3f}")
ids = [encode(tok, r["prompt"], r[k], "proj", 128, True)[0] for r in S["test"] for k in ("chosen", "rejected")]
full = [len(tok(r["prompt"] + r[k], add_special_tokens=False)["input_ids"]) + 1 for r in S["test"] for k in ("chosen", "rejected")]
resp_len = [len(tok(r[k], add_special_tokens=False)["input_ids"]) + 1 for r in S["test"] for k in ("chosen", "rejected")]
full = np.array(full); resp_len = np.array(resp_len)
print(f"project input (128): {np.mean(full > 128):.3f} of test texts truncated; prompt entirely cut in {np.mean(resp_len >= 128):.3f}; response start cut in {np.mean(resp_len > 128):.3f}; fraction of input that is prompt (median) {np.median(1 - np.minimum(resp_len,128) / np.minimum(full,128)):.2f}")

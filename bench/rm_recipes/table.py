"""Print every logged result (results.jsonl) as a compact table."""
import json
from common import RESULTS
for l in open(RESULTS):
    r = json.loads(l)
    if r["exp"] == "embed": print(f"embed  {r['model']} {r['fmt']}: {r['ms_per_text']:.0f} ms/text, {r['mean_tokens']:.0f} tokens"); continue
    ev = r.get("val") if isinstance(r.get("val"), dict) else None
    te = r.get("test") if isinstance(r.get("test"), dict) else (r if r.get("split") == "test" else None)
    s = f"{r['exp']:9s} {r['recipe'][:110]:110s}"
    if isinstance(r.get("val"), float): s += f" val {r['val']:.3f}"
    if r.get("cv"): s += f" cv {r['cv']:.3f}"
    if ev: s += f" val {ev['acc']:.3f}"
    if r.get("split") == "val": s += f" val {r['acc']:.3f}"
    if te: s += f" test {te['acc']:.3f} [{te['lo']:.3f}-{te['hi']:.3f}]"
    if r.get("train_s"): s += f" train {r['train_s']:.0f}s"
    print(s)

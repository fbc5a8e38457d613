#!/usr/bin/env python
"""Fill the model-family table in nbs/index.ipynb (and so README.md) from a run of tests/test_families.py.

    python scripts/family_table.py            # runs the family tests, rewrites the table, regenerates README.md
    python scripts/family_table.py --check    # exit 1 if the committed table differs from a fresh run

The table is never edited by hand: it is rendered from the JSON results the tests write.
"""
import argparse, json, os, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- families:start -->", "<!-- families:end -->"
STAGES = [("sft", "SFT"), ("reward", "reward model"), ("ppo", "PPO"), ("deepspeed", "DeepSpeed ZeRO-3")]
MARK = {"passed": "✅ pass", "failed": "❌ fail", "skipped": "⏭ not run"}


def render(results: dict) -> str:
    "Markdown table from {family: {'params': int, 'class': str, stage: status}}."
    lines = ["| family | model class | tested size | " + " | ".join(n for _, n in STAGES) + " |",
             "|---|---|---|" + "---|" * len(STAGES)]
    for fam in sorted(results):
        r = results[fam]
        size = f"{r['params'] / 1e6:.2f}M params (tiny, from config)" if r.get("params") else "?"
        lines.append(f"| {fam} | `{r.get('class', '?')}` | {size} | " +
                     " | ".join(MARK.get(r.get(k, "skipped"), r.get(k, "?")) for k, _ in STAGES) + " |")
    return "\n".join(lines)


def table_in(text: str) -> str:
    if START not in text or END not in text: return ""
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def run_tests(out: Path) -> dict:
    env = {**os.environ, "OPEN_CHATGPT_FAMILY_RESULTS": str(out)}
    subprocess.run([sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "test_families.py")], env=env, cwd=ROOT)
    return json.loads(out.read_text())


def write_index(table: str):
    "Put the table between the markers in nbs/index.ipynb and regenerate README.md (shared with results_table.py)."
    sys.path.insert(0, str(ROOT / "scripts"))
    from results_table import write_index as write_between
    write_between(table, "families", start=START, end=END)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed table instead of writing it")
    ap.add_argument("--results", help="use this results JSON instead of running the tests")
    a = ap.parse_args()
    res = json.loads(Path(a.results).read_text()) if a.results else run_tests(Path(tempfile.mkdtemp()) / "families.json")
    table = render(res)
    print(table)
    if a.check:
        ok = table_in((ROOT / "README.md").read_text()) == table
        print("ok: README family table is current" if ok else "FAIL: README family table is stale: run scripts/family_table.py")
        sys.exit(0 if ok else 1)
    write_index(table)

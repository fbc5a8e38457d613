#!/usr/bin/env python
"""The algorithm comparison (PPO, DPO, GRPO, RLOO on the same data, SFT start, prompts and judges) from the
`summary-<algo>.json` files of one pipeline directory, into nbs/index.ipynb (and so README.md) between
<!-- compare:start --> and <!-- compare:end -->, with a plot of every algorithm's curve in nbs/images/compare.png.

    for a in ppo dpo grpo rloo; do open-chatgpt pipeline --real --algo $a -o runs/compare --resume; done
    python scripts/compare_table.py runs/compare            # --dry-run prints the Markdown only
    python scripts/compare_table.py runs/compare --seeds runs/compare-s1 runs/compare-s2   # the spread over seeds
"""
import argparse, json, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_table import ROOT, ci, load_note, machine, minutes, write_index  # noqa: E402

ORDER = ("ppo", "dpo", "grpo", "rloo")


def load(run: Path) -> dict:
    found = {p.stem.split("-", 1)[1]: json.loads(p.read_text()) for p in run.glob("summary-*.json")}
    if not found: raise SystemExit(f"no summary-<algo>.json in {run}: run the pipeline with --algo first")
    keys = {a: s.get("sft_answers_key") for a, s in found.items()}
    if len(set(keys.values())) > 1 or None in keys.values():
        raise SystemExit(f"the runs in {run} are not comparable (different SFT policy, prompts, seed or judges: "
                         f"SFT answer keys {keys}); run every --algo with --resume in one directory")
    return {a: found[a] for a in ORDER if a in found} | {a: s for a, s in found.items() if a not in ORDER}


def train_seconds(run: Path, algo: str):
    "The optimisation steps' own time (the sum of `time/step` in the stage's metrics.jsonl), without checkpoint evaluation."
    from open_chatgpt.plumbing import read_metrics   # skips a line cut short by a killed process
    f = run / algo / "metrics.jsonl"
    if not f.exists(): return None
    rows = read_metrics(f)
    return sum(r["time/step"] for r in rows) if rows and all("time/step" in r for r in rows) else None


def plot(runs: dict, path: Path, title: str) -> None:
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, key in zip(axes, ("proxy", "gold")):
        for algo, s in runs.items():
            c = s["curve"]
            if all(key in x for x in c): ax.plot([x["sqrt_kl"] for x in c], [x[key] - c[0][key] for x in c], "o-", label=algo.upper())
        bon = next((s["best_of_n"] for s in runs.values() if s["best_of_n"]), [])
        if bon and key in bon[0]: ax.plot([x["sqrt_kl"] for x in bon], [x[key] - bon[0][key] for x in bon], "s--", c="gray", label="best-of-n")
        ax.axhline(0, color="gray", lw=0.5); ax.set_xlabel(r"$\sqrt{\mathrm{KL}}$ to the SFT policy"); ax.set_ylabel(f"{key} - SFT")
        ax.set_title(f"{key} reward model"); ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9); fig.tight_layout()
    from open_chatgpt.plumbing import save_figure        # stamped with the machine, as the table's header names it
    path.parent.mkdir(parents=True, exist_ok=True); save_figure(fig, path, dpi=110); plt.close(fig)


def qa_cell(s: dict) -> str:
    "Chapter 7's QA probe: the SFT policy's accuracy, the algorithm's, and the questions gained / lost ('-' in older runs)."
    q = s.get("qa_probe")
    if not q or "rl_vs_sft" not in q["flips"]: return "-"
    f, p = q["flips"]["rl_vs_sft"], q["policies"]
    return f"{p['sft']['accuracy']:.2f} -> {p['rl']['accuracy']:.2f} (+{f['gained']} / -{f['lost']})"


def render(run: Path, draw: bool = True) -> str:
    runs = load(run)
    any_ = next(iter(runs.values()))
    j = any_.get("judge")
    draws = max((s["win_rates"].get("gold") or {}).get("rl_vs_sft", {}).get("draws", [1, 1])[1] for s in runs.values())
    lines = [f"Same SFT start, proxy reward model, prompts, sampling and gold judge for every algorithm; "
             f"{any_['n_eval_prompts']} held-out prompts, seed {any_['seed']}"
             + (f", each answer's gold win rate against all {draws} SFT answers to its prompt (`pooled_win_rate`)" if draws > 1 else "")
             + f"; measured on {machine()}."
             + "".join(f" {a.upper()}:{load_note(s)}" for a, s in runs.items() if s.get("load_avg")) + " "
             + (f"Gold judge held-out accuracy {ci(j)}." if j else ""), "",
             "| algorithm | gold win rate vs SFT (95% CI) | gold score - SFT | proxy score - SFT | KL to SFT (nats) | answers that end | length | QA probe, SFT -> algorithm (gained / lost) | steps | training steps | stage wall time | peak RSS (GiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for algo, s in runs.items():
        p, sft = s["policies"][algo], s["policies"]["sft"]
        w = (s["win_rates"].get("gold") or {}).get("rl_vs_sft")
        d = lambda k: "-" if k not in p or k not in sft else f"{p[k] - sft[k]:+.3f}"
        kl = "-" if p.get("kl") is None else f"{p['kl']:.2f}"
        lines.append(f"| {algo.upper()} | {ci(w) if w else '-'} | {d('gold')} | {d('proxy')} | {kl} | "
                     f"{p['eos_frac']:.2f} | {p['length']:.1f} | {qa_cell(s)} | {s['steps']} | {minutes(train_seconds(run, algo))} | "
                     f"{minutes(s['seconds'].get(algo))} | "
                     f"{s['peak_rss_gib'].get(algo) or 0:.2f} |")
    bon = any_["best_of_n"]
    if bon:
        b = bon[-1]
        lines.append(f"| best-of-{b['n']} (no training) | - | {b['gold'] - bon[0]['gold']:+.3f} | {b['proxy'] - bon[0]['proxy']:+.3f} | "
                     f"{b['kl']:.2f} | - | - | - | - | - | - | - |")
    if draw: plot(runs, ROOT / "nbs" / "images" / "compare.png", f"{len(runs)} algorithms, seed {any_['seed']}, {any_['n_eval_prompts']} prompts")
    lines += ["", "*Training steps* is the sum of the optimisation steps' times (`time/step` in each stage's metrics.jsonl); "
              "*stage wall time* adds the evaluation of every checkpoint on the held-out prompts (the curve) and "
              "loading, and for a resumed stage only its last process.",
              "", "![proxy and gold score against sqrt(KL) for every algorithm](images/compare.png)"]
    return "\n".join(lines)


def render_seeds(runs: list) -> str:
    "Each algorithm over several seeds (one pipeline directory per seed, every --algo run in each): per seed and mean +- sd."
    import statistics
    per = [load(r) for r in runs]
    missing = [f"{r}/summary-{a}.json" for r, p in zip(runs, per) for a in p if "gold" not in p[a]["win_rates"]]
    if missing: raise SystemExit(f"no gold judge in {', '.join(missing)}: a seed table needs one")
    from results_table import check_shared
    check_shared([next(iter(p.values())) for p in per], runs)
    algos = [a for a in [*ORDER, *sorted({a for p in per for a in p} - set(ORDER))] if all(a in p for p in per)]
    if not algos: raise SystemExit("no algorithm was run in every one of " + ", ".join(map(str, runs)))
    ms = lambda xs, f: f"{f.format(statistics.mean(xs))} ± {f.format(statistics.stdev(xs)).lstrip('+')}" if len(xs) > 1 else f.format(xs[0])
    ms_ = lambda xs, f: "-" if None in xs else ms(xs, f)                  # a quantity some seed did not record
    first = next(iter(per[0].values()))
    lines = [f"Each algorithm with seeds {', '.join(str(next(iter(p.values()))['seed']) for p in per)} (the seed sets the data "
             "order, the sampling and the heads; SFT model, reward model, gold judge and held-out prompts are shared), "
             "each seed's algorithms scored against that seed's own sample of SFT answers "
             f"({', '.join(str(next(iter(p.values()))['win_rates']['gold']['rl_vs_sft'].get('draws', [1, 1])[1]) for p in per)} "
             f"per prompt), {first['n_eval_prompts']} held-out prompts; measured on {machine()}.", "",
             "| algorithm | steps | gold win rate vs SFT, per seed (95% CI) | win rate, mean ± sd | gold gain | proxy gain | KL (nats) | answers that end | length |",
             "|---|---|---|---|---|---|---|---|---|"]
    missing = [f"{r}/summary-{a}.json" for r, p in zip(runs, per) for a in algos if "gold" not in p[a]["win_rates"]]
    if missing: raise SystemExit(f"no gold judge in {', '.join(missing)}: a seed table compares gold win rates")
    for a in algos:
        ss = [p[a] for p in per]
        w = [s["win_rates"]["gold"]["rl_vs_sft"] for s in ss]
        d = lambda k: [s["policies"][a][k] - s["policies"]["sft"][k] for s in ss]
        v = lambda k: [s["policies"][a][k] for s in ss]
        steps = sorted({s["steps"] for s in ss})
        lines.append(f"| {a.upper()} | {'/'.join(map(str, steps))} | {'; '.join(ci(x) for x in w)} | "
                     f"{ms([x['win_rate'] for x in w], '{:.3f}')} | {ms(d('gold'), '{:+.3f}')} | {ms(d('proxy'), '{:+.3f}')} | "
                     f"{ms_(v('kl'), '{:.2f}')} | {ms(v('eos_frac'), '{:.2f}')} | {ms(v('length'), '{:.1f}')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="print the table; write neither the README nor the plot")
    ap.add_argument("--seeds", type=Path, nargs="+", metavar="RUN",
                    help="the same comparison in other directories with other seeds: a seed table (compare-seeds markers)")
    a = ap.parse_args()
    if a.seeds:
        table = render_seeds([a.run, *a.seeds])
        print(table)
        if not a.dry_run: write_index(table, "compare-seeds", "<!-- compare-seeds:start -->", "<!-- compare-seeds:end -->")
    else:
        table = render(a.run, draw=not a.dry_run)
        print(table)
        if not a.dry_run: write_index(table, "compare", "<!-- compare:start -->", "<!-- compare:end -->")

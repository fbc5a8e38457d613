#!/usr/bin/env python
"""Put a finished pipeline run's results into nbs/index.ipynb (and so README.md), between
<!-- results-NAME:start --> and <!-- results-NAME:end -->, from the run's own files: no figure is typed by hand.
The run's over-optimisation plot is copied to nbs/images/overoptimisation-NAME.png and shown under the tables.

    python scripts/results_table.py runs/demo                    # after `make demo`
    python scripts/results_table.py runs/demo-tiny --name tiny   # after `make demo-tiny`
    python scripts/results_table.py runs/demo --dry-run          # print the Markdown only
    python scripts/results_table.py runs/demo --seeds runs/demo-s1 runs/demo-s2   # the spread over seeds (README, ch. 10)
    python scripts/results_table.py runs/demo-nosft --name nosft --seeds runs/demo-nosft-s1 runs/demo-nosft-s2
"""
import argparse, json, os, platform, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"): cpu = line.split(":", 1)[1].strip(); break
    except OSError: pass
    mem = ""
    try: mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM"
    except (ValueError, OSError): pass
    import torch
    return f"{cpu}, {os.cpu_count()} cores{mem}, no GPU; Python {platform.python_version()}, torch {torch.__version__}"


def cell(text, n: int = 150) -> str:
    text = " ".join((text or "").split()).replace("|", "\\|")
    return (text[:n] + "...") if len(text) > n else text or "(empty)"


def ci(x: dict) -> str: return f"{x['accuracy' if 'accuracy' in x else 'win_rate']:.3f} ({x['ci_low']:.3f}-{x['ci_high']:.3f})"


def epochs(n) -> str: return "epochs" if n is None else f"{n} epoch" + ("" if n == 1 else "s")


def minutes(s) -> str: return "-" if s is None else f"{s / 60:.1f} min"


def load_note(s: dict) -> str:
    "The 1-minute load average at the start and end of the run: above what the run itself explains, the CPU was shared."
    la = s.get("load_avg")
    if not la: return ""
    cores = os.cpu_count() or 1        # at the end the run's own torch threads (one per core) count: about `cores`;
    busy = la[-1] > cores + 0.5        # at the start a run just before it (e.g. the previous --algo) still counts
    return (f" Load average {la[0]:.1f} at the start, {la[-1]:.1f} at the end"
            + (" (the machine was shared with other work: times are upper bounds)." if busy else "."))


def total_row(sec: dict, algo: str) -> str:
    "The total wall time; for a resumed run (one process did not time every stage) the sum of the stages, said so."
    stages = sum(sec.get(k) or 0 for k in ("sft", "reward", "judge", algo, "eval"))
    if sec.get("total") is not None and stages <= 1.05 * sec["total"]: return f"| **total** | | **{minutes(sec['total'])}** | |"
    return f"| **total** | sum of the stages (the run was resumed, so no one process timed them all) | **{minutes(stages)}** | |"


def eval_note(sec: dict) -> str:
    "What the evaluation's time counts when it reused answers sampled by an earlier evaluation of the run."
    if sec.get("eval_this_run") is None or sec.get("eval") == sec["eval_this_run"] and not sec.get("eval_uncounted"): return ""
    note = f" (this process {minutes(sec['eval_this_run'])}, plus sampling the answers it reused from an earlier evaluation"
    return note + (f"; the {' and '.join(sec['eval_uncounted'])} answers' sampling time was not recorded)" if sec.get("eval_uncounted") else ")")


def load_summary(run: Path) -> dict:
    "The PPO run's summary (other algorithms may have run in the same directory afterwards: --algo X --resume)."
    last = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else None
    if not (run / "summary-ppo.json").exists():
        if last is None: raise SystemExit(f"no summary.json in {run}: run the pipeline first")
        return last
    s = json.loads((run / "summary-ppo.json").read_text())
    if last is not None and last.get("sft_answers_key") != s.get("sft_answers_key"):   # SFT/reward retrained since
        raise SystemExit(f"{run}/summary-ppo.json is from an earlier run in this directory (its SFT answers differ from "
                         f"summary.json's): delete {run}/ppo and run the pipeline there again with --algo ppo --resume "
                         "(and the run's own flags, e.g. --real), or render another run")
    return s


def check_shared(summaries: list, runs: list) -> None:
    "Seed runs must share the reward model (its accuracy and baselines; the shift fit on each seed's SFT answers may differ), the judge and the prompts."
    def what(s):
        rm, j = s["reward_model"], s.get("judge") or {}
        return dict(reward_model=(rm["accuracy"], rm["n"], {k: v.get("accuracy") for k, v in (rm.get("baselines") or {}).items()}),
                    judge=(j.get("accuracy"), j.get("config")), prompts=s["n_eval_prompts"])
    first = what(summaries[0])
    for s, run in zip(summaries[1:], runs[1:]):
        diff = [k for k, v in what(s).items() if v != first[k]]
        if diff: raise SystemExit(f"{run} does not share the {', '.join(diff)} of {runs[0]}: copy its sft/, reward/ and "
                                  "judge.json before running another seed (README), or render the runs separately")


def render(run: Path, name: str, copy_image: bool = True) -> str:
    s = load_summary(run)
    cfg = json.loads((run / "pipeline_config.json").read_text())
    algo, rm, j, sec, rss = s["algo"], s["reward_model"], s.get("judge"), s["seconds"], s["peak_rss_gib"]
    sft = json.loads((run / "sft" / "stage.json").read_text())
    steps = sft["config"].get("max_steps")
    b = rm.get("baselines") or {}
    from open_chatgpt.pipeline import _stage_dtype, _stage_info   # the precision its RL stage sampled in (older runs: fp32)
    short = lambda d: {"bfloat16": "bf16", "float16": "fp16"}.get(d, "fp32")   # (older runs recorded no SFT precision: fp32)
    sampled = (f"SFT steps in {short(sft.get('precision'))}, " if steps != 0 else "") + \
              f"answers sampled in {short(_stage_dtype(run / algo))}"
    from open_chatgpt.ppo import resolve_generation_dtype           # PPO's and GRPO's update precision (runs before it: fp32)
    upd = resolve_generation_dtype((_stage_info(run / algo).get("config") or {}).get("train_dtype") or "float32", "cpu")
    if upd != "float32": sampled += f", {algo.upper()} updates in {short(upd)}"   # named where it is not the default
    lines = [f"Policy `{cfg['model'] or 'tiny GPT-2'}`" + (f" + LoRA r={cfg['lora']['r']}" if cfg.get("lora") else "")
             + f", proxy reward model `{cfg['reward_model'] or 'from the SFT model'}`"
             + (f", gold judge `{j['config']['backbone']}`" if j else "") + f", data `{cfg['data']}`, seed {s['seed']}, {sampled}; "
             f"measured on {machine()}." + load_note(s), "",
             "| stage | result | time | peak RSS (GiB) |", "|---|---|---|---|",
             f"| SFT | {'none (the base model)' if steps == 0 else f'{steps} steps' if steps else epochs(sft['config'].get('epochs'))} | "
             f"{minutes(sec.get('sft'))} | {rss.get('sft') or 0:.2f} |",
             f"| proxy reward model | held-out accuracy **{ci(rm)}**, n={rm['n']}; bag of words {ci(b['bag_of_words'])}, "
             f"length {ci(b['length'])} | {minutes(sec.get('reward'))} | {rss.get('reward') or 0:.2f} |"]
    if j: lines.append(f"| gold judge (never seen by {algo.upper()}) | held-out accuracy **{ci(j)}**, n={j['n_eval']}; "
                       f"trained once on {j['n_train']} comparisons in {minutes(j['seconds'])}, cached | "
                       f"{minutes(sec.get('judge'))} ({'trained in this run' if (sec.get('judge') or 0) >= 0.9 * j['seconds'] else 'load'}) | - |")
    lines += [f"| {algo.upper()} | {s['steps']} steps, evaluated every checkpoint | {minutes(sec.get(algo))} | {rss.get(algo) or 0:.2f} |",
              f"| evaluation | {s['n_eval_prompts']} held-out prompts, sampled answers; best-of-{s['best_of_n'][-1]['n'] if s['best_of_n'] else 1}"
              f"{eval_note(sec)} | {minutes(sec.get('eval'))} | {rss.get('eval') or 0:.2f} |",
              total_row(sec, algo), ""]
    keys = [("proxy", "proxy score"), ("gold", "gold score"), ("kl", "KL to the start (nats)"), ("length", "length (tokens)"),
            ("eos_frac", "answers that end")]
    keys = [(k, h) for k, h in keys if any(k in p for p in s["policies"].values())]
    lines += ["| policy | " + " | ".join(h for _, h in keys) + " |", "|---|" + "---|" * len(keys)]
    no_sft = steps == 0                                     # the SFT stage saved the base model: "SFT" is the start
    names = {"base": "untouched base model", "sft": "start (the base model, no SFT)" if no_sft else "SFT",
             algo: f"{algo.upper()} (final)"}
    for k, p in s["policies"].items():
        lines.append(f"| {names.get(k, k)} | " + " | ".join("-" if p.get(x) is None else f"{p[x]:.3f}" for x, _ in keys) + " |")
    wr = s["win_rates"].get("gold")
    if wr:
        label = dict(rl_vs_sft=f"{algo.upper()} vs SFT", sft_vs_base="SFT vs base", rl_vs_base=f"{algo.upper()} vs base")
        if no_sft: label.update(rl_vs_sft=f"{algo.upper()} vs the start", rl_vs_base=f"{algo.upper()} vs base (other samples)",
                                sft_vs_base="null check, the base model against itself (two samples; should be near 0.5)")
        pooled = any(max(w.get("draws") or [1]) > 1 for w in wr.values())
        how = ("every answer against every answer of the other policy to the same prompt, ties count 1/2; 95% Wilson "
               "interval on the effective number of prompts, `pooled_win_rate`" if pooled else "ties count 1/2; 95% Wilson interval")
        lines += ["", f"Gold-judge win rates ({how}): " +
                  "; ".join(f"**{label[k]} {ci(w)}**" for k, w in wr.items()) + "."]
    q = s.get("qa_probe")
    if q:                                                   # chapter 7's probe: questions no reward model saw
        who = dict(base="untouched base model", sft="start" if no_sft else "SFT", rl=algo.upper())
        lines += ["", f"QA probe (chapter 7: {q['policies'][next(iter(q['policies']))]['n']} short factual questions that no "
                  "reward model saw, greedy answers, correct when an accepted answer appears as a word): " +
                  "; ".join(f"**{who[k]} {ci(v)}**" for k, v in q["policies"].items()) + ". Paired, questions gained / lost: " +
                  "; ".join(f"{who[k.split('_vs_')[0]]} vs {who[k.split('_vs_')[1]]} +{f['gained']} / -{f['lost']} "
                            f"(sign test p = {f['p_value']:.2g})" for k, f in q["flips"].items()) + "."]
    if s["best_of_n"]:
        lines += ["", f"| best-of-n from the {'start' if no_sft else 'SFT'} policy (picked by the proxy) | " + " | ".join(f"n={x['n']}" for x in s["best_of_n"]) + " |",
                  "|---|" + "---|" * len(s["best_of_n"]),
                  "| KL (nats) | " + " | ".join(f"{x['kl']:.2f}" for x in s["best_of_n"]) + " |",
                  "| proxy | " + " | ".join(f"{x['proxy']:+.3f}" for x in s["best_of_n"]) + " |",
                  "| gold | " + " | ".join(f"{x['gold']:+.3f}" for x in s["best_of_n"]) + " |"]
    c = s["curve"]
    lines += ["", f"| {algo.upper()} step | " + " | ".join(str(x["step"]) for x in c) + " |", "|---|" + "---|" * len(c)]
    for k, h in (("sqrt_kl", "sqrt KL"), ("proxy", "proxy"), ("gold", "gold"), ("length", "length"), ("eos_frac", "ended"),
                 ("qa", "QA probe")):
        if all(k in x for x in c): lines.append(f"| {h} | " + " | ".join(f"{x[k]:.3f}" for x in c) + " |")
    if len(c) > 1 and all("qa_lost" in x for x in c[1:]):           # paired against the SFT policy's answers
        lines.append("| QA vs SFT: +gained / -lost (sign test p) | - | " + " | ".join(
            f"+{x['qa_gained']} / -{x['qa_lost']} ({x['qa_p']:.2g})" for x in c[1:]) + " |")
    img = ROOT / "nbs" / "images" / f"overoptimisation-{name}.png"
    src = run / "eval" / f"overoptimisation-{algo}.png"
    src = src if src.exists() else run / "eval" / "overoptimisation.png"
    if src.exists():
        if copy_image: img.parent.mkdir(parents=True, exist_ok=True); shutil.copy(src, img)
        lines += ["", f"![over-optimisation curve of this run](images/{img.name})"]   # README: nbs/images/ (make readme)
    lines += ["", f"| prompt | {'start (no SFT)' if no_sft else 'SFT'} | {algo.upper()} |", "|---|---|---|"]
    for x in s["samples"]:
        p = x["prompt"].rsplit("Human:", 1)[-1].replace("Assistant:", "").strip()
        sc = lambda who: "" if f"gold_{who}" not in x else f" (proxy {x[f'proxy_{who}']:+.2f}, gold {x[f'gold_{who}']:+.2f})"
        lines.append(f"| *{x['kind']}* {cell(p, 90)} | {cell(x['sft'])}{sc('sft')} | {cell(x['rl'])}{sc('rl')} |")
    return "\n".join(lines)


def render_seeds(runs: list) -> str:
    """One row per seed (each run's summary-ppo.json) and the mean and standard deviation over them; when every run
    followed the QA probe along its checkpoints, each seed's curve by step below."""
    import statistics
    rows, seeds, vals = [], [], {k: [] for k in ("win", "gold", "proxy", "kl", "length", "eos_frac")}
    summaries = [load_summary(r) for r in runs]
    check_shared(summaries, runs)
    for run, s in zip(runs, summaries):
        if "gold" not in s["win_rates"]: raise SystemExit(f"{run}: no gold judge in this run's summary; a seed table needs one")
        start, final, w = s["policies"]["sft"], s["policies"][s["algo"]], s["win_rates"]["gold"]["rl_vs_sft"]
        v = dict(win=w["win_rate"], gold=final["gold"] - start["gold"], proxy=final["proxy"] - start["proxy"], kl=final["kl"],
                 length=final["length"], eos_frac=final["eos_frac"])
        for k in vals: vals[k].append(v[k])
        seeds.append(str(s["seed"]))
        rows.append(f"| {s['seed']} | {ci(w)} | {v['gold']:+.3f} | {v['proxy']:+.3f} | {v['kl']:.2f} | {v['length']:.1f} | "
                    f"{v['eos_frac']:.2f} | {s['steps']} |")
    ms = lambda k, f: f"{f.format(statistics.mean(vals[k]))} ± {f.format(statistics.stdev(vals[k])).lstrip('+')}" \
        if len(vals[k]) > 1 else f.format(vals[k][0])
    rows.append(f"| **mean ± sd** | {ms('win', '{:.3f}')} | {ms('gold', '{:+.3f}')} | {ms('proxy', '{:+.3f}')} | "
                f"{ms('kl', '{:.2f}')} | {ms('length', '{:.1f}')} | {ms('eos_frac', '{:.2f}')} | |")
    sft = [r / "sft" / "stage.json" for r in runs]             # a copied SFT stage records the same settings (seed included)
    ids = {json.dumps(json.loads(f.read_text()).get("settings"), sort_keys=True) if f.exists() else
           json.dumps(s["reward_model"].get("normalisation"), sort_keys=True) for f, s in zip(sft, summaries)}
    shared_sft = len(ids) == 1
    what = ("the prompt order, the sampling and the value head; the SFT model, the reward model" if shared_sft else
            "the SFT run, the prompt order, the sampling and the value head; the reward model (up to the shift that "
            "normalises it on each seed's SFT answers)")
    table = "\n".join([f"PPO with seeds {', '.join(seeds)} (the seed sets {what}, the gold judge and the held-out prompts "
                       "are shared), each scored against its own sample of the start policy; "
                       f"measured on {machine()}.", "",
                       "| seed | gold win rate vs the start (95% CI) | gold gain | proxy gain | KL (nats) | length | answers that end | steps |",
                       "|---|---|---|---|---|---|---|---|"] + rows)
    if all(all("qa" in c for c in s["curve"]) for s in summaries): table += "\n" + render_qa_seeds(summaries)
    return table


def render_qa_seeds(summaries: list) -> str:
    "Each seed's checkpoints: KL, gold gain over the start, and the QA probe with the questions gained and lost against it."
    out = ["", "Along each run (`qa_curve`: the QA probe at every checkpoint, paired with the start policy's answers to "
           "the same 99 questions; sign-test p in brackets):", ""]
    steps = [c["step"] for c in summaries[0]["curve"]]
    out += ["| seed | | " + " | ".join(f"step {k}" for k in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for s in summaries:
        c = {r["step"]: r for r in s["curve"]}
        g0 = c[0]["gold"]
        qa = lambda r: f"{r['qa']:.3f}" + (f" (+{r['qa_gained']} / -{r['qa_lost']}, {r['qa_p']:.2g})" if "qa_lost" in r else "")
        for name, f in (("KL (nats)", lambda r: f"{r['kl']:.2f}"), ("gold - start", lambda r: f"{r['gold'] - g0:+.3f}"),
                        ("QA probe", qa)):
            out.append(f"| {s['seed']} | {name} | " + " | ".join(f(c[k]) if k in c else "-" for k in steps) + " |")
    return "\n".join(out)


def write_index(table: str, name: str, start: str = None, end: str = None, notebook: str = "index.ipynb", readme: bool = True):
    START, END = start or f"<!-- results-{name}:start -->", end or f"<!-- results-{name}:end -->"
    import nbformat
    p = ROOT / "nbs" / notebook
    nb = nbformat.read(p, as_version=4)
    for c in nb.cells:
        if c.cell_type == "markdown" and START in c.source:
            head, rest = c.source.split(START, 1)
            c.source = head + START + "\n" + table + "\n" + END + rest.split(END, 1)[1]
            break
    else: raise SystemExit(f"no {START} marker in {p}")
    nbformat.write(nb, p)
    if readme: subprocess.run(["make", "-C", str(ROOT), "readme"], check=True)   # README.md from the index, image paths fixed


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a pipeline output directory with summary.json")
    ap.add_argument("--name", default="real", help="which table: results-NAME markers (real, tiny)")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--seeds", type=Path, nargs="+", default=None,
                    help="more runs of the same configuration with other seeds: a seed table (seeds-NAME markers) in the "
                         "README and chapter 10, from RUN and these")
    a = ap.parse_args()
    if a.seeds:
        table = render_seeds([a.run, *a.seeds])
        print(table)
        if not a.dry_run:
            marks = f"<!-- seeds-{a.name}:start -->", f"<!-- seeds-{a.name}:end -->"   # one seed table per configuration
            write_index(table, "seeds", *marks, "10_pipeline.ipynb", readme=False)
            write_index(table, "seeds", *marks)
        sys.exit(0)
    table = render(a.run, a.name, copy_image=not a.dry_run)
    print(table)
    if not a.dry_run: write_index(table, a.name)

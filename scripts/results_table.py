#!/usr/bin/env python
"""Put a finished pipeline run's results into nbs/index.ipynb (and so README.md), between
<!-- results-NAME:start --> and <!-- results-NAME:end -->, from the run's own files: no figure is typed by hand.

    python scripts/results_table.py runs/demo                    # after `make demo`
    python scripts/results_table.py runs/demo-tiny --name tiny   # after `make demo-tiny`
    python scripts/results_table.py runs/demo --dry-run  # print the Markdown only
"""
import argparse, json, os, platform, subprocess, sys
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


def cell(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    text = text.replace("|", "\\|")
    return (text[:n] + "...") if len(text) > n else text or "(empty)"


def steps(c: dict) -> str:
    return f"{c['max_steps']} steps" if c.get("max_steps") else f"{c.get('epochs')} epochs"


def render(run: Path) -> str:
    s = json.loads((run / "summary.json").read_text())
    cfg = json.loads((run / "pipeline_config.json").read_text())
    r, k = s["held_out_reward"], s["kl_to_reference"]
    stages = {st: json.loads((run / st / "stage.json").read_text()) for st in ("sft", "reward")}
    ev = json.loads((run / "reward" / "eval.json").read_text())
    rss = s.get("peak_rss_gib", {})
    lines = [f"Policy `{cfg['model'] or 'tiny GPT-2'}`"
             + (f" + LoRA r={cfg['lora']['r']}" if cfg.get("lora") else "")
             + f", reward model `{cfg['reward_model'] or 'from the SFT model'}`, data `{cfg['data']}`; "
             f"measured on {machine()}.", "",
             "| stage | result | time | peak RSS (GiB) |", "|---|---|---|---|",
             f"| SFT | {steps(stages['sft']['config'])} | {stages['sft']['seconds'] / 60:.1f} min | "
             f"{rss.get('sft') or 0:.2f} |",
             f"| reward model | {steps(stages['reward']['config'])}; held-out accuracy {ev['accuracy']:.3f} (95% CI {ev['ci_low']:.3f}-{ev['ci_high']:.3f}, "
             f"n={ev.get('n', '?')}) | {stages['reward']['seconds'] / 60:.1f} min | {rss.get('reward') or 0:.2f} |",
             f"| PPO | {s['steps']} steps; held-out reward {r['sft']:.3f} -> **{r['ppo']:.3f}** (n={r['n']}); "
             f"KL to the reference {k['end']:.2f} nats (target {k['target']}) | {s['ppo_seconds'] / 60:.1f} min | "
             f"{rss.get('ppo') or 0:.2f} |",
             f"| **total** | | **{s.get('total_seconds', 0) / 60:.1f} min** | |", "",
             "Peak RSS is the process's peak at the end of each stage (the stages run in one process).", "",
             "| prompt | after SFT (reward) | after PPO (reward) |", "|---|---|---|"]
    for x in s["samples"]:
        p = x["prompt"].rsplit("Human:", 1)[-1].replace("Assistant:", "").strip()
        lines.append(f"| *{x.get('kind', '')}* {cell(p, 90)} | {cell(x['sft'])} ({x['sft_reward']:+.2f}) | "
                     f"{cell(x['ppo'])} ({x['ppo_reward']:+.2f}) |".replace("\n", " "))
    return "\n".join(lines)


def write_index(table: str, name: str, start: str = None, end: str = None):
    START, END = start or f"<!-- results-{name}:start -->", end or f"<!-- results-{name}:end -->"
    import nbformat
    p = ROOT / "nbs" / "index.ipynb"
    nb = nbformat.read(p, as_version=4)
    for c in nb.cells:
        if c.cell_type == "markdown" and START in c.source:
            head, rest = c.source.split(START, 1)
            c.source = head + START + "\n" + table + "\n" + END + rest.split(END, 1)[1]
            break
    else: raise SystemExit(f"no {START} marker in {p}")
    nbformat.write(nb, p)
    subprocess.run([str(Path(sys.executable).parent / "jupyter"), "nbconvert", "--log-level", "WARN", "--to", "markdown",
                    str(p), "--output-dir", str(ROOT), "--output", "README"], check=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a pipeline output directory with summary.json")
    ap.add_argument("--name", default="real", help="which table: results-NAME markers (real, tiny)")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    table = render(a.run)
    print(table)
    if not a.dry_run: write_index(table, a.name)

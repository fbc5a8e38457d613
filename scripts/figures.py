#!/usr/bin/env python
"""Make every chapter's key figure from one finished pipeline run, into nbs/images/ (the chapters show them in markdown).

    open-chatgpt pipeline --real -o runs/demo          # the full-size run of chapter 10 (hours on a CPU)
    python scripts/figures.py runs/demo                # -> nbs/images/*.png, captions.txt, figures.json
    python scripts/figures.py /tmp/figrun --out /tmp/img

| figure              | chapter | from                                                           |
|---------------------|---------|----------------------------------------------------------------|
| sft_loss.png        | 3       | sft/metrics.jsonl (skipped, with a caption saying so, if the run skipped SFT) |
| rm_accuracy.png     | 4       | reward/metrics.jsonl, reward/eval.json (held-out accuracy, margin, baselines) |
| gae_credit.png      | 5       | computed: `compute_gae` on one sparse terminal reward at a few lambdas |
| ppo_reward_kl.png   | 6       | ppo/metrics.jsonl (and the held-out checkpoints of ppo/curve.jsonl) |
| ppo_dials.png       | 6       | `open_chatgpt.ppo.plot_dials(history, path, title)`, when the package has it |
| zero_memory.png     | 11      | computed: `zero_memory` per ZeRO stage for OPT-125m and OPT-1.3b |

Every figure's footer names the run (directory, model, seed) and the machine (CPU, cores, GPU, torch);
`figures.json` records the same, the date, and each file with its caption.
"""
import argparse, datetime, json, os, platform, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from open_chatgpt.plumbing import atomic_write_text, read_metrics

GAE_LAMBDAS = (0.0, 0.5, 0.8, 0.95, 1.0)
ZERO_MODELS = ("opt-125m", "opt-1.3b")   # shapes of open_chatgpt.distributed.MODEL_SHAPES
ZERO_GPUS = 8


# ---- what ran, and where
def machine() -> dict:
    "CPU model, cores, GPU (if any), Python and torch versions of this machine."
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"): cpu = line.split(":", 1)[1].strip(); break
    except OSError: pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return dict(cpu=cpu, cores=os.cpu_count(), gpu=gpu, python=platform.python_version(), torch=torch.__version__,
                system=f"{platform.system()} {platform.release()}")


def machine_text(m: dict) -> str:
    return f"{m['cpu']}, {m['cores']} cores, {m['gpu'] or 'no GPU'}, torch {m['torch']}"


def _json(path: Path) -> dict:
    try: return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError): return {}


def run_info(run: Path) -> dict:
    "Directory, policy, reward model, seed and RL algorithm of a pipeline run (from pipeline_config.json and summary.json)."
    cfg, summ = _json(run / "pipeline_config.json"), _json(run / "summary.json")
    if not cfg and not summ: raise SystemExit(f"{run} is not a pipeline run directory (no pipeline_config.json or summary.json)")
    model = cfg.get("model", summ.get("model"))
    if not model:
        t = cfg.get("tiny") or {}
        model = f"embedded tiny GPT-2 (n_layer={t.get('n_layer', '?')}, n_embd={t.get('n_embd', '?')})"
    rm = cfg.get("reward_model") or "the SFT model"
    return dict(dir=str(run), model=model, reward_model=rm, seed=cfg.get("seed", summ.get("seed")),
                algo="ppo", lora=cfg.get("lora") is not None)   # the PPO figures read ppo/ whatever ran last


def footer(info: dict, m: dict) -> str:
    "The line under every figure: which run, which machine."
    return f"run {info['dir']} (model {info['model']}, seed {info['seed']}) | {machine_text(m)}"


def save(fig, path: Path, foot: str) -> Path:
    "Write `fig` with `foot` under it, atomically."
    fig.text(0.01, 0.005, foot, fontsize=6.5, color="0.35", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.045, 1, 1))
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110); plt.close(fig); os.replace(tmp, path)
    return path


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None and "step" in r]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


# ---- chapter 3: SFT loss
def sft_skipped(run: Path) -> bool:
    "Whether the run skipped SFT (`sft.skip`, `sft.max_steps=0`, or no logged loss)."
    cfg = _json(run / "pipeline_config.json").get("sft") or {}
    stage = (_json(run / "sft" / "stage.json").get("config") or {})
    if cfg.get("skip") or stage.get("skip") or cfg.get("max_steps") == 0 or stage.get("max_steps") == 0: return True
    return not any(r.get("train_loss") is not None or r.get("eval_loss") is not None
                   for r in read_metrics(run / "sft" / "metrics.jsonl"))


def fig_sft_loss(run: Path, path: Path, info: dict, foot: str) -> str:
    rows = read_metrics(run / "sft" / "metrics.jsonl")
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for key, style in (("train_loss", "-"), ("eval_loss", "--")):
        s, v = _series(rows, key)
        if s: ax.plot(s, v, style, marker="o" if len(s) < 30 or key == "eval_loss" else None, ms=4, label=key.replace("_", " "))
    ax.set(xlabel="optimiser step", ylabel="cross-entropy per response token (nats)",
           title=f"SFT loss: {info['model']}{' + LoRA' if info['lora'] else ''}")
    ax.legend()
    save(fig, path, foot)
    s, v = _series(rows, "eval_loss")
    return (f"SFT train and held-out loss per response token; held-out {v[0]:.3f} -> {v[-1]:.3f} nats"
            if len(v) >= 2 else "SFT train and held-out loss per response token")


# ---- chapter 4: reward model accuracy
def fig_rm_accuracy(run: Path, path: Path, info: dict, foot: str) -> str:
    rows, ev = read_metrics(run / "reward" / "metrics.jsonl"), _json(run / "reward" / "eval.json")
    last = max([r["step"] for r in rows if "step" in r] or [0])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    s, v = _series(rows, "train_acc")
    if s: a.plot(s, v, "-", marker="." if len(s) < 30 else None, color="C0", alpha=0.6, label="train (running mean)")
    s, v = _series(rows, "eval_acc")
    if s:
        a.plot(s, v, "o-", color="C1", ms=4, label="held-out")
        _, lo = _series(rows, "eval_ci_low"); _, hi = _series(rows, "eval_ci_high")
        if len(lo) == len(s): a.fill_between(s, lo, hi, color="C1", alpha=0.15)
    if "accuracy" in ev:
        a.errorbar([last], [ev["accuracy"]], yerr=[[ev["accuracy"] - ev["ci_low"]], [ev["ci_high"] - ev["accuracy"]]],
                   fmt="D", color="C3", capsize=4, label=f"held-out, final: {ev['accuracy']:.3f} (n={ev.get('n')})")
    for (name, base), color in zip((ev.get("baselines") or {}).items(), ("C2", "C4")):
        a.axhline(base["accuracy"], color=color, ls="--", lw=1, label=f"{name.replace('_', ' ')} baseline {base['accuracy']:.3f}")
        a.axhspan(base["ci_low"], base["ci_high"], color=color, alpha=0.1)
    a.axhline(0.5, color="gray", lw=0.5)
    a.set(xlabel="optimiser step", ylabel="pairwise accuracy", title="reward model: accuracy (95% Wilson CIs)")
    a.legend(fontsize=7)
    s, v = _series(rows, "eval_margin")
    if s: b.plot(s, v, "o-", color="C1", ms=4, label="held-out mean margin")
    if "mean_margin" in ev: b.plot([last], [ev["mean_margin"]], "D", color="C3", label=f"final: {ev['mean_margin']:.3f}")
    b.axhline(0, color="gray", lw=0.5)
    b.set(xlabel="optimiser step", ylabel=r"mean $r_c - r_r$", title="held-out margin")
    b.legend(fontsize=7)
    if last == 0:   # a linear probe alone (epochs=0): one point, no curve
        for ax in (a, b): ax.set_xlim(-1, 1)
    save(fig, path, foot)
    if "accuracy" not in ev: return "reward model training accuracy (the run wrote no reward/eval.json)"
    bl = ev.get("baselines") or {}
    extra = "; ".join(f"{k.replace('_', ' ')} {x['accuracy']:.3f} ({x['ci_low']:.3f}-{x['ci_high']:.3f})" for k, x in bl.items())
    return (f"reward model held-out accuracy {ev['accuracy']:.3f} (95% CI {ev['ci_low']:.3f}-{ev['ci_high']:.3f}, "
            f"n={ev.get('n')})" + (f"; baselines: {extra}" if extra else ""))


# ---- chapter 5: GAE credit assignment (computed)
def gae_credit(T: int = 12, value: float = 0.3, lambdas=GAE_LAMBDAS, gamma: float = 1.0) -> dict:
    "Per-token advantages of one response of `T` tokens with reward 1 at its end and a flat value, for each lambda."
    import torch
    from open_chatgpt.ppo_core import compute_gae
    rewards = torch.zeros(1, T); rewards[0, -1] = 1.0
    values, mask = torch.full((1, T), value), torch.ones(1, T)
    return {lam: compute_gae(rewards, values, mask, gamma=gamma, lam=lam)[0][0].tolist() for lam in lambdas}


def fig_gae_credit(run: Path, path: Path, info: dict, foot: str, T: int = 12, value: float = 0.3) -> str:
    adv = gae_credit(T, value)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for lam, a in adv.items(): ax.plot(range(T), a, "o-", ms=3, label=f"$\\lambda$ = {lam}")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(xlabel="response token t", ylabel=r"advantage $\hat A_t$",
           title=f"GAE credit for one reward of 1 at the last token ($\\gamma$=1, V={value})")
    ax.legend(fontsize=8)
    save(fig, path, foot)
    return (f"per-token GAE advantages of a {T}-token response with reward 1 at its end and V={value}: lambda=0 credits "
            "only the last token, lambda=1 every token equally (computed with open_chatgpt.ppo_core.compute_gae)")


# ---- chapter 6: PPO reward and KL
def fig_ppo_reward_kl(run: Path, path: Path, info: dict, foot: str) -> str:
    stage = run / info["algo"]
    rows, curve = read_metrics(stage / "metrics.jsonl"), read_metrics(stage / "curve.jsonl")
    cfg = _json(stage / "stage.json").get("config") or {}
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    s, v = _series(rows, "env/reward_mean")
    if s:
        _, sd = _series(rows, "env/reward_std")
        a.plot(s, v, "-", color="C0", label="proxy reward, training batch")
        if len(sd) == len(v): a.fill_between(s, [x - y for x, y in zip(v, sd)], [x + y for x, y in zip(v, sd)], color="C0", alpha=0.15)
    s, v = _series(rows, "objective/rlhf_reward")
    if s: a.plot(s, v, "-", color="C2", lw=1, label="score - KL penalty (what PPO maximises)")
    for key, color in (("proxy", "C1"), ("gold", "C3")):
        s, v = _series(curve, key)
        if s: a.plot(s, v, "o--", color=color, ms=4, label=f"{key}, held-out prompts")
    a.set(xlabel=f"{info['algo'].upper()} step", ylabel="reward", title="reward")
    a.legend(fontsize=7)
    s, v = _series(rows, "objective/kl")
    if s: b.plot(s, v, "-", color="C0", label="KL(policy || ref), training batch")
    s, v = _series(curve, "kl")
    if s: b.plot(s, v, "o--", color="C1", ms=4, label="KL, held-out prompts")
    if cfg.get("adap_kl_ctrl", True) and cfg.get("target"): b.axhline(cfg["target"], color="k", ls=":", label=f"target {cfg['target']}")
    b.set(xlabel=f"{info['algo'].upper()} step", ylabel="nats per response", title="KL to the reference")
    b.legend(fontsize=7)
    save(fig, path, foot)
    return f"{info['algo'].upper()} proxy reward and KL to the reference per step, {len(rows)} steps"


def fig_ppo_dials(run: Path, path: Path, info: dict, foot: str) -> str:
    import open_chatgpt.ppo as ppo
    history = read_metrics(run / info["algo"] / "metrics.jsonl")
    out = ppo.plot_dials(history, path, f"{info['algo'].upper()} {foot}")     # the title names the run and the machine
    if out is not None and hasattr(out, "savefig"): plt.close(out)
    return f"{info['algo'].upper()} diagnostics per step (open_chatgpt.ppo.plot_dials)"


# ---- chapter 11: ZeRO memory (computed)
def n_params(shape: str) -> int:
    "Parameters of a model of `MODEL_SHAPES[shape]` with the GPT-2/OPT vocabulary (50,272) and 2,048 positions (meta tensors)."
    import torch
    from transformers import OPTConfig, OPTForCausalLM
    from open_chatgpt.distributed import MODEL_SHAPES
    family, kw = MODEL_SHAPES[shape]
    with torch.device("meta"): model = OPTForCausalLM(OPTConfig(vocab_size=50272, max_position_embeddings=2048, **kw))
    return sum(p.numel() for p in model.parameters())


def zero_table(n: int, n_gpus: int = ZERO_GPUS) -> list[dict]:
    "Per-GPU GB of weights, gradients and optimizer states of a trained model with `n` parameters along the ZeRO ladder."
    from open_chatgpt.distributed import GB, ZERO_LADDER, rlhf_memory, total_gb, zero_memory
    rows = []
    for stage, oo, op in ZERO_LADDER:
        e = zero_memory(n, n_gpus, stage, offload_optimizer=oo, offload_params=op)
        label = f"ZeRO-{stage}" if stage else "DDP"
        label += " +opt off" if oo and not op else " +all off" if op else ""
        rows.append(dict(label=label, params=e.params / GB, grads=e.grads / GB, optimizer=e.optimizer / GB,
                         cpu=e.cpu / GB, ppo=total_gb(rlhf_memory(n, n_gpus=n_gpus, stage=stage, offload_optimizer=oo,
                                                                   offload_params=op))))
    return rows


def fig_zero_memory(run: Path, path: Path, info: dict, foot: str) -> str:
    fig, axes = plt.subplots(1, len(ZERO_MODELS), figsize=(11, 4))
    for ax, shape in zip(axes, ZERO_MODELS):
        n = n_params(shape)
        rows = zero_table(n)
        x, bottom = range(len(rows)), [0.0] * len(rows)
        for part, color in (("params", "C0"), ("grads", "C1"), ("optimizer", "C2")):
            vals = [r[part] for r in rows]
            ax.bar(x, vals, bottom=bottom, color=color, label=f"{part} (trained model)")
            bottom = [b_ + v for b_, v in zip(bottom, vals)]
        ax.plot([i + 0.3 for i in x], [r["ppo"] for r in rows], "kD", ms=4, label="PPO: actor + critic + ref + reward")
        for i in x: ax.annotate(f"{bottom[i]:.2f}", (i - 0.1, bottom[i]), xytext=(0, 2), textcoords="offset points",
                                ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(x)); ax.set_xticklabels([r["label"] for r in rows], rotation=25, fontsize=8)
        ax.set(ylabel="GB per GPU (1e9 bytes)", title=f"{shape}: {n / 1e6:,.0f}M parameters, {ZERO_GPUS} GPUs, bf16 + Adam")
        ax.legend(fontsize=7)
    save(fig, path, foot)
    return (f"per-GPU memory of weights, gradients and Adam states along the ZeRO ladder on {ZERO_GPUS} GPUs for "
            f"{' and '.join(ZERO_MODELS)} (computed with open_chatgpt.distributed.zero_memory / rlhf_memory; no activations)")


FIGURES = [("sft_loss.png", 3, fig_sft_loss), ("rm_accuracy.png", 4, fig_rm_accuracy), ("gae_credit.png", 5, fig_gae_credit),
           ("ppo_reward_kl.png", 6, fig_ppo_reward_kl), ("ppo_dials.png", 6, fig_ppo_dials),
           ("zero_memory.png", 11, fig_zero_memory)]


def make_figures(run, out=ROOT / "nbs" / "images", log=print) -> dict:
    "Every figure of `FIGURES` from run directory `run` into `out`; writes and returns the `figures.json` record."
    import open_chatgpt.ppo as ppo
    run, out = Path(run), Path(out)
    if not run.is_dir(): raise SystemExit(f"no such run directory: {run}")
    out.mkdir(parents=True, exist_ok=True)
    info, m = run_info(run), machine()
    foot = footer(info, m)
    record = dict(run=info, machine=m, machine_text=machine_text(m),
                  date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), files=[], skipped={})
    for name, chapter, make in FIGURES:
        path, why = out / name, None
        if name == "sft_loss.png" and sft_skipped(run): why = "the run skipped SFT (sft.skip / sft.max_steps=0): no SFT loss to plot"
        elif name == "ppo_dials.png" and not hasattr(ppo, "plot_dials"): why = "open_chatgpt.ppo has no plot_dials yet"
        elif name.startswith("ppo_") and not (run / info["algo"] / "metrics.jsonl").exists(): why = f"no {info['algo']}/metrics.jsonl in the run"
        if why:
            if path.exists(): path.unlink()          # never leave a figure of another run beside this run's
            record["skipped"][name] = why; log(f"skipped {name}: {why}"); continue
        caption = make(run, path, info, foot)
        record["files"].append(dict(file=name, chapter=chapter, caption=caption))
        log(f"wrote {path}")
    lines = [f"# Figures of run `{info['dir']}`", "", f"Model {info['model']}, seed {info['seed']}; machine: {record['machine_text']}; "
             f"made {record['date']} by `scripts/figures.py`.", ""]
    lines += [f"* `{f['file']}` (chapter {f['chapter']}): {f['caption']}" for f in record["files"]]
    lines += [f"* `{k}`: not made -- {v}" for k, v in record["skipped"].items()]
    atomic_write_text(out / "captions.txt", "\n".join(lines) + "\n")
    atomic_write_text(out / "figures.json", json.dumps(record, indent=2))
    for f in ("captions.txt", "figures.json"): os.chmod(out / f, 0o644)
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a pipeline run directory (open-chatgpt pipeline -o RUN_DIR)")
    p.add_argument("--out", default=str(ROOT / "nbs" / "images"), help="where the figures go (default nbs/images)")
    args = p.parse_args(argv)
    make_figures(args.run_dir, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

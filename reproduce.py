"""
SPDF in miniature: the paper's grid from corpus to Table 1, in one command.

For each seed and each pre-training sparsity (0, 0.5, 0.75): pre-train on the same corpus with the
same token budget and schedule, then dense fine-tune on E2E, WebNLG and DART, plus the sparse
fine-tuning baseline at the highest sparsity; evaluate with the full metrics. Then write, under
results/<scale>/: table.md (Table 1 and supplement Tables 4-6 layouts, FLOPs) and PNG plots.

  python reproduce.py --scale=tiny         # CPU, ~20 minutes on 2 cores
  python reproduce.py --scale=mini         # one GPU, ~20 minutes
  python reproduce.py --scale=tiny --seeds=1,2

Every cell writes its outputs under results/<scale>/runs/ (not committed); a cell whose outputs
exist is skipped, so an interrupted grid resumes where it stopped.
"""
import json
import math
from pathlib import Path

import finetune
import pretrain
from common import ROOT, check, check_writable_dir, parse_config, run_cli

TASKS = ("e2e", "webnlg", "dart")
# per scale: pre-training flags, fine-tuning flags (shared by every task and sparsity)
SCALES = {
    "tiny": dict(  # CPU: a tiny GPT on tinyshakespeare, fine-tuned on small subsets
        pretrain=["--model=tiny", "--dataset=shakespeare", "--max_iters=150", "--batch_size=8",
                  "--block_size=128", "--learning_rate=1e-3", "--warmup_iters=15", "--eval_interval=50",
                  "--eval_iters=10"],
        finetune=["--max_examples=300", "--max_epochs=1", "--eval_examples=20", "--beam_size=2",
                  "--batch_size=8", "--learning_rate=1e-3", "--warmup_iters=10"],
    ),
    "mini": dict(  # one GPU: ~30M parameters, ~0.6B Wikipedia tokens (~20 per parameter)
        pretrain=["--model=mini", "--dataset=enwiki", "--max_iters=4500", "--batch_size=64",
                  "--block_size=256", "--gradient_accumulation_steps=8", "--learning_rate=1e-3",
                  "--warmup_iters=200", "--eval_interval=500", "--eval_iters=50", "--compile=True"],
        finetune=["--max_examples=8000", "--max_epochs=2", "--eval_examples=200", "--beam_size=5",
                  "--batch_size=16", "--learning_rate=3e-4", "--warmup_iters=100"],
    ),
    "smoke": dict(  # for the tests: seconds
        pretrain=["--model=tiny", "--dataset=shakespeare", "--max_iters=2", "--batch_size=2",
                  "--block_size=64", "--eval_interval=2", "--eval_iters=1"],
        finetune=["--max_examples=8", "--max_epochs=1", "--eval_examples=2", "--beam_size=1",
                  "--batch_size=4", "--max_new_tokens=8"],
    ),
}
DEFAULTS = dict(scale="tiny", seeds="1", sparsities="0,0.5,0.75", tasks="e2e,webnlg,dart",
                sparse_ft=True, device="auto", results="")
PAPER_TABLE1 = {  # GPT-2 Small, BLEU: E2E, WebNLG, DART
    0.0: (67.49, 63.42, 46.30), 0.5: (67.39, 63.10, 45.74), 0.75: (66.50, 62.64, 44.97)}


def cells(cfg):
    """Every (seed, sparsity, task, sparse_ft) fine-tuning cell of the grid, in run order."""
    sparsities = [float(s) for s in cfg["sparsities"].split(",")]
    for seed in [int(s) for s in cfg["seeds"].split(",")]:
        for s in sparsities:
            for task in cfg["tasks"].split(","):
                yield seed, s, task, False
                if cfg["sparse_ft"] and s == max(sparsities) and s > 0:
                    yield seed, s, task, True


def run_grid(cfg, root):
    scale = SCALES[cfg["scale"]]
    device = [f"--device={cfg['device']}"]
    done_pretrain = set()
    for seed, s, task, sparse_ft in cells(cfg):
        pre_dir = root / "runs" / f"seed{seed}" / f"pretrain_s{s:g}"
        if (seed, s) not in done_pretrain:
            log = pre_dir / "log.jsonl"
            if not (log.exists() and "val_loss" in log.read_text().splitlines()[-1]
                    and json.loads(log.read_text().splitlines()[-1])["iter"] == _max_iters(scale)):
                print(f"== pre-train seed {seed}, sparsity {s:g}")
                resume = ["--init_from=resume"] if (pre_dir / "ckpt.pt").exists() else []  # an interrupted run
                pretrain.main([*scale["pretrain"], *device, f"--sparsity={s}", f"--seed={seed}",
                               f"--out_dir={pre_dir}", *resume])
            done_pretrain.add((seed, s))
        ft_dir = root / "runs" / f"seed{seed}" / f"{task}_s{s:g}_{'sparse' if sparse_ft else 'dense'}"
        if (ft_dir / "metrics.json").exists():
            print(f"== skip {ft_dir.name} (seed {seed}): done")
            continue
        print(f"== fine-tune {task}, seed {seed}, pre-training sparsity {s:g}, {'sparse' if sparse_ft else 'dense'} FT")
        finetune.main([*scale["finetune"], *device, f"--task={task}", f"--init_from={pre_dir}",
                       f"--out_dir={ft_dir}", f"--sparse={sparse_ft}", f"--seed={seed}"])


def _max_iters(scale):
    return int(next(a for a in scale["pretrain"] if a.startswith("--max_iters=")).split("=")[1])


def collect(cfg, root):
    """Read every finished cell: pre-training logs and fine-tuning metrics."""
    pre, ft = {}, {}
    for seed, s, task, sparse_ft in cells(cfg):
        log = root / "runs" / f"seed{seed}" / f"pretrain_s{s:g}" / "log.jsonl"
        if log.exists():
            pre[(seed, s)] = [json.loads(l) for l in log.read_text().splitlines()]
        path = root / "runs" / f"seed{seed}" / f"{task}_s{s:g}_{'sparse' if sparse_ft else 'dense'}" / "metrics.json"
        if path.exists():
            ft[(seed, s, task, sparse_ft)] = json.loads(path.read_text())
    return pre, ft


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{m:.2f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.2f} ± {sd:.2f}"


def write_tables(cfg, root, pre, ft):
    seeds = [int(s) for s in cfg["seeds"].split(",")]
    sparsities = [float(s) for s in cfg["sparsities"].split(",")]
    tasks = cfg["tasks"].split(",")
    lines = [f"# SPDF in miniature: scale `{cfg['scale']}`, seeds {cfg['seeds']}", "",
             "## Table 1 layout: BLEU after dense fine-tuning (mean ± sd over seeds)", "",
             "| pre-train sparsity | val loss after pre-training | " + " | ".join(f"{t} BLEU" for t in tasks) + " |",
             "|---|---|" + "---|" * len(tasks)]
    for s in sparsities:
        val = mean_std([pre[(seed, s)][-1].get("val_loss") for seed in seeds if (seed, s) in pre])
        bleus = [mean_std([ft[k]["bleu"] for k in ft if k[1] == s and k[2] == t and not k[3]]) for t in tasks]
        lines.append(f"| {s:.0%} | {val} | " + " | ".join(bleus) + " |")
    if cfg["sparse_ft"]:
        s = max(sparsities)
        bleus = [mean_std([ft[k]["bleu"] for k in ft if k[1] == s and k[2] == t and k[3]]) for t in tasks]
        lines.append(f"| {s:.0%}, sparse FT | | " + " | ".join(bleus) + " |")
    lines += ["", "Paper (GPT-2 Small, Table 1): " + "; ".join(
        f"{s:.0%}: " + " / ".join(f"{b:.2f}" for b in bleus) for s, bleus in PAPER_TABLE1.items())
        + " (E2E / WebNLG / DART BLEU)."]
    metric_keys = ("bleu", "nist", "meteor", "rouge_l", "cider", "ter")
    for t in tasks:  # the layout of supplement Tables 4-6
        keys = [k for k in metric_keys if any(isinstance(m.get(k), (int, float)) for kk, m in ft.items() if kk[2] == t)]
        lines += ["", f"## {t}: all metrics", "", "| pre-train sparsity | fine-tuning | " + " | ".join(keys) + " |",
                  "|---|---|" + "---|" * len(keys)]
        for s in sparsities:
            for sparse_ft in (False, True):
                ms = [m for kk, m in ft.items() if kk[1] == s and kk[2] == t and kk[3] == sparse_ft]
                if ms:
                    vals = [mean_std([m.get(k) if isinstance(m.get(k), (int, float)) else None for m in ms]) for k in keys]
                    lines.append(f"| {s:.0%} | {'sparse' if sparse_ft else 'dense'} | " + " | ".join(vals) + " |")
    lines += ["", "## FLOPs (SPDF accounting, `flops.py`; per seed)", "",
              "| pre-train sparsity | pre-training | " + " | ".join(f"{t} fine-tuning" for t in tasks)
              + " | total (with " + tasks[0] + ") | reduction vs dense |", "|---|---|" + "---|" * (len(tasks) + 2)]
    seed = seeds[0]
    dense_total = None
    for s in sparsities:
        pre_flops = pre[(seed, s)][-1]["flops_spent"] if (seed, s) in pre else None
        ft_flops = [ft.get((seed, s, t, False), {}).get("flops") for t in tasks]
        total = pre_flops + ft_flops[0] if pre_flops and ft_flops[0] else None
        if s == 0 and total:
            dense_total = total
        red = f"{dense_total / total:.2f}x" if dense_total and total else "–"
        fmt = lambda v: f"{v:.3g}" if v else "–"
        lines.append(f"| {s:.0%} | {fmt(pre_flops)} | " + " | ".join(fmt(v) for v in ft_flops)
                     + f" | {fmt(total)} | {red} |")
    (root / "table.md").write_text("\n".join(lines) + "\n")


def write_plots(cfg, root, pre, ft):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    seeds = [int(s) for s in cfg["seeds"].split(",")]
    sparsities = [float(s) for s in cfg["sparsities"].split(",")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in sparsities:
        for seed in seeds:
            recs = [r for r in pre.get((seed, s), []) if "val_loss" in r]
            if recs:
                label = f"{s:.0%} sparse" + (f", seed {seed}" if len(seeds) > 1 else "")
                axes[0].plot([r["tokens_seen"] for r in recs], [r["val_loss"] for r in recs], marker="o", label=label)
                axes[1].plot([r["flops_spent"] for r in recs], [r["val_loss"] for r in recs], marker="o", label=label)
    for ax, xlabel in zip(axes, ("tokens", "training FLOPs (SPDF accounting)")):
        ax.set_xlabel(xlabel), ax.set_ylabel("validation loss"), ax.grid(alpha=0.3), ax.legend()
    fig.suptitle(f"Pre-training, scale {cfg['scale']}")
    fig.tight_layout()
    fig.savefig(root / "pretrain_loss.png", dpi=110)
    plt.close(fig)
    tasks = cfg["tasks"].split(",")
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.6), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        for sparse_ft, style in ((False, "o-"), (True, "s--")):
            xs, ys = [], []
            for s in sparsities:
                vals = [ft[k]["bleu"] for k in ft if k[1] == s and k[2] == t and k[3] == sparse_ft]
                if vals:
                    xs.append(100 * s), ys.append(sum(vals) / len(vals))
            if xs:
                ax.plot(xs, ys, style, label="sparse FT" if sparse_ft else "dense FT")
        ax.set_title(t), ax.set_xlabel("pre-training sparsity (%)"), ax.set_ylabel("BLEU"), ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    fig.savefig(root / "bleu_vs_sparsity.png", dpi=110)
    plt.close(fig)


def main(argv):
    cfg, overrides = parse_config(DEFAULTS, argv)
    check(cfg["scale"] in SCALES, f"unknown scale {cfg['scale']!r} (choose from {', '.join(SCALES)})")
    try:
        [int(s) for s in cfg["seeds"].split(",")], [float(s) for s in cfg["sparsities"].split(",")]
    except ValueError:
        check(False, "--seeds and --sparsities are comma-separated numbers, e.g. --seeds=1,2")
    check(all(0 <= float(s) < 1 for s in cfg["sparsities"].split(",")), "--sparsities must be in [0, 1)")
    check(all(t in TASKS for t in cfg["tasks"].split(",")), f"--tasks must be among {', '.join(TASKS)}")
    check_writable_dir(cfg["results"] or ROOT / "results" / cfg["scale"], "--results")
    check("results" not in overrides or cfg["results"], "--results is empty")
    root = Path(cfg["results"] or ROOT / "results" / cfg["scale"])
    root.mkdir(parents=True, exist_ok=True)
    run_grid(cfg, root)
    pre, ft = collect(cfg, root)
    write_tables(cfg, root, pre, ft)
    write_plots(cfg, root, pre, ft)
    print(f"wrote {root}/table.md, pretrain_loss.png, bleu_vs_sparsity.png")
    return root


if __name__ == "__main__":
    run_cli(main)

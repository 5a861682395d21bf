"""
SPDF's question at a scale a laptop runs: does dense fine-tuning of a sparse pre-trained GPT keep the
benefit of pre-training? One command runs the controlled grid and writes the answer.

For each seed: pre-train dense, 50 % and 75 % sparse on the same tokens and schedule; fine-tune each
densely on E2E (and WebNLG, DART), plus sparse fine-tuning at 75 % and a no-pre-training control (the
same model fine-tuned from its random initialization). Then write, under results/<scale>/: table.md
(the paper's Table 1 layout plus the control row, fine-tuning validation loss and the benefit
retained), summary.json and plots.

  python reproduce.py --scale=cpu          # 2-core CPU, about 3 hours: E2E x 3 seeds, WebNLG/DART x 1
  python reproduce.py --scale=mini         # one GPU, hours
  python reproduce.py --scale=gpu --tasks=e2e --seeds=1 --jobs=3   # one GPU, minutes: gpu_check.py runs it
  python reproduce.py --scale=cpu --seeds=1,2,3,4 --other_seeds=1,2

Every cell writes its outputs under results/<scale>/runs/ (not committed); a cell whose outputs
exist is skipped, so an interrupted grid resumes where it stopped. --jobs=N runs N pre-trainings, then N
fine-tunings, at once, each in its own process: a GPU trains several of these small models side by side.
"""
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

import finetune
import pretrain
from common import ROOT, check, check_writable_dir, parse_config, run_cli, save_checkpoint
from model import GPT, preset_config

TASKS = ("e2e", "webnlg", "dart")
# per scale: pre-training flags, fine-tuning flags (shared by every task and pre-training)
SCALES = {
    "cpu": dict(  # 2-core CPU: a 4-block GPT, 1.02M Wikipedia tokens in 1,000 steps each (a pilot
        # with 150 steps of 2,048 tokens left it at unigram level, val loss 7.32, and fine-tuning from
        # it was worse than from random init); a fine-tuning budget of 2,000 examples x 1 epoch,
        # small enough that what pre-training taught still shows
        pretrain=["--model=cpu", "--dataset=enwiki", "--max_iters=1000", "--batch_size=8",
                  "--block_size=128", "--learning_rate=1e-3", "--warmup_iters=50", "--eval_interval=250",
                  "--eval_iters=20"],
        finetune=["--max_examples=2000", "--max_epochs=1", "--val_examples=300", "--eval_examples=100",
                  "--beam_size=2", "--batch_size=8", "--learning_rate=1e-3", "--warmup_iters=25",
                  "--decode_batch=25"],
    ),
    "mini": dict(  # one GPU: ~30M parameters, ~0.6B Wikipedia tokens (~20 per parameter)
        pretrain=["--model=mini", "--dataset=enwiki", "--max_iters=4500", "--batch_size=64",
                  "--block_size=256", "--gradient_accumulation_steps=8", "--learning_rate=1e-3",
                  "--warmup_iters=200", "--eval_interval=500", "--eval_iters=50", "--compile=True"],
        finetune=["--max_examples=8000", "--max_epochs=2", "--val_examples=1000", "--eval_examples=200",
                  "--beam_size=5", "--batch_size=16", "--learning_rate=3e-4", "--warmup_iters=100"],
    ),
    "gpu": dict(  # one H100/H200 in minutes, a step of gpu_check.py: the mini GPT on 19.7M Wikipedia tokens
        # (1,200 steps of 16k; gpu_check --pack carries the first 20M), then 12,000 E2E examples x 1 epoch
        # per cell. Sized by estimate (1.9e8 training FLOPs a token, 0.6-1M tokens/s), not yet on a GPU
        pretrain=["--model=mini", "--dataset=enwiki", "--max_iters=1200", "--batch_size=64", "--block_size=256",
                  "--learning_rate=1.5e-3", "--warmup_iters=100", "--eval_interval=300", "--eval_iters=20"],
        finetune=["--max_examples=12000", "--max_epochs=1", "--val_examples=500", "--eval_examples=200",
                  "--beam_size=4", "--batch_size=32", "--learning_rate=5e-4", "--warmup_iters=40",
                  "--decode_batch=50"],
    ),
    "smoke": dict(  # for the tests: seconds
        pretrain=["--model=tiny", "--dataset=shakespeare", "--max_iters=2", "--batch_size=2",
                  "--block_size=64", "--eval_interval=2", "--eval_iters=1"],
        finetune=["--max_examples=8", "--max_epochs=1", "--val_examples=8", "--eval_examples=2",
                  "--beam_size=1", "--batch_size=4", "--max_new_tokens=8"],
    ),
}
DEFAULTS = dict(scale="cpu", seeds="1,2,3", other_seeds="1", sparsities="0,0.5,0.75", tasks="e2e,webnlg,dart",
                control=True, sparse_ft=True, device="auto", results="",
                jobs=1,    # runs at once, each its own process (one GPU trains several small models side by side)
                run=True)  # False: only write the tables and plots from the cells already finished
PAPER_TABLE1 = {  # GPT-2 Small, BLEU: E2E, WebNLG, DART
    0.0: (67.49, 63.42, 46.30), 0.5: (67.39, 63.10, 45.74), 0.75: (66.50, 62.64, 44.97)}
NONE = None  # the control's "pre-training sparsity": no pre-training at all


def _ints(text):
    return [int(s) for s in text.split(",") if s]


def cells(cfg):
    """Every (seed, pre-training sparsity or NONE, task, sparse_ft) fine-tuning cell, in run order:
    the first task over all seeds first (it carries the seed spread), then the others."""
    sparsities = [float(s) for s in cfg["sparsities"].split(",")]
    tasks = cfg["tasks"].split(",")
    for i, task in enumerate(tasks):
        for seed in _ints(cfg["seeds"] if i == 0 or not cfg["other_seeds"] else cfg["other_seeds"]):
            if cfg["control"]:
                yield seed, NONE, task, False
            for s in sparsities:
                yield seed, s, task, False
                if cfg["sparse_ft"] and s == max(sparsities) and s > 0:
                    yield seed, s, task, True


def _name(s):
    return "none" if s is NONE else f"s{s:g}"


def pre_dir(root, seed, s):
    return root / "runs" / f"seed{seed}" / f"pretrain_{_name(s)}"


def ft_dir(root, seed, s, task, sparse_ft):
    return root / "runs" / f"seed{seed}" / f"{task}_{_name(s)}_{'sparse' if sparse_ft else 'dense'}"


def _flag(flags, key):
    return next(a for a in flags if a.startswith(f"--{key}=")).split("=", 1)[1]


def finished_log(pdir, scale):
    """The pre-training run's log records if it reached the scale's last step and evaluated, else None."""
    log = pdir / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = records and "val_loss" in records[-1] and records[-1]["iter"] == int(_flag(scale["pretrain"], "max_iters"))
    return records if done else None


def write_control(scale, seed, path):
    """The control: the pre-training model at its random initialization, saved like a checkpoint."""
    mcfg = preset_config(_flag(scale["pretrain"], "model"), int(_flag(scale["pretrain"], "block_size")))
    torch.manual_seed(seed)
    model = GPT(mcfg)
    save_checkpoint(dict(model=model.state_dict(), masks={}, model_config=asdict(mcfg), iter_num=0,
                         config=dict(sparsity=0.0, seed=seed, init="random, no pre-training"),
                         pretrain_sparsity=0.0), path / "ckpt.pt")


def run_grid(cfg, root):
    """Pre-trains every model the grid needs, then fine-tunes every cell; what finished before is skipped.
    jobs > 1: that many runs at once, each a subprocess logging to its folder's stdout.log."""
    scale, device = SCALES[cfg["scale"]], [f"--device={cfg['device']}"]
    pre, ft = {}, []  # pretrain.py and finetune.py argument lists
    for seed, s, task, sparse_ft in cells(cfg):
        pdir = pre_dir(root, seed, s)
        if s is NONE and not (pdir / "ckpt.pt").exists():
            write_control(scale, seed, pdir)
        elif s is not NONE and pdir not in pre and finished_log(pdir, scale) is None:
            resume = ["--init_from=resume"] if (pdir / "ckpt.pt").exists() else []  # an interrupted run
            pre[pdir] = [*scale["pretrain"], *device, f"--sparsity={s}", f"--seed={seed}", f"--out_dir={pdir}", *resume]
        fdir = ft_dir(root, seed, s, task, sparse_ft)
        if (fdir / "metrics.json").exists():
            print(f"== skip {fdir.name} (seed {seed}): done")
            continue
        (fdir / "ckpt.pt").unlink(missing_ok=True)  # a cell interrupted after training starts over
        ft.append([*scale["finetune"], *device, f"--task={task}", f"--init_from={pdir}", f"--out_dir={fdir}",
                   f"--sparse={sparse_ft}", f"--seed={seed}"])
    for module, runs in ((pretrain, list(pre.values())), (finetune, ft)):
        if cfg["jobs"] == 1:
            for argv in runs:
                print(f"== {module.__name__} {' '.join(argv[-5:])}")
                module.main(argv)
            continue
        failed = run_parallel(f"{module.__name__}.py", runs, cfg["jobs"])
        check(not failed, f"{len(failed)} of {len(runs)} {module.__name__} runs failed: see " +
              ", ".join(str(d / "stdout.log") for d in failed))


def run_parallel(script, runs, jobs):
    """Each argument list as `python script ...`, at most `jobs` at once; returns the out_dirs that failed."""
    def one(argv):
        out = Path(_flag(argv, "out_dir"))
        out.mkdir(parents=True, exist_ok=True)
        print(f"== {script} {' '.join(argv[-5:])}", flush=True)
        with open(out / "stdout.log", "w") as log:
            return out, subprocess.run([sys.executable, str(ROOT / script), *argv], stdout=log,
                                       stderr=subprocess.STDOUT).returncode
    with ThreadPoolExecutor(jobs) as pool:
        return [out for out, code in pool.map(one, runs) if code != 0]


def collect(cfg, root):
    """Pre-training logs by (seed, s) and fine-tuning metrics by cell, for every finished cell."""
    pre, ft = {}, {}
    for seed, s, task, sparse_ft in cells(cfg):
        if s is not NONE and (seed, s) not in pre:  # each log once, though several cells share it
            if (records := finished_log(pre_dir(root, seed, s), SCALES[cfg["scale"]])) is not None:
                pre[(seed, s)] = records  # finished runs only
        path = ft_dir(root, seed, s, task, sparse_ft) / "metrics.json"
        if path.exists():
            ft[(seed, s, task, sparse_ft)] = json.loads(path.read_text())
    return pre, ft


def stats(values):
    """(mean, sample sd or None, n) of the values that are numbers."""
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None, None, 0
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return m, sd, len(values)


def fmt(st, digits=2):
    m, sd, n = st
    if m is None:
        return "–"
    return f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def retained(ft, task, seeds, s, key, higher_better):
    """Benefit retained per seed: (L_none - L_s) / (L_none - L_dense), with the sign of the metric."""
    out = []
    for seed in seeds:
        cell = lambda p: ft.get((seed, p, task, False), {}).get(key)
        none, dense, sparse = cell(NONE), cell(0.0), cell(s)
        if None in (none, dense, sparse) or dense == none:
            continue
        sign = 1 if higher_better else -1
        out.append(sign * (sparse - none) / (sign * (dense - none)))
    return out


def paired(ft, task, seeds, a, b):
    """Per seed, FT validation loss of cell a minus cell b, each (pre-training sparsity, sparse_ft)."""
    loss = lambda seed, cell: ft[(seed, cell[0], task, cell[1])]["best_val_loss"]
    return [loss(seed, a) - loss(seed, b) for seed in seeds
            if (seed, a[0], task, a[1]) in ft and (seed, b[0], task, b[1]) in ft]


def summarize(cfg, pre, ft):
    """Every number of table.md, as data (summary.json), per task and pre-training."""
    sparsities = [float(s) for s in cfg["sparsities"].split(",")]
    conds = ([NONE] if cfg["control"] else []) + sparsities
    summary = dict(pretrain={}, finetune={})
    for s in sparsities:
        vals = [pre[k][-1].get("val_loss") for k in pre if k[1] == s]
        summary["pretrain"][_name(s)] = dict(val_loss=stats(vals), per_seed={
            k[0]: pre[k][-1].get("val_loss") for k in sorted(pre) if k[1] == s}, tokens=next(
            (pre[k][-1].get("tokens_seen") for k in pre if k[1] == s), None), flops=next(
            (pre[k][-1].get("flops_spent") for k in pre if k[1] == s), None))
    for task in cfg["tasks"].split(","):
        seeds = sorted({k[0] for k in ft if k[2] == task})
        rows = {}
        for s in conds:
            for sparse_ft in (False, True):
                ms = [ft[(seed, s, task, sparse_ft)] for seed in seeds if (seed, s, task, sparse_ft) in ft]
                if not ms:
                    continue
                row = {k: stats([m.get(k) for m in ms]) for k in
                       ("best_val_loss", "bleu", "bleu_seen", "bleu_unseen", "nist", "meteor", "rouge_l", "cider", "ter")}
                row["seeds"] = [seed for seed in seeds if (seed, s, task, sparse_ft) in ft]
                row["per_seed"] = {seed: [ft[(seed, s, task, sparse_ft)].get(k) for k in ("best_val_loss", "bleu")]
                                   for seed in row["seeds"]}
                row["flops_finetune"] = stats([m.get("flops") for m in ms])
                if s is not NONE and not sparse_ft and cfg["control"] and 0.0 in sparsities:
                    row["retained_val_loss"] = stats(retained(ft, task, seeds, s, "best_val_loss", False))
                    row["retained_bleu"] = stats(retained(ft, task, seeds, s, "bleu", True))
                rows[f"{_name(s)}_{'sparse' if sparse_ft else 'dense'}"] = row
        benefit = paired(ft, task, seeds, (NONE, False), (0.0, False))
        top = max(sparsities)  # reading c: L(sparse FT) - L(dense FT) at the top sparsity
        c = paired(ft, task, seeds, (top, True), (top, False))
        summary["finetune"][task] = dict(rows=rows, seeds=seeds, benefit_val_loss=stats(benefit),
                                         sparse_minus_dense_ft=dict(stats=stats(c), holds=sum(d > 0 for d in c)))
    gaps = {}  # reading a, paired by seed: each step up in sparsity raises the pre-training loss
    for lo, hi in zip(sparsities, sparsities[1:]):
        d = [pre[(seed, hi)][-1]["val_loss"] - pre[(seed, lo)][-1]["val_loss"]
             for seed in sorted({k[0] for k in pre}) if (seed, lo) in pre and (seed, hi) in pre]
        gaps[f"{_name(hi)} - {_name(lo)}"] = dict(stats=stats(d), holds=sum(x > 0 for x in d))
    summary["pretrain_gaps"] = gaps
    return summary


def _flatten_seen(ft):
    for m in ft.values():  # WebNLG's seen/unseen BLEU, flat, for the table
        for part in ("seen", "unseen"):
            if isinstance(m.get(part), dict):
                m[f"bleu_{part}"] = m[part].get("bleu")


def write_tables(cfg, root, summary):
    sparsities = [float(s) for s in cfg["sparsities"].split(",")]
    conds = ([NONE] if cfg["control"] else []) + sparsities
    label = lambda s: "no pre-training (control)" if s is NONE else "dense" if s == 0 else f"{s:.0%} sparse"
    lines = [f"# SPDF, controlled: scale `{cfg['scale']}`", "",
             f"Grid: seeds {cfg['seeds']} for {cfg['tasks'].split(',')[0]}, {cfg['other_seeds'] or cfg['seeds']} for the "
             "other tasks; each row names the seeds finished. Mean ± sample sd over seeds. Fine-tuning validation loss: mean NLL per completion "
             "token on a fixed validation subset (no label smoothing), best epoch. Benefit retained = "
             "(L_none − L_s) / (L_none − L_dense), per seed; 1 = all of dense pre-training's benefit.", "",
             "## Pre-training (reading a: dense < 50 % < 75 %)", "",
             "| pre-training | validation loss | tokens | training FLOPs |", "|---|---|---|---|"]
    for s in sparsities:
        p = summary["pretrain"][_name(s)]
        tokens, flops = (f"{p['tokens']:,}", f"{p['flops']:.3g}") if p["flops"] else ("–", "–")
        lines.append(f"| {label(s)} | {fmt(p['val_loss'], 3)} | {tokens} | {flops} |")
    lines += ["", "Per seed: " + "; ".join(f"{label(s)} " + ", ".join(f"{v:.3f}" for v in summary["pretrain"][_name(s)]["per_seed"].values())
                                         for s in sparsities) + ".",
              "", "Paired by seed (higher minus lower sparsity; > 0 where the reading holds): " + "; ".join(
        f"{k}: {fmt(g['stats'], 3)} ({g['holds']} of {g['stats'][2]} seeds)" for k, g in summary["pretrain_gaps"].items()
        if g["stats"][2]) + "."]
    for task, t in summary["finetune"].items():
        if not t["rows"]:
            continue
        extra = ["bleu_seen", "bleu_unseen"] if task == "webnlg" else []
        metric_keys = {"e2e": ["nist", "meteor", "rouge_l", "cider"]}.get(task, ["meteor", "ter"])
        m = t["benefit_val_loss"]
        lines += ["", f"## {task} (seeds {', '.join(map(str, t['seeds']))})", ""]
        if m[0] is not None:
            ratio = f", {m[0] / m[1]:.1f}× its seed sd" if m[1] else ""
            lines += [f"Benefit of dense pre-training on fine-tuning validation loss: {fmt(m, 3)} nats{ratio}.", ""]
        head = ["seeds", "FT val loss", "BLEU", *extra, *metric_keys, "retained (val loss)", "retained (BLEU)", "FT FLOPs",
                "total FLOPs"]
        lines += ["| pre-training | fine-tuning | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
        for s in conds:
            for sparse_ft in (False, True):
                row = t["rows"].get(f"{_name(s)}_{'sparse' if sparse_ft else 'dense'}")
                if not row:
                    continue
                cols = [",".join(map(str, row["seeds"])), fmt(row["best_val_loss"], 3), fmt(row["bleu"]), *[fmt(row[k]) for k in extra],
                        *[fmt(row[k], 3 if k in ("meteor", "rouge_l", "ter", "cider") else 2) for k in metric_keys],
                        fmt(row.get("retained_val_loss", (None,) * 3)), fmt(row.get("retained_bleu", (None,) * 3)),
                        f"{row['flops_finetune'][0]:.3g}" if row["flops_finetune"][0] else "–"]
                pre_flops = 0.0 if s is NONE else summary["pretrain"][_name(s)]["flops"]
                total = pre_flops + row["flops_finetune"][0] if pre_flops is not None and row["flops_finetune"][0] else None
                cols.append(f"{total:.3g}" if total else "–")
                lines.append(f"| {label(s)} | {'sparse' if sparse_ft else 'dense'} | " + " | ".join(cols) + " |")
        c = t["sparse_minus_dense_ft"]
        if c["stats"][2]:
            lines += ["", f"Reading c, paired by seed: FT val loss of sparse minus dense fine-tuning at the top sparsity "
                      f"{fmt(c['stats'], 3)} (> 0, dense FT better, in {c['holds']} of {c['stats'][2]} seeds)."]
        lines += ["", "Per seed, FT val loss (BLEU):", "", "| cell | " + " | ".join(f"seed {x}" for x in t["seeds"]) + " |",
                  "|---|" + "---|" * len(t["seeds"])]
        for key, row in t["rows"].items():
            per = row["per_seed"]
            lines.append(f"| {key} | " + " | ".join(f"{per[x][0]:.3f} ({per[x][1]:.2f})" if x in per else "–"
                                                     for x in t["seeds"]) + " |")
    lines += ["", "Paper (GPT-2 Small, Table 1, BLEU E2E / WebNLG / DART): " + "; ".join(
        f"{s:.0%}: " + " / ".join(f"{b:.2f}" for b in bleus) for s, bleus in PAPER_TABLE1.items()) + "."]
    (root / "table.md").write_text("\n".join(lines) + "\n")


def write_plots(cfg, root, pre, summary):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sparsities = [float(s) for s in cfg["sparsities"].split(",")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, s in enumerate(sparsities):
        for j, seed in enumerate(sorted({k[0] for k in pre if k[1] == s})):
            recs = [r for r in pre[(seed, s)] if "val_loss" in r]
            kw = dict(color=f"C{i}", marker="o", alpha=0.8, label=f"{s:.0%} sparse" if j == 0 else None)
            axes[0].plot([r["tokens_seen"] for r in recs], [r["val_loss"] for r in recs], **kw)
            axes[1].plot([r["flops_spent"] for r in recs], [r["val_loss"] for r in recs], **kw)
    for ax, xlabel in zip(axes, ("tokens", "training FLOPs (SPDF accounting)")):
        ax.set_xlabel(xlabel), ax.set_ylabel("validation loss"), ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no finished run yet: nothing to name
            ax.legend()
    fig.suptitle(f"Pre-training, scale {cfg['scale']} (one line per seed)")
    fig.tight_layout()
    fig.savefig(root / "pretrain_loss.png", dpi=110)
    plt.close(fig)
    tasks = [t for t in summary["finetune"] if summary["finetune"][t]["rows"]] or list(summary["finetune"])[:1]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4 * len(tasks), 6.4), squeeze=False)
    for col, task in enumerate(tasks):
        rows = summary["finetune"][task]["rows"]
        for r, (key, ylabel) in enumerate((("best_val_loss", "FT validation loss"), ("bleu", "BLEU"))):
            ax = axes[r][col]
            for sparse_ft, style in ((False, "o-"), (True, "s")):
                pts = [(100 * s, rows[k][key]) for s in sparsities
                       if (k := f"{_name(s)}_{'sparse' if sparse_ft else 'dense'}") in rows and rows[k][key][0] is not None]
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] or 0 for p in pts],
                                fmt=style, capsize=3, label="sparse FT" if sparse_ft else "dense FT")
            control = rows.get("none_dense", {}).get(key)
            if control and control[0] is not None:
                ax.axhline(control[0], color="gray", ls="--", label="no pre-training")
            ax.set_title(task), ax.set_xlabel("pre-training sparsity (%)"), ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(root / "finetune_vs_sparsity.png", dpi=110)
    plt.close(fig)


def main(argv):
    cfg, overrides = parse_config(DEFAULTS, argv)
    check(cfg["scale"] in SCALES, f"unknown scale {cfg['scale']!r} (choose from {', '.join(SCALES)})")
    try:
        _ints(cfg["seeds"]), _ints(cfg["other_seeds"]), [float(s) for s in cfg["sparsities"].split(",")]
    except ValueError:
        check(False, "--seeds, --other_seeds and --sparsities are comma-separated numbers, e.g. --seeds=1,2")
    check(bool(_ints(cfg["seeds"])), "--seeds must name at least one seed")
    check(all(0 <= float(s) < 1 for s in cfg["sparsities"].split(",")), "--sparsities must be in [0, 1)")
    check(all(t in TASKS for t in cfg["tasks"].split(",")), f"--tasks must be among {', '.join(TASKS)}")
    check(cfg["jobs"] >= 1, "--jobs must be at least 1")
    check_writable_dir(cfg["results"] or ROOT / "results" / cfg["scale"], "--results")
    check("results" not in overrides or cfg["results"], "--results is empty")
    root = Path(cfg["results"] or ROOT / "results" / cfg["scale"])
    root.mkdir(parents=True, exist_ok=True)
    if cfg["run"]:
        run_grid(cfg, root)
    pre, ft = collect(cfg, root)
    _flatten_seen(ft)
    summary = summarize(cfg, pre, ft)
    (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_tables(cfg, root, summary)
    write_plots(cfg, root, pre, summary)
    print((root / "table.md").read_text())
    print(f"wrote {root}/table.md, summary.json, pretrain_loss.png, finetune_vs_sparsity.png")
    return root


if __name__ == "__main__":
    run_cli(main)

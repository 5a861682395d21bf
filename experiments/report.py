"""
The tables and plots of reproduce.py's grid, from the cells that finished: summary.json (every number,
as data), table.md (the paper's Table 1 layout plus the control row, fine-tuning validation loss and
the benefit retained, mean ± sample sd over seeds, paired differences per seed), pretrain_loss.png and
finetune_vs_sparsity.png. reproduce.py calls write_all(); `python -m experiments.reproduce --run=False` rewrites
them without training.
"""
import json
import math

PAPER_TABLE1 = {  # GPT-2 Small, BLEU: E2E, WebNLG, DART
    0.0: (67.49, 63.42, 46.30), 0.5: (67.39, 63.10, 45.74), 0.75: (66.50, 62.64, 44.97)}
NONE = None  # the control's "pre-training sparsity": no pre-training at all


def cell_name(s):
    return "none" if s is NONE else f"s{s:g}"


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
        summary["pretrain"][cell_name(s)] = dict(val_loss=stats(vals), per_seed={
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
                       ("best_val_loss", "bleu", "bleu_seen", "bleu_unseen", "nist", "meteor", "rouge_l", "cider", "ter",
                        "rouge_l_approx", "cider_approx")}
                row["seeds"] = [seed for seed in seeds if (seed, s, task, sparse_ft) in ft]
                row["per_seed"] = {seed: [ft[(seed, s, task, sparse_ft)].get(k) for k in ("best_val_loss", "bleu")]
                                   for seed in row["seeds"]}
                row["flops_finetune"] = stats([m.get("flops") for m in ms])
                if s is not NONE and not sparse_ft and cfg["control"] and 0.0 in sparsities:
                    row["retained_val_loss"] = stats(retained(ft, task, seeds, s, "best_val_loss", False))
                    row["retained_bleu"] = stats(retained(ft, task, seeds, s, "bleu", True))
                rows[f"{cell_name(s)}_{'sparse' if sparse_ft else 'dense'}"] = row
        benefit = paired(ft, task, seeds, (NONE, False), (0.0, False))
        top = max(sparsities)  # reading c: L(sparse FT) - L(dense FT) at the top sparsity
        c = paired(ft, task, seeds, (top, True), (top, False))
        summary["finetune"][task] = dict(rows=rows, seeds=seeds, benefit_val_loss=stats(benefit),
                                         sparse_minus_dense_ft=dict(stats=stats(c), holds=sum(d > 0 for d in c)))
    gaps = {}  # reading a, paired by seed: each step up in sparsity raises the pre-training loss
    for lo, hi in zip(sparsities, sparsities[1:]):
        d = [pre[(seed, hi)][-1]["val_loss"] - pre[(seed, lo)][-1]["val_loss"]
             for seed in sorted({k[0] for k in pre}) if (seed, lo) in pre and (seed, hi) in pre]
        gaps[f"{cell_name(hi)} - {cell_name(lo)}"] = dict(stats=stats(d), holds=sum(x > 0 for x in d))
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
        p = summary["pretrain"][cell_name(s)]
        tokens, flops = (f"{p['tokens']:,}", f"{p['flops']:.3g}") if p["flops"] else ("–", "–")
        lines.append(f"| {label(s)} | {fmt(p['val_loss'], 3)} | {tokens} | {flops} |")
    lines += ["", "Per seed: " + "; ".join(f"{label(s)} " + ", ".join(f"{v:.3f}" for v in summary["pretrain"][cell_name(s)]["per_seed"].values())
                                         for s in sparsities) + ".",
              "", "Paired by seed (higher minus lower sparsity; > 0 where the reading holds): " + "; ".join(
        f"{k}: {fmt(g['stats'], 3)} ({g['holds']} of {g['stats'][2]} seeds)" for k, g in summary["pretrain_gaps"].items()
        if g["stats"][2]) + "."]
    for task, t in summary["finetune"].items():
        if not t["rows"]:
            continue
        extra = ["bleu_seen", "bleu_unseen"] if task == "webnlg" else []
        metric_keys = {"e2e": ["nist", "meteor", "rouge_l", "cider"]}.get(task, ["meteor", "ter"])
        for k in ("rouge_l", "cider"):  # without Java: the values computed another way, under their own name
            if k in metric_keys and not any(r[k][2] for r in t["rows"].values()):
                if any(r.get(f"{k}_approx", (0, 0, 0))[2] for r in t["rows"].values()):
                    metric_keys[metric_keys.index(k)] = f"{k}_approx"
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
                row = t["rows"].get(f"{cell_name(s)}_{'sparse' if sparse_ft else 'dense'}")
                if not row:
                    continue
                cols = [",".join(map(str, row["seeds"])), fmt(row["best_val_loss"], 3), fmt(row["bleu"]), *[fmt(row[k]) for k in extra],
                        *[fmt(row[k], 2 if k == "nist" else 3) for k in metric_keys],
                        fmt(row.get("retained_val_loss", (None,) * 3)), fmt(row.get("retained_bleu", (None,) * 3)),
                        f"{row['flops_finetune'][0]:.3g}" if row["flops_finetune"][0] else "–"]
                pre_flops = 0.0 if s is NONE else summary["pretrain"][cell_name(s)]["flops"]
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
                       if (k := f"{cell_name(s)}_{'sparse' if sparse_ft else 'dense'}") in rows and rows[k][key][0] is not None]
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


def write_all(cfg, root, pre, ft):
    """pre: pre-training logs by (seed, s); ft: fine-tuning metrics by cell (reproduce.collect)."""
    _flatten_seen(ft)
    summary = summarize(cfg, pre, ft)
    (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_tables(cfg, root, summary)
    write_plots(cfg, root, pre, summary)

"""
Parameter-subspace analysis (SPDF paper §3.4, Figs. 3-4): how far fine-tuning moved each block
matrix from its pre-trained value, as the cosine distance 1 - cos(W_pre, W_ft) of the flattened
matrices, per layer and per matrix:

  Q, K, V   attention query/key/value projections   (paper: W_Q, W_K, W_V)
  O         attention output projection             (paper: W_D)
  FC1, FC2  MLP input and output projections        (paper: W_I, W_O)

  python -m related.subspace out/ckpt.pt out-ft/ckpt.pt --png subspace.png [--json subspace.json]
  python -m related.subspace --pretrained=out/ckpt.pt --finetuned=out-ft/ckpt.pt --png=subspace.png

Both checkpoints need the 'model' and 'model_config' keys (pretrain.py and finetune.py write
them) and the same architecture; extra parameters (e.g. a soft prompt) are ignored. A sparse
pre-trained checkpoint's zeros count as values: dense fine-tuning that grows them moves W.
The PNG is drawn with matplotlib (Agg backend, no display needed).
"""
import json

import torch

from checkpoint import load_checkpoint, pretrain_sparsity
from common import check, check_output_file, parse_config, run_cli
from sparsity import SPARSE_MATRICES

MATRICES = dict(zip(("Q", "K", "V", "O", "FC1", "FC2"), SPARSE_MATRICES))  # label -> module in a block
ARCH_KEYS = ("n_layer", "n_head", "n_embd", "vocab_size")


def cosine_distance(a, b):
    """1 - cosine similarity of two tensors, flattened, in float64 (nan if either is all zeros)."""
    a, b = a.double().flatten(), b.double().flatten()
    denom = a.norm() * b.norm()
    return float("nan") if denom == 0 else float(1.0 - (a @ b) / denom)


def distances(pre, ft):
    """{matrix label: [distance of layer 0, layer 1, ...]} for two checkpoints (dicts)."""
    for key in ARCH_KEYS:
        check(pre["model_config"].get(key) == ft["model_config"].get(key),
              f"the checkpoints differ in {key}: {pre['model_config'].get(key)} vs {ft['model_config'].get(key)}")
    out = {}
    for label, module in MATRICES.items():
        out[label] = []
        for i in range(pre["model_config"]["n_layer"]):
            name = f"transformer.h.{i}.{module}.weight"
            check(name in pre["model"] and name in ft["model"], f"a checkpoint has no {name}")
            check(pre["model"][name].shape == ft["model"][name].shape, f"{name} differs in shape")
            out[label].append(cosine_distance(pre["model"][name], ft["model"][name]))
    return out


def table(dist):
    labels = list(dist)
    lines = [f"{'layer':>5s} " + " ".join(f"{label:>9s}" for label in labels)]
    for i in range(len(dist[labels[0]])):
        lines.append(f"{i:5d} " + " ".join(f"{dist[label][i]:9.2e}" for label in labels))
    lines.append(f"{'mean':>5s} " + " ".join(f"{sum(v) / len(v):9.2e}" for v in dist.values()))
    return lines


def heatmap(dist, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(dist)
    grid = torch.tensor([dist[label] for label in labels]).T.numpy()  # layers x matrices
    n_layer = grid.shape[0]
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2, 0.45 * n_layer + 1.6))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(n_layer), [str(i) for i in range(n_layer)])
    ax.set_xlabel("block matrix")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    if n_layer <= 24:  # values in the cells while they stay legible
        for i in range(n_layer):
            for j in range(len(labels)):
                bright = grid[i, j] > (grid.min() + grid.max()) / 2  # viridis is light at the top
                ax.text(j, i, f"{grid[i, j]:.1e}", ha="center", va="center", fontsize=6, color="k" if bright else "w")
    fig.colorbar(im, ax=ax, label="cosine distance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


DEFAULTS = dict(pretrained="", finetuned="",  # the two checkpoints, also as the first two arguments
                png="",   # write a heatmap here
                json="")  # write the distances here


def main(argv):
    cfg, _ = parse_config(DEFAULTS, argv, positional=("pretrained", "finetuned"))
    check(cfg["pretrained"] and cfg["finetuned"],
          "usage: python -m related.subspace PRETRAINED_CKPT FINETUNED_CKPT [--png PATH] [--json PATH]")
    for flag in ("png", "json"):  # checked before any work
        if cfg[flag]:
            check_output_file(cfg[flag], f"--{flag}")
    pre, ft = load_checkpoint(cfg["pretrained"]), load_checkpoint(cfg["finetuned"])
    dist = distances(pre, ft)
    sparsity = pretrain_sparsity(pre)
    print(f"cosine distance, {cfg['pretrained']} (sparsity {sparsity:g}) -> {cfg['finetuned']}")
    print("\n".join(table(dist)))
    if cfg["json"]:
        with open(cfg["json"], "w") as f:
            json.dump(dict(pretrained=cfg["pretrained"], finetuned=cfg["finetuned"], distances=dist), f, indent=1)
    if cfg["png"]:
        heatmap(dist, cfg["png"], f"1 - cos(W_pre, W_ft), pre-training sparsity {sparsity:g}")
        print(f"heatmap: {cfg['png']}")
    return dist


if __name__ == "__main__":
    run_cli(main)

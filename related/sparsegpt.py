"""
SparseGPT: one-shot second-order (OBS) pruning of a trained GPT (Frantar & Alistarh, ICML 2023),
written after the official code (github.com/IST-DASLab/sparsegpt) and its defaults.

For one linear layer y = W x the goal is a sparse W' minimising ||W X - W' X||^2 over calibration
inputs X. Every row shares the Hessian H = 2 X X^T, so:

  1. collect H from the layer's inputs with a forward hook (running mean over tokens);
  2. dead inputs (H_ii = 0) get H_ii = 1 and a zeroed column; damping 0.01 * mean(diag H);
  3. U = upper Cholesky factor of H^-1: row j of U is the OBS update for removing column j
     while only columns >= j are still free (GPTQ's "sequential inverse Hessians");
  4. sweep the columns left to right in blocks of 128: choose the block's mask by the OBS
     saliency w^2 / U_jj^2 of the *current* (already updated) weights, then for each column
     zero its pruned entries and push the error onto the columns to its right, so the surviving
     weights absorb what was removed; a lazy matmul updates the columns after the block.

Exact counts (our change): the official code prunes every score <= the floor(p * rows * 128)-th
smallest of a block, so ties and flooring make the count drift. Here block b prunes exactly
round(p * rows * end_b) - round(p * rows * start_b) entries (a top-k of its scores); the sum
telescopes to round(p * numel), the same count sparsity.py's other methods leave. Rows may
differ in sparsity, as in the official code. n:m mode (e.g. 2:4) picks the n lowest-saliency
entries of every group of m consecutive inputs in each row, so it is exact by construction.

The model-level driver prunes block by block, as the official OPT driver: calibration
activations enter block i, hooks on its six matrices collect their Hessians from the still
dense block, the six are pruned, and the block is re-run so block i+1 is calibrated on the
pruned block's outputs. Embeddings, LayerNorms, biases and the LM head are left dense.
All the math is float32, whatever the model's dtype.

As a pipeline step (the Sparse Llama recipe: prune a dense model, then continue sparse pre-training):

  python -m related.sparsegpt --ckpt=out/ckpt.pt --sparsity=0.5 --out=pruned.pt [--prune_n=2 --prune_m=4]
  python pretrain.py --init_from=pruned.pt --out_dir=out-sparse   # sparse pre-training with its masks
  python -m related.sparsegpt --ckpt=out/ckpt.pt --sparsity=0.5   # one-shot val loss: dense vs magnitude vs SparseGPT

--out writes an ordinary checkpoint (checkpoint.py): the pruned weights, their masks and a config.
--ckpt may also be a Hugging Face GPT-2 (gpt2, gpt2-medium, ... or a local folder: docs/hf.md); it
names no pre-training data, so pass --dataset (and --data_dir) for the calibration and validation windows.
"""
import copy
import math
import os

import torch

import sparsity as sp
from checkpoint import checkpoint_dict, save_checkpoint
from common import check, check_output_file, lock_output_file, parse_config, pick_device, release_outputs, run_cli
from data.prepare import ensure_prepared, load_tokens
from hf import load_any


@torch.no_grad()
def prune_linear(W, H, sparsity, prune_n=0, prune_m=0, blocksize=128, percdamp=0.01):
    """
    W (d_out, d_in), H (d_in, d_in) from calibration inputs. Returns (new W, mask) with mask
    True = kept; pruned entries of the new W are exactly 0 and the kept ones carry the OBS update.
    Unstructured (prune_n = 0) prunes exactly round(sparsity * W.numel()) entries.
    """
    W = W.detach().clone().float()
    H = H.detach().clone().float()
    rows, cols = W.shape
    if prune_n:
        assert 0 < prune_n < prune_m and cols % prune_m == 0 and blocksize % prune_m == 0
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device)
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
    Hinv = torch.linalg.cholesky(Hinv, upper=True)  # U with H^-1 = U^T U

    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if not prune_n:  # exact-count version of the official per-block threshold
            k = round(sparsity * rows * i2) - round(sparsity * rows * i1)
            scores = (W1 ** 2 / d.unsqueeze(0) ** 2).flatten()
            mask1.view(-1)[torch.argsort(scores)[:k]] = True
        for j in range(i2 - i1):
            w = W1[:, j]
            if prune_n and j % prune_m == 0:  # n lowest-saliency entries of each row's group of m
                scores = W1[:, j:j + prune_m] ** 2 / d[j:j + prune_m].unsqueeze(0) ** 2
                mask1.scatter_(1, j + torch.topk(scores, prune_n, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, j]] = 0.0
            err = (w - q) / d[j]
            W1[:, j:] -= err.unsqueeze(1) @ Hinv1[j, j:].unsqueeze(0)  # OBS compensation in the block
            Q1[:, j] = q
            Err1[:, j] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # the block's errors onto all later columns at once
        pruned[:, i1:i2] = mask1
    W[pruned] = 0.0  # already 0 up to rounding of the in-place updates; make it exact
    return W, ~pruned


class HessianHook:
    """Forward hook keeping H = 2/n * sum over tokens of x x^T for one linear layer's input."""

    def __init__(self, linear):
        cols = linear.weight.shape[1]
        self.H = torch.zeros(cols, cols, device=linear.weight.device)
        self.n = 0
        self.handle = linear.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
        # running mean: rescale the old sum, add the new tokens (the scale cancels in damping)
        self.H *= self.n / (self.n + x.shape[0])
        self.n += x.shape[0]
        x = math.sqrt(2 / self.n) * x
        self.H += x.T @ x


@torch.no_grad()
def calibration_batches(tokens, n_samples, block_size, seed=0, batch_size=8):
    """n_samples random windows of block_size tokens from a uint16 token array, in batches."""
    gen = torch.Generator().manual_seed(seed)
    ix = torch.randint(len(tokens) - block_size, (n_samples,), generator=gen).tolist()
    seqs = torch.stack([torch.from_numpy(tokens[i:i + block_size].astype("int64")) for i in ix])
    return list(seqs.split(batch_size))


@torch.no_grad()
def prune(model, calib_batches, sparsity, prune_n=0, prune_m=0, blocksize=128, percdamp=0.01, verbose=False):
    """
    One-shot SparseGPT of every block's six matrices, block by block, in place. calib_batches:
    (B, T) token tensors. Returns the masks (param name -> bool, True = kept, on the CPU).
    """
    was_training = model.training
    model.eval()
    device = model.lm_head.weight.device
    tr = model.transformer
    # inputs of block 0: embeddings of the calibration tokens
    xs = []
    for idx in calib_batches:
        idx = idx.to(device)
        xs.append(tr.drop(tr.wte(idx) + tr.wpe(torch.arange(idx.shape[1], device=device))))
    masks = {}
    for i, block in enumerate(tr.h):
        linears = {name: block.get_submodule(name) for name in sp.SPARSE_MATRICES}
        hooks = {name: HessianHook(lin) for name, lin in linears.items()}
        for x in xs:  # all six Hessians from the still dense block
            block(x)
        for name, lin in linears.items():
            hooks[name].handle.remove()
            W, mask = prune_linear(lin.weight, hooks[name].H, sparsity, prune_n, prune_m, blocksize, percdamp)
            if verbose:
                err = relative_error(lin.weight.float(), W, hooks[name].H)
                print(f"block {i} {name:12s} relative output error {err:.4f}")
            lin.weight.copy_(W.to(lin.weight.dtype))
            masks[f"transformer.h.{i}.{name}.weight"] = mask.cpu()
            del hooks[name].H
        xs = [block(x) for x in xs]  # the next block sees the pruned block's outputs
    model.train(was_training)
    # same order as sparsity.sparsifiable, so checkpoints and reports look alike
    return {name: masks[name] for name in sp.sparsifiable(model)}


def relative_error(W, W_new, H):
    """||W X - W' X|| / ||W X|| from the Hessian alone: tr(D H D^T) / tr(W H W^T), D = W - W'."""
    D = (W - W_new).float()
    return math.sqrt(float(((D @ H) * D).sum()) / float(((W.float() @ H) * W.float()).sum()))


def check_pattern(sparsity, prune_n, prune_m):
    """The n:m settings: 0 < n < m, and n:m fixes the sparsity to n/m."""
    if not prune_n and not prune_m:
        return
    check(0 < prune_n < prune_m, f"--prune_n/--prune_m must satisfy 0 < n < m, got {prune_n}:{prune_m}")
    check(abs(sparsity - prune_n / prune_m) <= 1e-9,
          f"--prune_n={prune_n} --prune_m={prune_m} means --sparsity={prune_n / prune_m:g}, got {sparsity}")


def magnitude_prune(model, sparsity, prune_n=0, prune_m=0):
    """The baseline, in place: zero the smallest |w| of every sparsifiable matrix (n:m: of each group of m)."""
    params = dict(model.named_parameters())
    for name in sp.sparsifiable(model):
        p = params[name]
        if prune_n:
            groups = p.detach().abs().view(p.shape[0], -1, prune_m)
            drop = groups.topk(prune_n, dim=-1, largest=False).indices
            keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False).view(p.shape)
        else:
            keep = sp.magnitude_mask(p, sparsity).to(p.device)
        p.data.mul_(keep)


# -----------------------------------------------------------------------------
# the command: prune a checkpoint (--out) and/or compare its validation loss dense, magnitude-pruned
# and SparseGPT-pruned

DEFAULTS = dict(ckpt="", sparsity=0.5, prune_n=0, prune_m=0, calib_samples=128, eval_batches=20,
                batch_size=8, dataset="", data_dir="", seed=0, device="cpu",
                out="")  # write the pruned checkpoint here (then the magnitude row is skipped)


def main(argv):
    cfg, _ = parse_config(DEFAULTS, argv)
    check(cfg["ckpt"], "usage: python -m related.sparsegpt --ckpt=PATH [--sparsity=0.5 --prune_n=2 --prune_m=4 "
          "--out=pruned.pt ...]")
    check(0 < cfg["sparsity"] < 1, f"--sparsity must be in (0, 1), got {cfg['sparsity']}")
    check_pattern(cfg["sparsity"], cfg["prune_n"], cfg["prune_m"])
    for key in ("calib_samples", "eval_batches", "batch_size"):
        check(cfg[key] >= 1, f"--{key} must be at least 1, got {cfg[key]}")
    if cfg["out"]:  # checked before any work; a pruned checkpoint never replaces a file
        check_output_file(cfg["out"], "--out")
        check(not os.path.exists(cfg["out"]), f"--out {cfg['out']} exists: choose another path (saved work "
              "is never overwritten)")
    cfg["device"] = pick_device(cfg["device"])
    model, ckpt = load_any(cfg["ckpt"])
    saved = ckpt.get("pretrain_config") or ckpt.get("config") or {}  # a fine-tuned checkpoint: its pre-training's
    dataset = cfg["dataset"] or saved.get("dataset")
    check(dataset, f"{cfg['ckpt']} does not name its pre-training dataset: pass --dataset=NAME")
    data_dir = cfg["data_dir"] or saved.get("data_dir") or None
    ensure_prepared(dataset, data_dir)
    lock = lock_output_file(cfg["out"]) if cfg["out"] else None  # --out is this run's until it is written
    model.to(cfg["device"]).eval()
    T = model.config.block_size
    val = calibration_batches(load_tokens(dataset, "val", data_dir), cfg["eval_batches"] * cfg["batch_size"],
                              T, seed=cfg["seed"] + 1, batch_size=cfg["batch_size"])
    calib = calibration_batches(load_tokens(dataset, "train", data_dir), cfg["calib_samples"], T, cfg["seed"])

    @torch.no_grad()
    def val_loss(m):
        losses = [m(x[:, :-1].to(cfg["device"]), x[:, 1:].to(cfg["device"]))[1].item() for x in val]
        return sum(losses) / len(losses)

    pattern = f"{cfg['prune_n']}:{cfg['prune_m']}" if cfg["prune_n"] else f"{cfg['sparsity']:.0%} unstructured"
    rows = [("dense", val_loss(model))]
    if not cfg["out"]:
        mag = copy.deepcopy(model)
        magnitude_prune(mag, cfg["sparsity"], cfg["prune_n"], cfg["prune_m"])
        rows.append((f"magnitude {pattern}", val_loss(mag)))
    masks = prune(model, calib, cfg["sparsity"], cfg["prune_n"], cfg["prune_m"])
    check(sp.check_masked(model, sp.masks_to(masks, cfg["device"])), "a pruned weight is non-zero")
    rows.append((f"sparsegpt {pattern}", val_loss(model)))
    print(f"one-shot pruning of {cfg['ckpt']} ({dataset} val, {len(val)} x {cfg['batch_size']} windows of {T}; "
          f"{cfg['calib_samples']} calibration sequences)")
    for label, loss in rows:
        print(f"{label:28s} val loss {loss:.4f}  ppl {math.exp(loss):9.2f}")
    if cfg["out"]:  # an ordinary checkpoint: pretrain.py --init_from=<out> keeps its masks
        config = {**saved, "sparsity": cfg["sparsity"], "pruned_by": "sparsegpt",
                  **{k: cfg[k] for k in ("prune_n", "prune_m", "calib_samples")}, "pruned_from": str(cfg["ckpt"])}
        save_checkpoint(checkpoint_dict(model.state_dict(), model.config, config, masks), cfg["out"])
        print(f"wrote {cfg['out']}: the pruned weights and their masks")
        release_outputs(*lock)
    return dict(rows)


if __name__ == "__main__":
    run_cli(main)

"""
What the block products cost inside a decode step, without the profiler (whose per-op records inflate small
products): GPT-2 Small, one token per step, timed masked (dense products), with SparseLinear, and with every
block matrix replaced by a module that returns a preallocated output. The differences are the products'
in-model costs, to set beside `python -m tools.kernels.one_token` (the same products back to back); what is
left (LM head, attention, norms, Python) is shared by both, and bounds generation's speed-up: it prints the
sparse products' cost that a given speed-up needs. Run from the repository root:

    python -m tools.kernels.in_model [--sparsity 0.75] [--threads 2] [--tokens 48] [--repeats 7] [--target 1.5]
"""
import argparse
import copy
import time

import torch

from model import GPT, PRESETS
from sparse_kernels import to_sparse_model
from sparse_kernels.sparse_linear import _swap
from sparsity import apply_masks, make_masks
from tools.kernel_bench import cpu_model


class NoProduct(torch.nn.Module):
    """Stands in for a block matrix: the right shape, no work (one token at a time; zeros for the prompt)."""

    def __init__(self, out_features):
        super().__init__()
        self.y = torch.zeros(1, 1, out_features)

    def forward(self, x):
        return self.y if x.shape[:-1] == (1, 1) else x.new_zeros(*x.shape[:-1], self.y.shape[-1])


def decode_ms(model, prompt, tokens):
    with torch.no_grad():
        caches = model.new_kv_caches()
        logits, _ = model(prompt, kv_caches=caches)
        token, pos = logits[:, -1].argmax(-1, keepdim=True), prompt.size(1)
        t = time.perf_counter()
        for _ in range(tokens):
            model(token, kv_caches=caches, pos_offset=pos)
            pos += 1
        return (time.perf_counter() - t) / tokens * 1e3


def lm_head_ms(model, tokens):
    """The LM head alone, one token: the part of the rest that only a cheaper head could shrink."""
    x = torch.randn(1, 1, model.config.n_embd)
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(tokens):
            model.lm_head(x)
        return (time.perf_counter() - t) / tokens * 1e3


def decode_arguments(doc):
    """The options of the decode-step tools (this one, fused_qkv): sparsity, threads, tokens, repeats."""
    ap = argparse.ArgumentParser(description=doc.strip().split("\n")[0])
    ap.add_argument("--sparsity", type=float, default=0.75)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=7)
    return ap


def masked_gpt2_small(sparsity):
    """GPT-2 Small in eval mode with random masks applied (seed 0), its masks, and an 8-token prompt."""
    torch.manual_seed(0)
    model = GPT(PRESETS["gpt2-small"]).eval()
    masks = make_masks(model, sparsity, "random", 0)
    apply_masks(model, masks)
    prompt = torch.randint(0, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    return model, masks, prompt


def main():
    ap = decode_arguments(__doc__)
    ap.add_argument("--target", type=float, default=1.5, help="the speed-up over masked to solve for")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, masks, prompt = masked_gpt2_small(args.sparsity)
    masked = copy.deepcopy(model)
    sparse = to_sparse_model(model, masks)  # in place
    without = copy.deepcopy(masked)
    for name in masks:
        _swap(without, name, lambda linear: NoProduct(linear.out_features))
    runs = {"masked": masked, "csr": sparse, "without": without}
    best = {name: float("inf") for name in [*runs, "lm_head"]}
    for _ in range(args.repeats):  # interleaved
        for name, m in runs.items():
            best[name] = min(best[name], decode_ms(m, prompt, args.tokens))
        best["lm_head"] = min(best["lm_head"], lm_head_ms(masked, args.tokens))
    rest = best["without"]
    dense_products, sparse_products = best["masked"] - rest, best["csr"] - rest
    print(f"# {cpu_model()}; {args.threads} threads; gpt2-small at s={args.sparsity}, one token per step, "
          f"best of {args.repeats} x {args.tokens} steps")
    print(f"{'masked step':40s} {best['masked']:7.2f} ms")
    print(f"{'csr step':40s} {best['csr']:7.2f} ms   speed-up {best['masked'] / best['csr']:.2f}x")
    print(f"{'without the block products (the rest)':40s} {rest:7.2f} ms   LM head, attention, norms, Python")
    print(f"{'  of which the LM head alone':40s} {best['lm_head']:7.2f} ms")
    print(f"{'dense block products in the model':40s} {dense_products:7.2f} ms")
    print(f"{'sparse block products in the model':40s} {sparse_products:7.2f} ms")
    need = best["masked"] / args.target - rest
    print(f"{args.target:.2f}x needs the sparse products at {need:.2f} ms" +
          ("" if need > 0 else ": not reachable, the rest alone is too slow"))

if __name__ == "__main__":
    main()

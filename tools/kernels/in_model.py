"""
What the sparse block products cost inside a decode step, without the profiler (whose per-op records inflate
small products): GPT-2 Small with SparseLinear, one token per step, timed as is and with every SparseLinear
replaced by a module that returns a preallocated output. The difference is the products' in-model cost, to set
beside `python -m tools.kernels.one_token` (the same products back to back). Run from the repository root:

    python -m tools.kernels.in_model [--sparsity 0.75] [--threads 2] [--tokens 48] [--repeats 7]
"""
import argparse
import copy
import time

import torch

from model import GPT, PRESETS
from sparse_kernels import SparseLinear, to_sparse_model
from sparsity import apply_masks, make_masks
from tools.kernel_bench import cpu_model


class NoProduct(torch.nn.Module):
    """Stands in for a SparseLinear: the right shape, no work (one token at a time; zeros for the prompt)."""

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    ap.add_argument("--sparsity", type=float, default=0.75)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(PRESETS["gpt2-small"]).eval()
    masks = make_masks(model, args.sparsity, "random", 0)
    apply_masks(model, masks)
    sparse = to_sparse_model(model, masks)  # in place
    without = copy.deepcopy(sparse)
    for module in list(without.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, SparseLinear):
                setattr(module, name, NoProduct(child.out_features))
    prompt = torch.randint(0, sparse.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    best = {"csr": float("inf"), "without the block products": float("inf")}
    for _ in range(args.repeats):  # interleaved
        for name, model in (("csr", sparse), ("without the block products", without)):
            best[name] = min(best[name], decode_ms(model, prompt, args.tokens))
    print(f"# {cpu_model()}; {args.threads} threads; gpt2-small at s={args.sparsity}, one token per step, "
          f"best of {args.repeats} x {args.tokens} steps")
    for name, ms in best.items():
        print(f"{name:28s} {ms:7.2f} ms per step")
    print(f"{'block products in the model':28s} {best['csr'] - best['without the block products']:7.2f} ms per step")


if __name__ == "__main__":
    main()

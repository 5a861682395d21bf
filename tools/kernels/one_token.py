"""
The one-token product (generation) on GPT-2 Small's block matrices, outside the model: dense F.linear, the
CSR gather path and the bitmap path (AVX-512 builds only), interleaved, best of --repeats; and, as a reference
for the memory's speed, torch summing each dense matrix's rows (the same bytes as dense, no product). Run from the
repository root:

    python -m tools.kernels.one_token [--sparsity 0.75] [--layers 12] [--threads 2] [--repeats 7]

--layers 12 gives 85 M weights, so they stream from memory as in a model; --layers 1 keeps them in cache.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from sparse_kernels.cpu import extension
from sparse_kernels.csr import to_csr
from tools.kernel_bench import cpu_model

ap = argparse.ArgumentParser()
ap.add_argument("--sparsity", type=float, default=0.75)
ap.add_argument("--layers", type=int, default=12)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeats", type=int, default=7)
args = ap.parse_args()
torch.set_num_threads(args.threads)
ext = extension()
assert ext is not None, "the C++ kernel is not available here"
torch.manual_seed(0)
shapes = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * args.layers  # q|k|v, attn out, MLP in, MLP out
dense, csrs = [], []
for m, k in shapes:
    w = torch.randn(m, k) * (torch.rand(m, k) >= args.sparsity)
    c = to_csr(w)
    dense.append(w)
    csrs.append((c.crow, c.col.to(torch.int16), c.values, m, ext.bitmap(c.crow, c.col, k)))
xs = {768: torch.randn(1, 768), 3072: torch.randn(1, 3072)}


def sweep(kind):
    for w, (crow, col, val, m, bits) in zip(dense, csrs):
        x = xs[w.shape[1]]
        if kind == "dense":
            F.linear(x, w)
        elif kind == "row sums":  # no product: how fast torch streams the same dense weights, a reference
            w.sum(-1)
        else:
            ext.spmm(crow, col, val, None, x, m, None, bits if kind == "bitmap" else None)


for w, (crow, col, val, m, bits) in zip(dense[:4], csrs[:4]):
    torch.testing.assert_close(ext.spmm(crow, col, val, None, xs[w.shape[1]], m, None, bits),
                               F.linear(xs[w.shape[1]], w), rtol=1e-4, atol=1e-4)
kinds = ["dense", "row sums", "gather"] + (["bitmap"] if csrs[0][4].numel() else [])
best = {k: float("inf") for k in kinds}
for _ in range(args.repeats):
    for k in kinds:
        t = time.perf_counter()
        for _ in range(3):
            sweep(k)
        best[k] = min(best[k], (time.perf_counter() - t) / 3)
nnz = sum(c[2].numel() for c in csrs)
dense_bytes = sum(w.numel() * 4 for w in dense)
read = {"dense": dense_bytes, "row sums": dense_bytes, "gather": nnz * 6,
        "bitmap": nnz * 4 + sum(c[4].numel() * 8 for c in csrs)}
print(f"# {cpu_model()}; {args.threads} threads; {len(shapes)} matrices at s={args.sparsity:g}, one token, best of {args.repeats}")
for k in kinds:
    print(f"{k:8s} {best[k] * 1e3:7.2f} ms  {read[k] / best[k] / 1e9:5.1f} GB/s  dense / this {best['dense'] / best[k]:4.2f}x")

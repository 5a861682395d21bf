"""
How far the CPU SDDMM (the weight gradient at the nonzeros) can go: its time on each layer shape
against an "L1-resident twin" and dense dy.T @ x, interleaved, best of --repeats. Run from the
repository root:

    python -m tools.kernels.sddmm_ceiling [--threads 2] [--repeats 7] [--sparsity 0.75,0.9]

The twin has the layer's shape and entries per row, but all of them in the first 64 columns
(repeated columns; the kernel only adds entry by entry): one column block, so the x slab never leaves
L1 and each row's run is as long as it can be. Packing x and dy, the horizontal sums and writing g are
the layer's. Dense's time over the twin's is the most this inner loop (one load of x per FMA, a
horizontal sum per entry and token tile) could gain at that density; the layer's time over the twin's
is what its memory traffic and short runs cost.
"""
import argparse
import os
import time

import torch

from sparse_kernels import CSR, to_csr
from sparse_kernels.cpu import sddmm
from tools.kernel_bench import SHAPES, cpu_model

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeats", type=int, default=7)
ap.add_argument("--sparsity", default="0.75,0.9")
ap.add_argument("--tokens", type=int, default=2048)
args = ap.parse_args()
torch.set_num_threads(args.threads)
g = torch.Generator().manual_seed(0)
print(f"# tools.kernels.sddmm_ceiling {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_model()}; "
      f"torch {torch.__version__}; {args.threads} threads; {args.tokens} tokens; best of {args.repeats}; "
      f"load average {os.getloadavg()[0]:.1f}")
print("layer               out x in     s  dense ms  twin ms  layer ms  dense/twin (ceiling)  dense/layer  layer/ceiling")
for model, name, m, k in SHAPES:
    x, dy = torch.randn(args.tokens, k, generator=g), torch.randn(args.tokens, m, generator=g)
    for s in (float(v) for v in args.sparsity.split(",")):
        mask = torch.rand(m, k, generator=g) >= s
        layer = to_csr(torch.randn(m, k, generator=g) * mask, mask)
        per_row = max(1, round(k * (1 - s)))
        cols = torch.randint(0, 64, (m, per_row), generator=g).sort(1).values
        twin = CSR(torch.arange(0, m * per_row + 1, per_row, dtype=torch.int32), cols.flatten().to(torch.int16),
                   torch.zeros(m * per_row), (m, k))
        layer = CSR(layer.crow, layer.col.to(torch.int16), layer.values, layer.shape)  # as SparseLinear keeps it
        fns = {"dense": lambda: dy.t() @ x, "twin": lambda: sddmm(twin, dy, x), "layer": lambda: sddmm(layer, dy, x)}
        best = {n: float("inf") for n in fns}
        for _ in range(args.repeats):
            for n, fn in fns.items():
                t = time.perf_counter()
                fn()
                best[n] = min(best[n], time.perf_counter() - t)
        ceiling, got = best["dense"] / best["twin"], best["dense"] / best["layer"]
        print(f"{model:10s} {name:7s} {m:5d}x{k:<5d} {s:4.2f} {best['dense'] * 1e3:9.1f} {best['twin'] * 1e3:8.1f} "
              f"{best['layer'] * 1e3:9.1f} {ceiling:20.2f}x {got:11.2f}x {got / ceiling:13.2f}", flush=True)

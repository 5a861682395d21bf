"""
How far the CPU kernel can go: its multiply-add rate when everything it touches stays in L1,
against dense x @ W.T's, interleaved, one thread, best of --repeats. Run from the repository root:

    python -m tools.kernels.ceiling [repeats]          # default 15

The layer is GPT-2 Small's c_fc (3072 x 768) with a random mask. Its "L1-resident" twin has the
same number of entries per row, but all of them in the first 64 columns (repeated columns; the
kernel only adds entry by entry): one column block, so the packed x slab (64 x 128 tokens, 32 KB)
never leaves L1 and the partial sums are never reloaded. What is left is the inner loop, one
64-byte load of x per 16-lane FMA, and the same packing and output as the layer. Dense's time
over the twin's is the most the kernel could gain at that density without a different inner loop.
"""
import sys
import time

import torch

from sparse_kernels import CSR, csr_matmul, to_csr  # noqa: E402
from tools.kernel_bench import cpu_model  # noqa: E402

repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 15
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
tokens = 2048


def masked(out_f, in_f, density):
    mask = torch.rand(out_f, in_f, generator=g) < density
    return torch.randn(out_f, in_f, generator=g) * mask, mask


print(f"{cpu_model()}, torch {torch.__version__}, 1 thread, {tokens} tokens, best of {repeats}")
x = torch.randn(tokens, 768, generator=g)
w_dense = torch.randn(3072, 768, generator=g)
for density in (0.25, 0.1):
    mask = torch.rand(3072, 768, generator=g) < density
    layer = to_csr(w_dense * mask, mask)
    per_row = round(768 * density)
    cols = torch.randint(0, 64, (3072, per_row), generator=g).sort(1).values
    twin = CSR(torch.arange(0, 3072 * per_row + 1, per_row, dtype=torch.int32), cols.flatten().int(),
               torch.randn(3072 * per_row, generator=g), (3072, 768))
    fns = {"dense": lambda: x @ w_dense.t(), "twin": lambda: csr_matmul(twin, x), "layer": lambda: csr_matmul(layer, x)}
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    ms = {k: f"{v * 1e3:.1f}" for k, v in best.items()}
    print(f"sparsity {1 - density:.2f}: dense {ms['dense']} ms, L1-resident twin {ms['twin']} ms, layer {ms['layer']} ms"
          f" | dense/twin {best['dense'] / best['twin']:.2f}x (the most), dense/layer {best['dense'] / best['layer']:.2f}x"
          f" | multiply-adds/s relative to dense: twin {best['dense'] * density / best['twin']:.2f}, "
          f"layer {best['dense'] * density / best['layer']:.2f}", flush=True)

"""
The AVX-512 kernel's fixed cost: spmm's time as sparsity goes to 99.99 %, where nothing is left to
multiply, next to dense x @ W.T (one thread, 2048 tokens). Run from the repository root:

    python -m tools.kernels.fixed_cost [out in threads]     # default 3072 768 1
"""
import functools
import sys

import torch

from sparse_kernels import to_csr  # noqa: E402
from sparse_kernels.cpu import extension  # noqa: E402
from tools.kernel_bench import best_ms  # noqa: E402

out_f, in_f, threads = (int(a) for a in (sys.argv[1:4] if len(sys.argv) > 3 else (3072, 768, 1)))
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
x = torch.randn(2048, in_f, generator=g)
ext = extension()
best = functools.partial(best_ms, repeats=5)


w_dense = torch.randn(out_f, in_f, generator=g)
print(f"{out_f}x{in_f}, 2048 tokens, {threads} thread(s): dense {best(lambda: x @ w_dense.t()):.1f} ms")
for s in (0.75, 0.9, 0.99, 0.9999):
    mask = torch.rand(out_f, in_f, generator=g) >= s
    c = to_csr(torch.randn(out_f, in_f, generator=g) * mask, mask)
    ms = best(lambda: ext.spmm(c.crow, c.col, c.values, None, x, out_f))
    print(f"s={s}: ours {ms:.1f} ms", flush=True)

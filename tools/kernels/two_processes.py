"""
One thread of dense x @ W.T and of the CSR kernel, best of 9, twice; run it alone, then as two
processes at once, to see whether two busy cores slow each other down (shared cache, memory):

    python -m tools.kernels.two_processes 3072 768 0.75 solo
    python -m tools.kernels.two_processes 3072 768 0.75 A & python -m tools.kernels.two_processes 3072 768 0.75 B; wait
"""
import sys

import torch

from sparse_kernels import csr_matmul, to_csr  # noqa: E402
from tools.kernel_bench import best_ms  # noqa: E402

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
out_f, in_f, s, name = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
x = torch.randn(2048, in_f, generator=g)
w = torch.randn(out_f, in_f, generator=g)
mask = torch.rand(out_f, in_f, generator=g) >= s
csr, w = to_csr(w * mask, mask), w * mask
csr_matmul(csr, x), x @ w.T  # warm-up
for _ in range(2):
    dense, ours = best_ms(lambda: x @ w.T, 9), best_ms(lambda: csr_matmul(csr, x), 9)
    print(f"{name} {out_f}x{in_f} s={s}: dense {dense:.1f} ours {ours:.1f} {dense / ours:.2f}x", flush=True)

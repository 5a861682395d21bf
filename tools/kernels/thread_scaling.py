"""
Dense x @ W.T against the CSR kernel at 1 and 2 threads, alternating (1, 2, 1, 2), best of 7 each,
2048 tokens, GPT-2 Small's c_fc and c_proj shapes and GPT-3 XL's c_fc. Run from the repository root:

    python -m tools.kernels.thread_scaling

It shows how each scales from one thread to two on the machine at hand (dense GEMM is bound by the
FMA units, the sparse kernel by loads and memory traffic, so they need not scale alike).
"""

import torch

from sparse_kernels import csr_matmul, to_csr  # noqa: E402
from tools.kernel_bench import best_ms  # noqa: E402

g = torch.Generator().manual_seed(0)
x = {k: torch.randn(2048, k, generator=g) for k in (768, 3072, 2048)}
for s in (0.75, 0.9):
    for out_f, in_f in ((3072, 768), (768, 3072), (8192, 2048)):
        w = torch.randn(out_f, in_f, generator=g)
        mask = torch.rand(out_f, in_f, generator=g) >= s
        w = w * mask
        csr, xi = to_csr(w, mask), x[in_f]
        csr_matmul(csr, xi)  # builds and caches what the kernel keeps per pattern
        cells = []
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            dense, ours = best_ms(lambda: xi @ w.T, 7), best_ms(lambda: csr_matmul(csr, xi), 7)
            cells.append(f"t{threads} dense {dense:6.1f} ours {ours:6.1f} {dense / ours:4.2f}x")
        print(f"{out_f}x{in_f} s={s}: " + " | ".join(cells), flush=True)

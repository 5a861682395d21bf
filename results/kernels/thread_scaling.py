"""
Dense x @ W.T against the CSR kernel at 1 and 2 threads, alternating (1, 2, 1, 2), best of 7 each,
2048 tokens, GPT-2 Small and GPT-3 XL c_fc shapes and GPT-2 Small c_proj. Run from the repository root:

    python results/kernels/thread_scaling.py

It shows how each scales from one thread to two on the machine at hand (dense GEMM is bound by the
FMA units, the sparse kernel by loads and memory traffic, so they need not scale alike).
"""
import sys, time, torch
sys.path.insert(0, ".")
from kernels import to_csr, csr_matmul
g = torch.Generator().manual_seed(0)
shapes = [(3072, 768), (768, 3072), (8192, 2048)]
x = {k: torch.randn(2048, k, generator=g) for k in (768, 3072, 2048)}
def best(f, n=7):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts) * 1e3
for s in (0.75, 0.9):
    for (o, i) in shapes:
        w = torch.randn(o, i, generator=g); m = torch.rand(o, i, generator=g) >= s
        csr = to_csr(w * m, m); xi = x[i]; wm = w * m
        csr_matmul(csr, xi)
        row = []
        for th in (1, 2, 1, 2):
            torch.set_num_threads(th)
            d = best(lambda: xi @ wm.T); o_ = best(lambda: csr_matmul(csr, xi))
            row.append(f"t{th} dense {d:6.1f} ours {o_:6.1f} {d/o_:4.2f}x")
        print(f"{o}x{i} s={s}: " + " | ".join(row), flush=True)

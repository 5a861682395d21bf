"""
One thread of dense x @ W.T and of the CSR kernel, best of 9, twice; run it alone, then as two
processes at once, to see whether two busy cores slow each other down (shared cache, memory):

    python results/kernels/two_processes.py 3072 768 0.75 solo
    python results/kernels/two_processes.py 3072 768 0.75 A & python results/kernels/two_processes.py 3072 768 0.75 B; wait
"""
import sys, time, torch
sys.path.insert(0, ".")  # run from the repository root
from kernels import to_csr, csr_matmul
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
o, i, s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
x = torch.randn(2048, i, generator=g)
w = torch.randn(o, i, generator=g); m = torch.rand(o, i, generator=g) >= s
csr = to_csr(w * m, m); wm = w * m
csr_matmul(csr, x); x @ wm.T
def best(f, n=9):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts) * 1e3
for _ in range(2):
    d = best(lambda: x @ wm.T); sp = best(lambda: csr_matmul(csr, x))
    print(f"{sys.argv[4]} {o}x{i} s={s}: dense {d:.1f} ours {sp:.1f} {d/sp:.2f}x", flush=True)

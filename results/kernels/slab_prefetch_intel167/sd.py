# our SDDMM (experimental copy) against dense dy.T @ x; wide-input layers on the transposed pattern like cpu.sddmm
import os, sys, time, torch
HERE = os.path.dirname(os.path.abspath(__file__)); sys.path.insert(0, os.path.join(HERE, '..', '..', '..'))
from torch.utils.cpp_extension import load
ext = load(name="spdf_x_avx2", sources=[os.path.join(HERE, "csr_x.cpp")], extra_cflags=["-O3", "-march=x86-64-v3", "-fopenmp"], extra_ldflags=["-fopenmp"])
M, K, s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
torch.manual_seed(0)
mask = torch.rand(M, K) >= s
def csr(m):
    crow = torch.zeros(m.shape[0] + 1, dtype=torch.int32); crow[1:] = m.sum(1).cumsum(0)
    return crow, m.nonzero()[:, 1].to(torch.int16)
crow, col = csr(mask)
crow_t, col_t = csr(mask.T.contiguous())
# perm: entry q of W.T's CSR is W's entry perm[q]
idx = torch.full((M, K), -1, dtype=torch.int64); idx[mask] = torch.arange(int(mask.sum()))
perm = idx.T[mask.T].int()
x = torch.randn(2048, K); dy = torch.randn(2048, M)
nnz = int(mask.sum())
if K > M:
    kb = ext.sddmm_cols(M, nnz, K); bnd = ext.bounds(crow_t, col_t, M, kb)
    f = lambda: ext.sddmm(crow_t, col_t, x, dy, bnd, perm)
else:
    kb = ext.sddmm_cols(K, nnz, M); bnd = ext.bounds(crow, col, K, kb)
    f = lambda: ext.sddmm(crow, col, dy, x, bnd)
ref = (dy.T @ x)[mask]
assert torch.allclose(f(), ref, atol=1e-2, rtol=1e-3)
def t(g):
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter(); g(); best = min(best, time.perf_counter() - t0)
    return best * 1e3
res = [(t(lambda: dy.T @ x), t(f)) for _ in range(2)]
d = min(r[0] for r in res); o = min(r[1] for r in res)
env = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("X_"))
print(f"sddmm {M}x{K} s={s} [{env}] kb={kb}: dense {d:.1f} ms ours {o:.1f} ms  {d/o:.2f}x", flush=True)

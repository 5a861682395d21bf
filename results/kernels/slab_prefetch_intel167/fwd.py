# time our AVX2 tiled spmm (experimental copy) against dense x @ W.T on one shape; env X_RB/X_SLAB/X_PF
import os, sys, time, torch
HERE = os.path.dirname(os.path.abspath(__file__)); sys.path.insert(0, os.path.join(HERE, '..', '..', '..'))
from torch.utils.cpp_extension import load
ext = load(name="spdf_x_avx2", sources=[os.path.join(HERE, "csr_x.cpp")], extra_cflags=["-O3", "-march=x86-64-v3", "-fopenmp"], extra_ldflags=["-fopenmp"])
import sparse_kernels.csr as C
M, K, s = [float(a) for a in sys.argv[1:4]]; M, K = int(M), int(K)
torch.manual_seed(0)
W = torch.randn(M, K)
mask = torch.rand(M, K) >= s
W = W * mask
crow = torch.zeros(M + 1, dtype=torch.int32); crow[1:] = mask.sum(1).cumsum(0)
col = mask.nonzero()[:, 1].to(torch.int16 if K < 32768 else torch.int32)
val = W[mask]
x = torch.randn(2048, K)
kb = ext.block_cols(2048, val.numel(), M, K)
bnd = ext.bounds(crow, col, K, kb)
def t(f):
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter(); f(); best = min(best, time.perf_counter() - t0)
    return best * 1e3
ref = x @ W.T
y = ext.spmm(crow, col, val, None, x, M, bnd)
assert torch.allclose(y, ref, atol=1e-3, rtol=1e-3)
res = []
for _ in range(2):
    d = t(lambda: x @ W.T); o = t(lambda: ext.spmm(crow, col, val, None, x, M, bnd))
    res.append((d, o))
d = min(r[0] for r in res); o = min(r[1] for r in res)
print(f"{M}x{K} s={s} RB={os.environ.get('X_RB',64)} SLAB={os.environ.get('X_SLAB','32K')} PF={os.environ.get('X_PF',0)} kb={kb}: dense {d:.1f} ms ours {o:.1f} ms  {d/o:.2f}x", flush=True)

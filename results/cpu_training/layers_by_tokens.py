"""The four GPT-2 Small block-matrix products (forward, dy@W, SDDMM) alone, dense vs csr, 2 threads, best of 7.

    python results/cpu_training/layers_by_tokens.py TOKENS SPARSITY
"""
import os, sys, time, torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))  # the repository root
from sparse_kernels import to_csr, transpose_plan, CSR
from sparse_kernels import cpu
torch.set_num_threads(2)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
s = float(sys.argv[2]) if len(sys.argv) > 2 else 0.75
g = torch.Generator().manual_seed(0)
for m, k in [(2304, 768), (768, 768), (3072, 768), (768, 3072)]:
    mask = torch.rand(m, k, generator=g) >= s
    W = torch.randn(m, k, generator=g) * mask
    csr = to_csr(W, mask); csr = CSR(csr.crow, csr.col.to(torch.int16), csr.values, csr.shape)
    ct, perm = transpose_plan(to_csr(W, mask)); ct = CSR(ct.crow, ct.col.to(torch.int16), csr.values[perm.long()], ct.shape)
    x = torch.randn(N, k, generator=g); dy = torch.randn(N, m, generator=g); b = torch.randn(m)
    fns = {'d_fwd': lambda: torch.addmm(b, x, W.t()), 'd_dx': lambda: dy @ W, 'd_dw': lambda: dy.t() @ x,
           'o_fwd': lambda: cpu.spmm(csr, x, b), 'o_dx': lambda: cpu.spmm(ct, dy), 'o_dw': lambda: cpu.sddmm(csr, dy, x)}
    best = {n: 1e9 for n in fns}
    for _ in range(7):
        for n, f in fns.items():
            t = time.perf_counter(); f(); best[n] = min(best[n], time.perf_counter() - t)
    tot_d = best['d_fwd'] + best['d_dx'] + best['d_dw']; tot_o = best['o_fwd'] + best['o_dx'] + best['o_dw']
    print(f'{m}x{k} N={N} s={s}: ' + ' '.join(f"{p}: {best['d_'+p]*1e3:.2f}/{best['o_'+p]*1e3:.2f} ({best['d_'+p]/best['o_'+p]:.2f}x)" for p in ('fwd','dx','dw')) + f' | total {tot_d*1e3:.1f}/{tot_o*1e3:.1f} ({tot_d/tot_o:.2f}x)', flush=True)

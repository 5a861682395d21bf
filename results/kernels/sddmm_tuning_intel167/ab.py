# SDDMM variants against dense dy.T @ x, interleaved, best of 5, 2 threads, 2048 tokens.
# /tmp/sd/exp.cpp = c19122d:sparse_kernels/csr_cpu.cpp + sddmm_x.cpp (this folder). Usage:
#   python ab.py native|x86-64-v3 V:G:RB:KB[,...] [sparsities] [shape indices]
# V vectors per token tile (8: 128 tokens with AVX-512, 64 with AVX2), G entries per group, RB rows per block, KB columns per block
import sys, time, os, torch
sys.path.insert(0, '/work/main')
from torch.utils.cpp_extension import load
from sparse_kernels import to_csr
arch = sys.argv[1]  # native or x86-64-v3
configs = [tuple(int(v) for v in c.split(':')) for c in sys.argv[2].split(',')]  # V:G:RB:KB
sps = [float(s) for s in (sys.argv[3] if len(sys.argv) > 3 else '0.75,0.9').split(',')]
shapes = [(3072, 768), (768, 3072), (8192, 2048), (2048, 8192)]
if len(sys.argv) > 4: shapes = [shapes[int(i)] for i in sys.argv[4].split(',')]
ext = load(name='sdexp_' + arch.replace('-', '_'), sources=['/tmp/sd/exp.cpp'], extra_cflags=['-O3', f'-march={arch}', '-fopenmp'], extra_ldflags=['-fopenmp'])
torch.set_num_threads(2)
print(arch, 'configs V:G:RB:KB', configs, time.strftime('%H:%M UTC', time.gmtime()), 'load', os.getloadavg()[0], flush=True)
g = torch.Generator().manual_seed(0)
N = 2048
for m, k in shapes:
    for s in sps:
        W = torch.randn(m, k, generator=g); mask = torch.rand(m, k, generator=g) >= s
        csr = to_csr(W * mask, mask)
        col16 = csr.col.to(torch.int16)
        x = torch.randn(N, k, generator=g); dy = torch.randn(N, m, generator=g)
        ref = (dy.T @ x)[mask]
        fns = {'dense': lambda: dy.T @ x}
        for (V, G, RB, KB) in configs:
            bnd = ext.bounds(csr.crow, col16, k, KB)
            fns[f'{V}:{G}:{RB}:{KB}'] = (lambda V=V, G=G, RB=RB, KB=KB, bnd=bnd: ext.sddmm_x(csr.crow, col16, dy, x, V, G, RB, KB, bnd))
        for n, f in fns.items():
            if n != 'dense':
                out = f(); assert torch.allclose(out, ref, rtol=1e-3, atol=1e-2), n
        best = {n: 1e9 for n in fns}
        for r in range(5):
            for n, f in fns.items():
                t = time.perf_counter(); f(); best[n] = min(best[n], time.perf_counter() - t)
        print(f'{m}x{k} s={s}: dense {best["dense"]*1e3:.1f} ms | ' + ' | '.join(f'{n} {best[n]*1e3:.1f} ({best["dense"]/best[n]:.2f}x)' for n in fns if n != 'dense'), flush=True)

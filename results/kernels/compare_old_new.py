# python results/kernels/compare_old_new.py  (after: git show 1b8b507:kernels/csr_cpu.cpp > /tmp/exp/old.cpp; cp kernels/csr_cpu.cpp /tmp/exp/new.cpp)
# old kernel (commit 1b8b507) vs new vs dense, interleaved, same process, wall time, 2 threads
import sys, time, os, torch
from torch.utils.cpp_extension import load
sys.path.insert(0, '/work/wt-kernels')
from kernels.csr import to_csr
torch.set_num_threads(int(os.environ.get("T", 2)))
exts = {n: load(name="cmp_" + n, sources=[f"/tmp/exp/{n}.cpp"], extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"]) for n in ("old", "new")}
R = int(os.environ.get("R", 5))
print("load average", os.getloadavg()[0])
for (m, k) in [(3072, 768), (768, 3072), (8192, 2048), (2048, 8192)][:int(os.environ.get("NS", 4))]:
    for s in (0.75, 0.9):
        g = torch.Generator().manual_seed(0)
        w = torch.randn(m, k, generator=g).mul_(torch.rand(m, k, generator=g) >= s)
        x = torch.randn(2048, k, generator=g)
        c = to_csr(w)
        fns = {"dense": lambda: torch.matmul(x, w.t())}
        for n, e in exts.items():
            fns[n] = (lambda e: lambda: e.spmm(c.crow, c.col, c.values, None, x, m))(e)
        ts = {n: [] for n in fns}
        for _ in range(R):
            for n, f in fns.items():
                a = time.perf_counter(); f(); ts[n].append(time.perf_counter() - a)
        b = {n: min(v) * 1e3 for n, v in ts.items()}
        md = {n: sorted(v)[len(v) // 2] * 1e3 for n, v in ts.items()}
        print(f"{m}x{k} s={s}: dense {b['dense']:.1f} old {b['old']:.1f} new {b['new']:.1f} ms (best) | dense/old {b['dense']/b['old']:.2f}x dense/new {b['dense']/b['new']:.2f}x new vs old {b['old']/b['new']:.2f}x | medians: dense/old {md['dense']/md['old']:.2f}x dense/new {md['dense']/md['new']:.2f}x", flush=True)

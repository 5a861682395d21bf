"""
The CPU kernel at an older commit against the working tree's, and dense, interleaved in one process
(best and median of --repeats), 2048 tokens, the four layer shapes of tools.kernel_bench. Run from the
repository root:

    python -m tools.kernels.compare_old_new OLD_COMMIT [--threads 2] [--repeats 7] [--avx2]

--avx2 builds both without AVX-512 (-mno-avx512f): the AVX2 path, measurable on an AVX-512 machine.
The new kernel gets its per-pattern column-block bounds computed once, as SparseLinear keeps them.
"""
import argparse
import os
import subprocess
import tempfile
import time

import torch
from torch.utils.cpp_extension import load

from sparse_kernels import to_csr  # noqa: E402
from tools.kernel_bench import cpu_model  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("old")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeats", type=int, default=7)
ap.add_argument("--avx2", action="store_true")
args = ap.parse_args()

tmp = tempfile.mkdtemp()
old_src = os.path.join(tmp, "old.cpp")
with open(old_src, "w") as f:
    f.write(subprocess.run(["git", "show", f"{args.old}:sparse_kernels/csr_cpu.cpp"], capture_output=True, text=True, check=True).stdout)
flags = ["-O3", "-march=native", "-fopenmp"] + (["-mno-avx512f"] if args.avx2 else [])
tag = "avx2" if args.avx2 else "native"
exts = {n: load(name=f"cmp_{n}_{tag}", sources=[src], extra_cflags=flags, extra_ldflags=["-fopenmp"])
        for n, src in (("old", old_src), ("new", "sparse_kernels/csr_cpu.cpp"))}
torch.set_num_threads(args.threads)
print(f"{cpu_model()}; build: {' '.join(flags)}; {args.threads} threads; old = {args.old}; "
      f"load average {os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def call(ext, c, x, m):
    if not hasattr(ext, "bounds"):  # before the bounds were cached
        return lambda: ext.spmm(c.crow, c.col, c.values, None, x, m)
    bnd = ext.bounds(c.crow, c.col, x.shape[1], ext.block_cols(x.shape[0], c.nnz, m, x.shape[1]))
    return lambda: ext.spmm(c.crow, c.col, c.values, None, x, m, bnd)


for m, k in [(3072, 768), (768, 3072), (8192, 2048), (2048, 8192)]:
    for s in (0.75, 0.9):
        g = torch.Generator().manual_seed(0)
        w = torch.randn(m, k, generator=g).mul_(torch.rand(m, k, generator=g) >= s)
        x = torch.randn(2048, k, generator=g)
        c = to_csr(w)
        fns = {"dense": lambda: torch.matmul(x, w.t()), "old": call(exts["old"], c, x, m), "new": call(exts["new"], c, x, m)}
        ref = fns["dense"]()
        for n in ("old", "new"):
            torch.testing.assert_close(fns[n](), ref, rtol=1e-4, atol=1e-3)
        ts = {n: [] for n in fns}
        for _ in range(args.repeats):
            for n, f in fns.items():
                a = time.perf_counter()
                f()
                ts[n].append(time.perf_counter() - a)
        b = {n: min(v) * 1e3 for n, v in ts.items()}
        md = {n: sorted(v)[len(v) // 2] * 1e3 for n, v in ts.items()}
        print(f"{m}x{k} s={s}: dense {b['dense']:.1f} old {b['old']:.1f} new {b['new']:.1f} ms (best) | dense/old "
              f"{b['dense'] / b['old']:.2f}x dense/new {b['dense'] / b['new']:.2f}x new vs old {b['old'] / b['new']:.2f}x | "
              f"medians: dense/old {md['dense'] / md['old']:.2f}x dense/new {md['dense'] / md['new']:.2f}x", flush=True)

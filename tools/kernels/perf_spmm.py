"""
One thread calling the CPU kernel for 8 s, to profile from outside. Run from the repository root:

    perf record -F 2000 -g -o /tmp/perf.data python -m tools.kernels.perf_spmm 0.9 3072 768
    perf report -i /tmp/perf.data --no-children --sort symbol --stdio -g none
    perf annotate -i /tmp/perf.data --stdio -s '<the spmm_avx512 lambda from the report>'
"""
import sys
import time

import torch

from sparse_kernels import csr_matmul, to_csr  # noqa: E402

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
s = float(sys.argv[1]); o, i = int(sys.argv[2]), int(sys.argv[3])
x = torch.randn(2048, i, generator=g)
m = torch.rand(o, i, generator=g) >= s
c = to_csr(torch.randn(o, i, generator=g) * m, m)
csr_matmul(c, x)
t, n = time.perf_counter(), 0
while time.perf_counter() - t < 8:
    csr_matmul(c, x); n += 1
print(f"{(time.perf_counter() - t) / n * 1e3:.1f} ms per call")

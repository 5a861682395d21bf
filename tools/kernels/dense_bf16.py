"""
Dense x @ W.T in fp32 against bf16 (and the CSR kernel in fp32 beside them), 2 threads, 2048 tokens,
best of 7, alternating, on GPT-2 Small's and GPT-3 XL's c_fc shapes. Run from the repository root:

    python -m tools.kernels.dense_bf16

On a CPU with AMX (Sapphire/Emerald Rapids), torch's bf16 matmul goes through AMX tiles and the
fp32 one through AVX-512 FMAs: this shows how far apart the two dense baselines are, which is what
a bf16 sparse kernel built on vector FMAs would have to beat.
"""

import torch

from sparse_kernels import csr_matmul, to_csr  # noqa: E402
from tools.kernel_bench import best_ms, cpu_model  # noqa: E402

torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
print(f"{cpu_model()}, torch {torch.__version__}, 2 threads, 2048 tokens, best of 7")


def best(f):
    f()  # warm-up
    return best_ms(f, 7)


for out_f, in_f in ((3072, 768), (8192, 2048)):
    x, w = torch.randn(2048, in_f, generator=g), torch.randn(out_f, in_f, generator=g)
    xb, wb = x.bfloat16(), w.bfloat16()
    csrs = {s: to_csr(w * m, m) for s in (0.75, 0.9) for m in [torch.rand(out_f, in_f, generator=g) >= s]}
    for _ in range(2):
        d32, d16 = best(lambda: x @ w.T), best(lambda: xb @ wb.T)
        ours = {s: best(lambda: csr_matmul(c, x)) for s, c in csrs.items()}
        print(f"{out_f}x{in_f}: dense fp32 {d32:6.1f} ms, dense bf16 {d16:6.1f} ms ({d32 / d16:.1f}x faster); "
              + ", ".join(f"ours fp32 at {s:.0%} {t:6.1f} ms ({d32 / t:.2f}x fp32 dense, {d16 / t:.2f}x bf16 dense)"
                          for s, t in ours.items()), flush=True)

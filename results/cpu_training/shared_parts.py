"""The parts of a gpt2-small step (4 x 256 tokens, fp32, 2 threads) that dense and csr share, each timed in
the layouts torch offers: what could make both faster, and so lift csr's ratio at 90 %; and the masked path's
mask upkeep (csr has none); and AdamW's two implementations. Best of 7.

    python results/cpu_training/shared_parts.py
"""
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repository root
from model import HeadCrossEntropy  # noqa: E402
from tools import kernel_bench  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
N, C, V, H, T = 1024, 768, 50257, 12, 256  # tokens, width, vocabulary, heads, context


def best_ms(fn, repeats=7):
    fn()  # warm-up: first-touch page faults, allocator
    return kernel_bench.best_ms(fn, repeats)


# the weights at GPT-2's initial scale, as in bench.py's steps: with std 1 the logits would span +-100, and the
# softmax's underflowing tail (denormals) would time the CPU's slow path instead of the products
x, w, dlogits = torch.randn(N, C), 0.02 * torch.randn(V, C), torch.randn(N, V)
logits_out, logits_t_out = torch.empty(N, V), torch.empty(V, N)
gflop = 2 * N * C * V / 1e9
print("LM head (tied 50,257 x 768), one product each:")
for name, fn in [("logits = x @ W.T (F.linear, as the model)", lambda: F.linear(x, w)),
                 ("  the same into a reused output", lambda: torch.mm(x, w.t(), out=logits_out)),
                 ("  as (W @ x.T), logits transposed, reused output", lambda: torch.mm(w, x.t(), out=logits_t_out)),
                 ("dx = dlogits @ W", lambda: dlogits @ w),
                 ("dW = dlogits.T @ x", lambda: dlogits.t() @ x)]:
    ms = best_ms(fn)
    print(f"  {name:50s} {ms:7.1f} ms  {gflop / ms * 1e3:5.0f} GFLOP/s")

target = torch.randint(0, V, (N,))
logits = torch.randn(N, V, requires_grad=True)
print(f"cross-entropy over the logits, forward+backward: {best_ms(lambda: F.cross_entropy(logits, target).backward()):.1f} ms")
xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
print("LM head + cross-entropy, forward+backward:")
print(f"  F.linear, then F.cross_entropy                   {best_ms(lambda: F.cross_entropy(F.linear(xg, wg), target).backward(), 5):7.1f} ms")
print(f"  logits computed transposed                       {best_ms(lambda: F.cross_entropy((wg @ xg.t()).t(), target).backward(), 5):7.1f} ms")
print(f"  in one pass (model.HeadCrossEntropy, the model's){best_ms(lambda: HeadCrossEntropy.apply(xg, wg, target).backward(), 5):7.1f} ms")

print("AdamW over gpt2-small's 124 M parameters, one step:")
params = [torch.zeros(n, requires_grad=True) for n in (V * C, 1024 * C, 85 * 10**6, 10**5)]
for p in params:
    p.grad = torch.randn_like(p)
for name, fused in [("per tensor (torch's default on a CPU)", False), ("fused (model.configure_optimizer)", True)]:
    opt = torch.optim.AdamW(params, lr=1e-4, fused=fused)
    print(f"  {name:40s} {best_ms(opt.step):6.1f} ms")

q, k, v = (torch.randn(4, H, T, C // H, requires_grad=True) for _ in range(3))
dy = torch.randn(4, H, T, C // H)


def attention(backend):
    with sdpa_kernel(backend):
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(dy)


print("causal attention, one layer, forward+backward (x 12 layers per step):")
for name, backend in [("flash (torch's default on CPU)", SDPBackend.FLASH_ATTENTION), ("math", SDPBackend.MATH)]:
    print(f"  {name:32s} {best_ms(lambda: attention(backend)):6.1f} ms")

shapes = [(C, C)] * 4 * 12 + [(4 * C, C), (C, 4 * C)] * 12  # the six block matrices of 12 layers
weights = [torch.randn(*s) for s in shapes]
masks = [torch.rand(*s) >= 0.9 for s in shapes]
float_masks = [m.float() for m in masks]
print("masking the 72 block matrices once (gradient masking and re-masking do it twice a step):")
print(f"  _foreach_mul_ by bool masks (as sparsity.py)    {best_ms(lambda: torch._foreach_mul_(weights, masks)):6.1f} ms")
print(f"  _foreach_mul_ by fp32 masks (4x their memory)   {best_ms(lambda: torch._foreach_mul_(weights, float_masks)):6.1f} ms")

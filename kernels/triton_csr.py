"""
CSR x dense on CUDA with Triton: fp32 or bf16 inputs, fp32 accumulation.

UNTESTED ON A GPU: written on a CPU-only machine where Triton is not even installed. The
logic mirrors the CPU kernel and the reference in csr.py; run tests/test_kernels.py on a CUDA
machine (its GPU test is skipped elsewhere) before trusting it.

Same idea as the CPU kernel, with the token dimension across threads: x is transposed once to
xt (K, N) so that input feature j of a block of tokens is contiguous (coalesced loads). One
program owns one output row i and BLOCK_N tokens; it walks the row's nonzeros BLOCK_NZ at a time,
gathers the (BLOCK_NZ, BLOCK_N) slab of xt those columns select, and accumulates
sum_j w_ij * xt[j, tokens] in fp32. Consecutive program ids are consecutive rows on the same
token block, so the slab reads of neighbouring programs hit the same lines in L2.
The output is written as yt (M, N), row-contiguous, and handed back transposed (a view).
Import this module only where Triton exists; sparse_linear.py guards it.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _csr_spmm_kernel(crow_ptr, col_ptr, val_ptr, bias_ptr, xt_ptr, yt_ptr, N,
                     HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_NZ: tl.constexpr):
    row = tl.program_id(0)
    tokens = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_range = tokens < N
    start = tl.load(crow_ptr + row)
    end = tl.load(crow_ptr + row + 1)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_NZ):
        offs = p0 + tl.arange(0, BLOCK_NZ)
        live = offs < end
        cols = tl.load(col_ptr + offs, mask=live, other=0).to(tl.int64)
        vals = tl.load(val_ptr + offs, mask=live, other=0.0).to(tl.float32)
        slab = tl.load(xt_ptr + cols[:, None] * N + tokens[None, :],
                       mask=live[:, None] & in_range[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(vals[:, None] * slab, axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + row).to(tl.float32)
    tl.store(yt_ptr + row.to(tl.int64) * N + tokens, acc, mask=in_range)


def spmm(csr, x2, bias=None, block_n=128, block_nz=32):
    """x2 (N, K) on CUDA, fp32 or bf16 -> (N, M) fp32 = x2 @ W.T (+ bias)."""
    assert x2.is_cuda and csr.crow.is_cuda, "triton_csr.spmm wants CUDA tensors"
    assert x2.dtype in (torch.float32, torch.bfloat16), f"unsupported dtype {x2.dtype}"
    n, m = x2.shape[0], csr.shape[0]
    xt = x2.t().contiguous()  # (K, N): coalesced along tokens
    yt = torch.empty(m, n, device=x2.device, dtype=torch.float32)
    if n == 0 or m == 0:
        return yt.t()
    values = csr.values if csr.values.dtype in (torch.float32, torch.bfloat16) else csr.values.float()
    grid = (m, triton.cdiv(n, block_n))
    _csr_spmm_kernel[grid](csr.crow, csr.col, values, bias if bias is not None else values, xt, yt, n,
                           HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_NZ=block_nz)
    return yt.t()

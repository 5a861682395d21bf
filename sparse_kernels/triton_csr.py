"""
CSR x dense with Triton: the three products SparseLinear needs, fp32 or bf16 inputs, fp32 accumulation.

    spmm(csr, x)        y = x @ W.T (+ bias)       forward; also the input gradient, dy @ W, as
                                                   spmm(W.T in CSR, dy) (transpose_plan builds it once)
    sddmm(csr, dy, x)   g[p] = sum_t dy[t, i] x[t, j] for each nonzero p = (i, j): the weight gradient

Tested on the CPU only, with Triton's interpreter (TRITON_INTERPRET=1 runs these kernels on CPU
tensors, tests/test_triton.py): the logic is checked, the speed on a GPU is not. On CUDA tensors
they compile as usual.

spmm: the token dimension goes across threads. x is transposed once to xt (K, N) so that input
feature j of a block of tokens is contiguous (coalesced loads). One program owns one output row i
and BLOCK_N tokens; it walks the row's nonzeros BLOCK_NZ at a time, gathers the (BLOCK_NZ, BLOCK_N)
slab of xt those columns select, and accumulates sum_j w_ij * xt[j, tokens] in fp32. Consecutive
program ids are consecutive rows on the same token block, so the slab reads of neighbouring
programs hit the same lines in L2. The output is written as yt (M, N) and handed back transposed.

sddmm: one program owns BLOCK_NZ consecutive nonzeros (CSR order, so mostly one row), loads
their rows of dyt (M, N) and columns of xt (K, N) BLOCK_N tokens at a time, and reduces over tokens.
No atomics: each nonzero is written by exactly one program.

Import this module only where Triton exists; sparse_linear.py guards it.
"""
import os

import torch
import triton
import triton.language as tl


def interpreting():
    """True when TRITON_INTERPRET=1 was set before this module was imported (kernels run on CPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


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


@triton.jit
def _csr_sddmm_kernel(row_ptr, col_ptr, dyt_ptr, xt_ptr, g_ptr, nnz, N,
                      BLOCK_NZ: tl.constexpr, BLOCK_N: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_NZ + tl.arange(0, BLOCK_NZ)
    live = offs < nnz
    rows = tl.load(row_ptr + offs, mask=live, other=0).to(tl.int64)
    cols = tl.load(col_ptr + offs, mask=live, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_NZ,), dtype=tl.float32)
    for t0 in range(0, N, BLOCK_N):
        tokens = t0 + tl.arange(0, BLOCK_N)
        m = live[:, None] & (tokens < N)[None, :]
        d = tl.load(dyt_ptr + rows[:, None] * N + tokens[None, :], mask=m, other=0.0).to(tl.float32)
        x = tl.load(xt_ptr + cols[:, None] * N + tokens[None, :], mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(d * x, axis=1)
    tl.store(g_ptr + offs, acc, mask=live)


def _check(*tensors):
    for t in tensors:
        assert t.is_cuda or interpreting(), "triton_csr wants CUDA tensors (or TRITON_INTERPRET=1 on the CPU)"


def spmm(csr, x2, bias=None, block_n=128, block_nz=32):
    """x2 (N, K), fp32 or bf16 -> (N, M) fp32 = x2 @ W.T (+ bias). With W.T's CSR: the input gradient."""
    _check(x2, csr.crow)
    assert x2.dtype in (torch.float32, torch.bfloat16), f"unsupported dtype {x2.dtype}"
    assert x2.shape[1] == csr.shape[1], f"x has {x2.shape[1]} features, the weight expects {csr.shape[1]}"
    n, m = x2.shape[0], csr.shape[0]
    xt = x2.t().contiguous()  # (K, N): coalesced along tokens
    yt = torch.empty(m, n, device=x2.device, dtype=torch.float32)
    if n == 0 or m == 0:
        return yt.t()
    values = csr.values if csr.values.dtype in (torch.float32, torch.bfloat16) else csr.values.float()
    grid = (m, triton.cdiv(n, block_n))
    _csr_spmm_kernel[grid](csr.crow, csr.col.int(), values, bias if bias is not None else values, xt, yt, n,
                           HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_NZ=block_nz)
    return yt.t()


def sddmm(csr, dy2, x2, row_ids=None, block_nz=64, block_n=64):
    """dy2 (N, M), x2 (N, K) -> (nnz,) fp32: the weight gradient at the nonzeros, in CSR order.
    row_ids: csr.row_ids() if already at hand (SparseLinear keeps it)."""
    _check(dy2, x2, csr.col)
    assert dy2.shape[1] == csr.shape[0] and x2.shape[1] == csr.shape[1] and dy2.shape[0] == x2.shape[0]
    nnz, n = csr.nnz, x2.shape[0]
    g = torch.zeros(nnz, device=x2.device, dtype=torch.float32)
    if nnz == 0 or n == 0:
        return g
    rows = csr.row_ids() if row_ids is None else row_ids
    dyt, xt = dy2.t().contiguous(), x2.t().contiguous()  # (M, N), (K, N)
    _csr_sddmm_kernel[(triton.cdiv(nnz, block_nz),)](rows, csr.col.int(), dyt, xt, g, nnz, n,
                                                     BLOCK_NZ=block_nz, BLOCK_N=block_n)
    return g

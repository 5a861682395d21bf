"""
sparse_kernels/: where SPDF's zeros are actually skipped (benchmarks: tools/kernel_bench.py).

    csr.py           the CSR format (to_csr / to_dense) and the reference SpMM, written to be read
    csr_cpu.cpp      the fast CPU kernel (C++, vectorized over tokens), loaded by cpu.py
    triton_csr.py    the GPU kernel (Triton)
    sparse_linear.py csr_matmul, SparseLinear (autograd), model conversion

    csr = sparse_kernels.to_csr(weight)             # or to_csr(weight, mask)
    y = sparse_kernels.csr_matmul(csr, x)           # == x @ weight.T, x of shape (..., in_features)
"""
from .csr import CSR, csr_matmul_reference, csr_matmul_rowloop, to_csr, to_dense, transpose_plan
from .sparse_linear import (SparseLinear, csr_matmul, dense_optimizer_state, dense_state_dict, sparse_optimizer_state,
                            supports, to_dense_model, to_sparse_model)

__all__ = ["CSR", "to_csr", "to_dense", "transpose_plan", "csr_matmul", "csr_matmul_reference",
           "csr_matmul_rowloop", "SparseLinear", "to_sparse_model", "to_dense_model", "dense_state_dict",
           "dense_optimizer_state", "sparse_optimizer_state", "supports"]

"""
The fast CPU path: sparse_kernels/csr_cpu.cpp compiled with torch.utils.cpp_extension on first use.

The build takes about a minute once; torch caches it under TORCH_EXTENSIONS_DIR (default
~/.cache/torch_extensions) and later imports only load the .so. Without a working compiler we
warn once and fall back to the PyTorch reference in csr.py: slower, never an error.
Inputs in other dtypes (bf16, fp16) are computed in fp32 and cast back.

SPDF_CPU_ARCH=x86-64-v3 (any GCC -march value) builds for that instruction set instead of this CPU's
own, in a separate cache entry: e.g. the AVX2 path measured on an AVX-512 machine.
"""
import os
import warnings

from .csr import csr_matmul_reference, sddmm_reference

_HERE = os.path.dirname(os.path.abspath(__file__))
_ext = None
_tried = False


def extension():
    """The compiled module, or None if it cannot be built here (warns once)."""
    global _ext, _tried
    if not _tried:
        _tried = True
        try:
            from torch.utils.cpp_extension import load
            arch = os.environ.get("SPDF_CPU_ARCH", "native")
            suffix = "" if arch == "native" else "_" + "".join(c if c.isalnum() else "_" for c in arch)
            _ext = load(name="spdf_csr_cpu" + suffix, sources=[os.path.join(_HERE, "csr_cpu.cpp")],
                        extra_cflags=["-O3", f"-march={arch}", "-fopenmp"],
                        extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as e:  # no compiler, no ninja, odd platform: the reference still works
            warnings.warn(f"kernels: C++ CSR kernel unavailable ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); using the slow PyTorch reference")
    return _ext


def spmm(csr, x2, bias=None):
    """x2 (N, K) -> (N, M) = x2 @ W.T (+ bias), computed in fp32."""
    ext = extension()
    if ext is None:
        y = csr_matmul_reference(csr, x2.float())
        return y if bias is None else y + bias.float()
    kb = ext.block_cols(x2.shape[0], csr.nnz, *csr.shape)
    return ext.spmm(csr.crow, csr.col, csr.values.float(), None if bias is None else bias.float(), x2.float(),
                    csr.shape[0], _bounds(ext, csr, kb), None if kb else bitmap(ext, csr.crow, csr.col, csr.shape[1], csr.cache))


def plan(cache, crow, col, key, make):
    """What a kernel derives from the pattern (crow, col) alone: make() once, then kept in cache under key."""
    try:  # the same tensors, unmodified (in-place writes, e.g. load_state_dict, bump _version)
        stamp = (crow.data_ptr(), col.data_ptr(), crow._version, col._version, crow.numel(), col.numel())
    except RuntimeError:  # inference tensors keep no version: compute it every call
        return None
    hit = cache.get(key)
    if hit is None or hit[0] != stamp:
        hit = cache[key] = (stamp, make())
    return hit[1]


def _bounds(ext, csr, kb):
    """Where each row's entries cross into the next block of kb columns (the tiled kernels' plan)."""
    if kb == 0:
        return None  # few tokens: no column blocks
    return plan(csr.cache, csr.crow, csr.col, ("cpu_bounds", kb, csr.shape[1]),
                lambda: ext.bounds(csr.crow, csr.col, csr.shape[1], kb))


def bitmap(ext, crow, col, k, cache):
    """The pattern as one bit per weight, which the product of fewer than 8 tokens reads in place of the
    column indices (empty where that does not pay)."""
    return plan(cache, crow, col, ("cpu_bitmap", k), lambda: ext.bitmap(crow, col, k))


def sddmm(csr, dy2, x2, transposed=None):
    """Weight gradient at the nonzeros: (nnz,) fp32. transposed: (csr_t, perm) from transpose_plan, if the
    caller keeps them; a layer wider in than out then runs on W.T's pattern (the packed operand is the
    narrow one), its sums scattered back through perm."""
    ext = extension()
    if ext is None:
        return sddmm_reference(csr, dy2, x2)
    m, k = csr.shape
    if transposed is not None and k > m:
        csr_t, perm = transposed
        kb = ext.sddmm_cols(m, csr.nnz, k)
        return ext.sddmm(csr_t.crow, csr_t.col, x2.float(), dy2.float(), _bounds(ext, csr_t, kb), perm.int())
    kb = ext.sddmm_cols(k, csr.nnz, m)
    return ext.sddmm(csr.crow, csr.col, dy2.float(), x2.float(), _bounds(ext, csr, kb))

"""sparse_kernels/triton_csr.py without a GPU: Triton's interpreter (TRITON_INTERPRET=1) runs the kernels on CPU
tensors, so CI checks their logic (forward SpMM, the transposed product of the input gradient, the SDDMM
of the weight gradient) and SparseLinear on that path. Small shapes: the interpreter is slow.

TRITON_INTERPRET is read when Triton itself is imported (its standard library is @triton.jit too), and
in a normal test session other modules have imported it already. So test_triton_under_interpreter runs
this file again in a fresh process with TRITON_INTERPRET=1, where the kernel tests below run; in the
outer session they are skipped, pointing to it. `TRITON_INTERPRET=1 pytest tests/test_triton.py` runs
them directly. Where CUDA is available, the same tests run the compiled kernels on the GPU instead, in
this process (gpu_check.py's kernel_tests step)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import masked_linear

pytest.importorskip("triton", reason="Triton is not installed (pip install triton; CI installs it): "
                                      "the Triton kernels are not checked here")

import sparse_kernels  # noqa: E402
from sparse_kernels import sparse_linear  # noqa: E402
from sparse_kernels.csr import to_csr, to_dense, transpose_plan  # noqa: E402


def masked(m, k, density, seed=0, empty_rows=()):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g) * (torch.rand(m, k, generator=g) < density)
    w[list(empty_rows)] = 0
    return w


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cpu" if INTERPRETED or not torch.cuda.is_available() else "cuda"  # where the kernel tests' tensors live
TOL = dict(rtol=1e-5, atol=1e-5) if DEV == "cpu" else dict(rtol=1e-4, atol=1e-4)  # GPU: another summation order


@pytest.mark.slow
def test_triton_under_interpreter():
    """The kernel tests of this file, in a process where Triton was imported with TRITON_INTERPRET=1."""
    if INTERPRETED:
        pytest.skip("this process is the interpreter run itself")
    if DEV == "cuda":
        pytest.skip("CUDA is here: the kernel tests run the compiled kernels on the GPU instead")
    import numpy as np
    import triton
    if tuple(map(int, triton.__version__.split(".")[:2])) < (3, 7) and int(np.__version__.split(".")[0]) >= 2:
        pytest.skip(f"Triton {triton.__version__}'s interpreter cannot take a loaded value as a loop bound with "
                    f"numpy {np.__version__} (3.7 and later can): pip install 'triton>=3.7' to run these here")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", __file__],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert " passed" in out and "failed" not in out, out[-3000:]


@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
def test_kernels_compile_for_hopper_without_a_gpu():
    """The interpreter is lenient about types; compiling for sm_90 (H100/H200) with this Triton and its
    bundled ptxas is not: what a GPU session would otherwise find out on the GPU."""
    if INTERPRETED:
        pytest.skip("the kernels are interpreted in this process")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:
        pytest.skip(f"this Triton has no ahead-of-time compile API ({e})")
    import triton
    from sparse_kernels import triton_csr
    spmm = {"crow_ptr": "*i32", "col_ptr": "*i32", "val_ptr": "*fp32", "bias_ptr": "*fp32", "xt_ptr": "*fp32",
            "yt_ptr": "*fp32", "N": "i32", "HAS_BIAS": "constexpr", "BLOCK_N": "constexpr", "BLOCK_NZ": "constexpr"}
    sddmm = {"row_ptr": "*i64", "col_ptr": "*i32", "dyt_ptr": "*fp32", "xt_ptr": "*fp32", "g_ptr": "*fp32",
             "nnz": "i32", "N": "i32", "BLOCK_NZ": "constexpr", "BLOCK_N": "constexpr"}
    builds = [(triton_csr._csr_spmm_kernel, {**spmm, "xt_ptr": x}, dict(HAS_BIAS=b, BLOCK_N=128, BLOCK_NZ=32))
              for x, b in (("*fp32", True), ("*bf16", False))]
    builds.append((triton_csr._csr_sddmm_kernel, sddmm, dict(BLOCK_NZ=64, BLOCK_N=64)))
    for fn, signature, constexprs in builds:
        try:
            k = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32))
        except (FileNotFoundError, RuntimeError) as e:
            if "ptxas" in str(e):
                pytest.skip(f"no ptxas here ({e})")
            raise
        assert fn.__name__ in k.asm["ptx"] and len(k.asm["cubin"]) > 1000


@pytest.fixture
def tc():
    """sparse_kernels.triton_csr with its kernels interpreted, and SparseLinear sending CPU tensors to it; or,
    where CUDA is, compiled, with the tests' tensors on the GPU."""
    if DEV == "cpu" and not INTERPRETED:
        pytest.skip("runs in the TRITON_INTERPRET=1 subprocess of test_triton_under_interpreter")
    from sparse_kernels import triton_csr
    assert sparse_linear.triton_csr is triton_csr, "sparse_kernels.triton_csr failed to import under the interpreter"
    saved = sparse_linear.triton_on_cpu
    sparse_linear.triton_on_cpu = True
    yield triton_csr
    sparse_linear.triton_on_cpu = saved


@pytest.mark.parametrize("m,k,n,density", [(19, 29, 11, 0.3),   # ragged everything, several nonzero blocks
                                           (8, 12, 1, 1.0),     # one token, dense
                                           (10, 40, 3, 0.05)])  # mostly empty rows
def test_spmm_matches_dense(tc, m, k, n, density):
    w = masked(m, k, density, seed=m + n, empty_rows=(0, m - 1)).to(DEV)
    x, b = torch.randn(n, k).to(DEV), torch.randn(m).to(DEV)
    c = to_csr(w)
    # small blocks: rows span several BLOCK_NZ steps and tokens several BLOCK_N programs
    y = tc.spmm(c, x, b, block_n=8, block_nz=4)
    torch.testing.assert_close(y, x @ w.t() + b, **TOL)
    torch.testing.assert_close(tc.spmm(c, x), x @ w.t(), **TOL)  # default blocks, no bias


def test_spmm_bf16_input(tc):
    w = masked(24, 40, 0.3).to(DEV)
    x = torch.randn(10, 40).bfloat16().to(DEV)
    y = tc.spmm(to_csr(w), x, block_n=8, block_nz=8)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x.float() @ w.t(), **TOL)


def test_input_gradient_is_spmm_on_the_transpose(tc):
    w = masked(30, 45, 0.25, empty_rows=(4,)).to(DEV)
    c = to_csr(w)
    t, perm = transpose_plan(c)
    dy = torch.randn(13, 30).to(DEV)
    torch.testing.assert_close(tc.spmm(t, dy, block_n=8, block_nz=4), dy @ w, **TOL)


@pytest.mark.parametrize("n", [1, 19])
def test_sddmm_matches_masked_outer_product(tc, n):
    w = masked(25, 33, 0.3, empty_rows=(0, 24)).to(DEV)
    c = to_csr(w)
    dy, x = torch.randn(n, 25).to(DEV), torch.randn(n, 33).to(DEV)
    expect = (dy.t() @ x)[w != 0]  # row-major order == CSR order
    # nnz is not a multiple of the block, tokens span several BLOCK_N steps
    torch.testing.assert_close(tc.sddmm(c, dy, x, block_nz=16, block_n=8), expect, **TOL)
    torch.testing.assert_close(tc.sddmm(c, dy, x), expect, **TOL)


def test_sparse_linear_on_triton_path_equals_masked_linear(tc, monkeypatch):
    calls = {"spmm": 0, "sddmm": 0}
    for name in calls:  # count, so the test cannot pass through the C++ kernel instead
        real = getattr(tc, name)
        monkeypatch.setattr(tc, name, lambda *a, _real=real, _name=name, **k: calls.__setitem__(_name, calls[_name] + 1)
                            or _real(*a, **k))
    lin, mask, sl = masked_linear(40, 24, empty_row=5)
    lin, mask, sl = lin.to(DEV), mask.to(DEV), sl.to(DEV)
    x = torch.randn(2, 7, 40).to(DEV).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(2, 7, 24).to(DEV)
    y = sl(x)
    y.backward(g)
    lin(x2).backward(g)
    assert calls == {"spmm": 2, "sddmm": 1}  # forward, input gradient; weight gradient
    torch.testing.assert_close(y, lin(x2), **TOL)
    torch.testing.assert_close(x.grad, x2.grad, **TOL)
    torch.testing.assert_close(sl.bias.grad, lin.bias.grad, **TOL)
    grad_w = to_dense(sparse_kernels.CSR(sl.crow, sl.col.int(), sl.values.grad, (24, 40)))
    torch.testing.assert_close(grad_w, lin.weight.grad * mask, **TOL)
    assert sl.values.grad.abs().sum() > 0

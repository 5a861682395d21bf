"""kernels/triton_csr.py without a GPU: Triton's interpreter (TRITON_INTERPRET=1) runs the kernels on CPU
tensors, so CI checks their logic (forward SpMM, the transposed product of the input gradient, the SDDMM
of the weight gradient) and SparseLinear on that path. Small shapes: the interpreter is slow.

TRITON_INTERPRET is read when Triton itself is imported (its standard library is @triton.jit too), and
in a normal test session other modules have imported it already. So test_triton_under_interpreter runs
this file again in a fresh process with TRITON_INTERPRET=1, where the kernel tests below run; in the
outer session they are skipped, pointing to it. `TRITON_INTERPRET=1 pytest tests/test_triton.py` runs
them directly."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import masked_linear

pytest.importorskip("triton", reason="Triton is not installed (pip install triton; CI installs it): "
                                      "the Triton kernels are not checked here")

import kernels  # noqa: E402
from kernels import sparse_linear  # noqa: E402
from kernels.csr import to_csr, to_dense, transpose_plan  # noqa: E402


def masked(m, k, density, seed=0, empty_rows=()):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g) * (torch.rand(m, k, generator=g) < density)
    w[list(empty_rows)] = 0
    return w


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.slow
def test_triton_under_interpreter():
    """The kernel tests of this file, in a process where Triton was imported with TRITON_INTERPRET=1."""
    if INTERPRETED:
        pytest.skip("this process is the interpreter run itself")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", __file__],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert " passed" in out and "failed" not in out, out[-3000:]


@pytest.fixture
def tc():
    """kernels.triton_csr with its kernels interpreted, and SparseLinear sending CPU tensors to it."""
    if not INTERPRETED:
        pytest.skip("runs in the TRITON_INTERPRET=1 subprocess of test_triton_under_interpreter")
    from kernels import triton_csr
    assert sparse_linear.triton_csr is triton_csr, "kernels.triton_csr failed to import under the interpreter"
    saved = sparse_linear.triton_on_cpu
    sparse_linear.triton_on_cpu = True
    yield triton_csr
    sparse_linear.triton_on_cpu = saved


@pytest.mark.parametrize("m,k,n,density", [(19, 29, 11, 0.3),   # ragged everything, several nonzero blocks
                                           (8, 12, 1, 1.0),     # one token, dense
                                           (10, 40, 3, 0.05)])  # mostly empty rows
def test_spmm_matches_dense(tc, m, k, n, density):
    w = masked(m, k, density, seed=m + n, empty_rows=(0, m - 1))
    x, b = torch.randn(n, k), torch.randn(m)
    c = to_csr(w)
    # small blocks: rows span several BLOCK_NZ steps and tokens several BLOCK_N programs
    y = tc.spmm(c, x, b, block_n=8, block_nz=4)
    torch.testing.assert_close(y, x @ w.t() + b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tc.spmm(c, x), x @ w.t(), rtol=1e-5, atol=1e-5)  # default blocks, no bias


def test_spmm_bf16_input(tc):
    w = masked(24, 40, 0.3)
    x = torch.randn(10, 40).bfloat16()
    y = tc.spmm(to_csr(w), x, block_n=8, block_nz=8)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x.float() @ w.t(), rtol=1e-5, atol=1e-5)


def test_input_gradient_is_spmm_on_the_transpose(tc):
    w = masked(30, 45, 0.25, empty_rows=(4,))
    c = to_csr(w)
    t, perm = transpose_plan(c)
    dy = torch.randn(13, 30)
    torch.testing.assert_close(tc.spmm(t, dy, block_n=8, block_nz=4), dy @ w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 19])
def test_sddmm_matches_masked_outer_product(tc, n):
    w = masked(25, 33, 0.3, empty_rows=(0, 24))
    c = to_csr(w)
    dy, x = torch.randn(n, 25), torch.randn(n, 33)
    expect = (dy.t() @ x)[w != 0]  # row-major order == CSR order
    # nnz is not a multiple of the block, tokens span several BLOCK_N steps
    torch.testing.assert_close(tc.sddmm(c, dy, x, block_nz=16, block_n=8), expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tc.sddmm(c, dy, x), expect, rtol=1e-5, atol=1e-5)


def test_sparse_linear_on_triton_path_equals_masked_linear(tc, monkeypatch):
    calls = {"spmm": 0, "sddmm": 0}
    for name in calls:  # count, so the test cannot pass through the C++ kernel instead
        real = getattr(tc, name)
        monkeypatch.setattr(tc, name, lambda *a, _real=real, _name=name, **k: calls.__setitem__(_name, calls[_name] + 1)
                            or _real(*a, **k))
    lin, mask, sl = masked_linear(40, 24, empty_row=5)
    x = torch.randn(2, 7, 40, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(2, 7, 24)
    y = sl(x)
    y.backward(g)
    lin(x2).backward(g)
    assert calls == {"spmm": 2, "sddmm": 1}  # forward, input gradient; weight gradient
    torch.testing.assert_close(y, lin(x2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sl.bias.grad, lin.bias.grad, rtol=1e-5, atol=1e-5)
    grad_w = to_dense(kernels.CSR(sl.crow, sl.col.int(), sl.values.grad, (24, 40)))
    torch.testing.assert_close(grad_w, lin.weight.grad * mask, rtol=1e-5, atol=1e-5)
    assert sl.values.grad.abs().sum() > 0

"""sparse_kernels/: CSR format, SpMM (C++ CPU kernel, reference, Triton when CUDA), SparseLinear, conversion.

The first test in a fresh environment builds the C++ extension (~1 min, then cached on disk)."""
import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import ROOT, masked_linear

import sparse_kernels
from sparse_kernels import cpu
from sparse_kernels.csr import csr_matmul_reference, csr_matmul_rowloop, sddmm_reference, to_csr, to_dense, transpose_plan


def masked(m, k, density, seed=0, empty_rows=()):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g) * (torch.rand(m, k, generator=g) < density)
    w[list(empty_rows)] = 0
    return w


@pytest.fixture(scope="module")
def ext():
    e = cpu.extension()  # built once per session (or loaded from the torch extensions cache)
    if e is None:
        pytest.skip("no C++ toolchain here: the fallback path is tested separately")
    return e


def test_csr_round_trip():
    w = masked(37, 53, 0.3, empty_rows=(0, 5, 36))
    c = to_csr(w)
    assert c.crow.dtype == torch.int32 and c.col.dtype == torch.int32
    assert c.crow[0] == 0 and c.crow[-1] == c.nnz == int((w != 0).sum())
    assert (c.crow[1:] >= c.crow[:-1]).all() and c.crow[1] == 0  # row 0 is empty
    assert torch.equal(to_dense(c), w)
    # an explicit mask keeps a weight that is exactly 0 in the pattern (it may still learn)
    mask = w != 0
    mask[1, 2], w[1, 2] = True, 0.0
    cm = to_csr(w, mask)
    assert cm.nnz == int(mask.sum()) and torch.equal(to_dense(cm), w)
    # the transposed CSR is the CSR of W.T, and perm refreshes its values
    t, perm = transpose_plan(c)
    assert torch.equal(to_dense(t), w.t()) and torch.equal(c.values[perm], t.values)


@pytest.mark.parametrize("m,k,density", [(64, 48, 0.25), (130, 1100, 0.1), (33, 17, 0.0), (40, 24, 1.0),
                                         (300, 96, 0.05)])
@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 5, 16, 63, 64, 130])
@pytest.mark.parametrize("index", [torch.int32, torch.int16])
def test_csr_matmul_matches_dense(ext, m, k, density, n, index):
    # n covers the gather path (< 8 tokens), 16-token and 64-token tiles, and ragged tails;
    # k=1100 spans several column blocks; m=130 and 300 leave a partial block of rows;
    # int16 columns are what SparseLinear hands the kernel
    w = masked(m, k, density, seed=m + k + n, empty_rows=(0, m // 2))
    x = torch.randn(n, k)
    c = to_csr(w)
    y = sparse_kernels.csr_matmul(sparse_kernels.CSR(c.crow, c.col.to(index), c.values, c.shape), x)
    torch.testing.assert_close(y, x @ w.t(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(csr_matmul_reference(c, x), x @ w.t(), rtol=1e-4, atol=1e-4)


def test_few_tokens_read_the_pattern_as_a_bitmap_where_it_is_dense_enough(ext):
    # k = 70: the last bitmap word is cut short, and x past column 70 must count as zero even if
    # the caller's memory there holds a NaN; the last row keeps only the columns of that last word
    w = masked(40, 70, 0.3, empty_rows=(3,))
    w[-1] = 0
    w[-1, 64:] = torch.randn(6)
    c = to_csr(w)
    bits = ext.bitmap(c.crow, c.col, 70)
    if bits.numel() == 0:
        pytest.skip("kernel built without AVX-512: the gather path serves few tokens")
    assert bits.shape == (40 * 2,)
    assert int(bits.view(40, 2)[-1, 0]) == 0 and int(bits.view(40, 2)[-1, 1]) == 0b111111
    assert ext.bitmap(c.crow, c.col[:0], 70).numel() == 0  # below 1/8 density: the column indices win
    for n in (1, 3):
        xs = torch.randn(n + 1, 70)
        xs[n] = float("nan")  # right after the n tokens in memory
        y = ext.spmm(c.crow, c.col, c.values, None, xs[:n], 40, None, bits)
        torch.testing.assert_close(y, xs[:n] @ w.t(), rtol=1e-5, atol=1e-5)


SPREAD_CHECK = """
import torch
from sparse_kernels import cpu
from sparse_kernels.csr import to_csr
ext = cpu.extension()
g = torch.Generator().manual_seed(0)
w = torch.randn(50, 200, generator=g) * (torch.rand(50, 200, generator=g) < 0.3)
c, x = to_csr(w), torch.randn(2, 200, generator=g)
y = ext.spmm(c.crow, c.col, c.values, None, x, 50, None, ext.bitmap(c.crow, c.col, 200))
print(ext.bitmap_spread(), float((y - x @ w.t()).abs().max()))
"""


def test_both_ways_of_spreading_a_bitmap_chunk_give_the_dense_product(ext):
    # the kernel picks vpermps or vexpandps by CPU maker; each must be right wherever it is chosen
    if ext.bitmap_spread() == "":
        pytest.skip("kernel built without AVX-512: no bitmap path")
    seen = set()
    for how in ("permute", "expand"):
        run = subprocess.run([sys.executable, "-c", SPREAD_CHECK], capture_output=True, text=True, check=True,
                             cwd=ROOT,
                             env={**os.environ, "SPDF_BITMAP_SPREAD": how})
        spread, err = run.stdout.split()
        assert float(err) < 1e-4
        seen.add(spread)
    assert "expand" in seen  # permute needs VPOPCNTDQ; without it both runs take expand


def test_sparse_linear_sends_a_few_tokens_straight_to_the_kernel_with_the_same_result(ext):
    w, b = masked(48, 70, 0.3), torch.randn(48)
    sl = sparse_kernels.SparseLinear(to_csr(w), b)
    with torch.no_grad():
        for x in (torch.randn(1, 1, 70), torch.randn(2, 3, 70), torch.randn(70)):
            y = sl(x)
            assert y.shape == (*x.shape[:-1], 48)
            torch.testing.assert_close(y, x @ w.t() + b, rtol=1e-5, atol=1e-5)
        with pytest.raises(AssertionError, match="70"):
            sl(torch.randn(1, 69))  # the wrong width is refused, not read past


@pytest.mark.slow
@pytest.mark.parametrize("m,k,n", [(300, 1100, 257),   # 2 row blocks of the AVX-512 path, 18 column blocks, ragged tile
                                   (1040, 70, 1030),   # output >= 4 MB: streaming stores; last tile of 6 tokens
                                   (24, 40, 128)])     # one tile, fewer tiles than threads: rows split
def test_csr_matmul_many_tokens(ext, m, k, n):
    # the tiled paths at full size: 128-token tiles, row and column blocking, 16x16 transposes
    w = masked(m, k, 0.2, seed=n, empty_rows=(1, m - 1))
    x, b = torch.randn(n, k), torch.randn(m)
    c = to_csr(w)
    for index in (torch.int32, torch.int16):
        y = sparse_kernels.csr_matmul(sparse_kernels.CSR(c.crow, c.col.to(index), c.values, c.shape), x, b)
        torch.testing.assert_close(y, x @ w.t() + b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # builds the C++ kernel (ninja) on a fresh machine
def test_csr_matmul_large_pattern_is_reordered_by_every_thread(ext):
    # 4.3M nonzeros: enough work that the per-call reordering of the nonzeros runs in parallel
    w = masked(4200, 4100, 0.25)
    x = torch.randn(128, 4100)
    torch.testing.assert_close(sparse_kernels.csr_matmul(to_csr(w), x), x @ w.t(), rtol=1e-4, atol=1e-3)


@pytest.mark.slow  # builds the C++ kernel (ninja) on a fresh machine
def test_sparse_linear_keeps_its_kernel_plan_and_renews_it_when_the_pattern_changes(ext):
    w = masked(96, 200, 0.3, empty_rows=(5,))
    x = torch.randn(256, 200)
    sl = sparse_kernels.SparseLinear(to_csr(w))
    with torch.no_grad():
        torch.testing.assert_close(sl(x), x @ w.t(), rtol=1e-4, atol=1e-4)
        (plan,) = sl.kernel_cache.values()
        sl(x)
        assert next(iter(sl.kernel_cache.values())) is plan  # computed once, then reused
        # another pattern loaded in place (other row lengths): a stale plan would mix up the rows
        sl.load_state_dict(sparse_kernels.SparseLinear(to_csr(w.flip(0))).state_dict())
        torch.testing.assert_close(sl(x), x @ w.flip(0).t(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_csr_matmul_batch_noncontiguous_bias_dtype(ext):
    w, b = masked(96, 80, 0.3), torch.randn(96)
    c = to_csr(w)
    x = torch.randn(3, 4, 160)[..., ::2]  # batch dims and a strided (non-contiguous) last dim
    assert not x.is_contiguous()
    torch.testing.assert_close(sparse_kernels.csr_matmul(c, x), x @ w.t(), rtol=1e-4, atol=1e-4)
    xt = torch.randn(80, 70).t()  # transposed: non-contiguous, > 64 tokens
    torch.testing.assert_close(sparse_kernels.csr_matmul(c, xt, b), xt @ w.t() + b, rtol=1e-4, atol=1e-4)
    xb = torch.randn(2, 9, 80).bfloat16()
    yb = sparse_kernels.csr_matmul(c, xb)
    assert yb.dtype == torch.bfloat16 and yb.shape == (2, 9, 96)
    torch.testing.assert_close(yb.float(), xb.float() @ w.t(), rtol=2e-2, atol=2e-2)
    # the row-by-row teaching version agrees too
    torch.testing.assert_close(csr_matmul_rowloop(c, xt), xt @ w.t(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_sddmm_matches_masked_outer_product(ext):
    w = masked(50, 70, 0.2, empty_rows=(3,))
    c = to_csr(w)
    dy, x = torch.randn(100, 50), torch.randn(100, 70)
    full = dy.t() @ x
    expect = full[w != 0]  # row-major order == CSR order
    torch.testing.assert_close(cpu.sddmm(c, dy, x), expect, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sddmm_reference(c, dy, x), expect, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_sddmm_across_row_blocks_column_blocks_and_a_partial_tile(ext):
    # more rows than one row block (512), more columns than one column block (96 or 192 at 75 %), a token
    # count that leaves a partial tile, int16 columns as SparseLinear keeps them, and cached bounds
    w = masked(1100, 300, 0.75, empty_rows=(5, 1050))
    c = to_csr(w)
    dy, x = torch.randn(150, 1100), torch.randn(150, 300)
    expect = (dy.t() @ x)[w != 0]
    narrow = sparse_kernels.CSR(c.crow, c.col.to(torch.int16), c.values, c.shape)
    for csr in (c, narrow, narrow):  # the second narrow call reuses its cached column-block bounds
        torch.testing.assert_close(cpu.sddmm(csr, dy, x), expect, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_sddmm_of_a_wide_layer_on_the_transposed_pattern_lands_in_csr_order(ext):
    # in_features > out_features: the kernel runs on W.T's pattern (more than one row block of it) and
    # scatters each sum back through perm; the result is in W's CSR order, as without the plan
    w = masked(90, 1100, 0.75, empty_rows=(4,))
    c = to_csr(w)
    c_t, perm = transpose_plan(c)
    dy, x = torch.randn(150, 90), torch.randn(150, 1100)
    expect = (dy.t() @ x)[w != 0]
    narrow_t = sparse_kernels.CSR(c_t.crow, c_t.col.to(torch.int16), c_t.values, c_t.shape)
    for plan in ((c_t, perm), (narrow_t, perm.int()), (narrow_t, perm.int())):
        torch.testing.assert_close(cpu.sddmm(c, dy, x, plan), expect, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("tokens", [3, 77])
def test_sparse_linear_grads_equal_masked_dense(ext, tokens):
    lin, mask, sl = masked_linear(72, 40, empty_row=7)
    assert sl.col.dtype == torch.int16 and sl.csr().col.dtype == torch.int32  # narrow inside, int32 out
    x = torch.randn(2, tokens, 72, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(2, tokens, 40)
    y = sl(x)
    y.backward(g)
    y2 = lin(x2)
    y2.backward(g)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sl.bias.grad, lin.bias.grad, rtol=1e-4, atol=1e-4)
    grad_w = to_dense(sparse_kernels.CSR(sl.crow, sl.col, sl.values.grad, (40, 72)))
    torch.testing.assert_close(grad_w, lin.weight.grad * mask, rtol=1e-4, atol=1e-4)
    assert sl.values.grad.abs().sum() > 0
    # a training step keeps the pattern: the dense view stays zero off the mask
    opt = torch.optim.AdamW(sl.parameters(), lr=0.1, weight_decay=0.1)
    opt.step()
    assert not sl.dense_weight()[~mask].any()
    assert sl.dense_weight()[mask].ne(lin.weight.detach()[mask]).any()


@pytest.mark.slow
def test_converted_model_matches_masked_model(ext):
    from model import GPT, PRESETS
    from sparsity import apply_masks, make_masks
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"]).eval()
    masks = make_masks(model, 0.75, "random", seed=0)
    apply_masks(model, masks)
    idx = torch.randint(0, model.config.vocab_size, (2, 20))
    with torch.no_grad():
        ref_logits, _ = model(idx)
    ref_tokens = model.generate(idx[:1, :8], 12, temperature=0)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}

    sparse_kernels.to_sparse_model(model, masks)
    n_sparse = sum(isinstance(m, sparse_kernels.SparseLinear) for m in model.modules())
    assert n_sparse == 6 * model.config.n_layer
    nnz = sum(m.values.numel() for m in model.modules() if isinstance(m, sparse_kernels.SparseLinear))
    assert nnz == sum(int(m.sum()) for m in masks.values())
    with torch.no_grad():
        logits, _ = model(idx)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(model.generate(idx[:1, :8], 12, temperature=0), ref_tokens)
    # gradients flow through the sparse model
    _, loss = model(idx, targets=idx)
    loss.backward()
    assert all(m.values.grad is not None for m in model.modules() if isinstance(m, sparse_kernels.SparseLinear))

    sparse_kernels.to_dense_model(model)
    assert not any(isinstance(m, sparse_kernels.SparseLinear) for m in model.modules())
    state = model.state_dict()
    assert state.keys() == dense_state.keys()
    assert all(torch.equal(state[k], dense_state[k]) for k in state)


def test_fallback_without_compiler(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    def broken(*a, **k):
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(cpp_extension, "load", broken)
    monkeypatch.setattr(cpu, "_ext", None)
    monkeypatch.setattr(cpu, "_tried", False)
    w = masked(20, 30, 0.4)
    x = torch.randn(6, 30)
    with pytest.warns(UserWarning, match="unavailable"):
        y = sparse_kernels.csr_matmul(to_csr(w), x)
    torch.testing.assert_close(y, x @ w.t(), rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warns once, not on every call
        sparse_kernels.csr_matmul(to_csr(w), x)


@pytest.mark.slow
def test_bench_layer_and_cli_errors(ext):
    from common import UsageError
    from tools import kernel_bench as bench
    times, err = bench.bench_layer("cpu", 64, 48, 0.75, 32, 1, torch.Generator().manual_seed(0))
    assert set(times) == {"dense", "torch_sparse", "ours", "dense_dx", "ours_dx", "dense_dw", "ours_dw",
                          "dense_fwd_bwd", "ours_fwd_bwd"} and err < 1e-5
    assert all(t > 0 for t in times.values())
    with pytest.raises(UsageError):
        bench.main(["--sparsity", "1.5"])
    with pytest.raises(UsageError):
        bench.main(["--no_such_flag"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_kernel_on_gpu():
    triton_csr = pytest.importorskip("sparse_kernels.triton_csr")
    w = masked(300, 1100, 0.25, empty_rows=(0, 299)).cuda()
    c = to_csr(w)
    for n in (1, 100, 257):
        x = torch.randn(n, 1100, device="cuda")
        torch.testing.assert_close(triton_csr.spmm(c, x), x @ w.t(), rtol=1e-4, atol=1e-3)
        y = sparse_kernels.csr_matmul(c, x.bfloat16())
        torch.testing.assert_close(y.float(), x.bfloat16().float() @ w.t(), rtol=2e-2, atol=5e-2)

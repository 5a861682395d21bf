"""SparseGPT: OBS pruning beats magnitude on reconstruction, exact counts, n:m, the pipeline step
(sparsegpt.py --out, then pretrain.py --init_from)."""
import pytest
import torch

from related import sparsegpt
import sparsity as sp
from common import UsageError
from checkpoint import load_checkpoint
from conftest import run_pretrain
from model import GPT, PRESETS


def trained_layer(d_in=96, d_out=48, tokens=2048):
    """A linear layer trained to its optimum (least squares) on noisy targets, and its inputs."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(d_in // 4, d_in, generator=g) / d_in ** 0.5  # low-rank: strongly correlated inputs
    X = torch.randn(tokens, d_in // 4, generator=g) @ mix + 0.05 * torch.randn(tokens, d_in, generator=g)
    Y = X @ torch.randn(d_out, d_in, generator=g).T + 0.1 * torch.randn(tokens, d_out, generator=g)
    return torch.linalg.lstsq(X, Y).solution.T.contiguous(), X


def hessian(X):
    lin = torch.nn.Linear(X.shape[1], 1)
    hook = sparsegpt.HessianHook(lin)
    for chunk in X.split(300):  # several batches: the running mean must equal the one-shot one
        lin(chunk)
    assert torch.allclose(hook.H, 2 * X.T @ X / X.shape[0], rtol=1e-4, atol=1e-5)
    return hook.H


def out_err(W, W_new, X):
    return round(float((X @ (W - W_new).T).norm() / (X @ W.T).norm()), 4)


def nm_magnitude(W, n, m):
    groups = W.abs().view(W.shape[0], -1, m)
    drop = groups.topk(n, dim=-1, largest=False).indices
    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
    return W * keep.view(W.shape)


def test_sparsegpt_beats_magnitude_on_a_trained_layer():
    W, X = trained_layer()
    H = hessian(X[:1024])
    X_test = X[1024:]  # held-out inputs
    for s in (0.5, 0.7):
        W_sg, mask = sparsegpt.prune_linear(W, H, s)
        W_mag = W * sp.magnitude_mask(W, s)
        assert int((~mask).sum()) == round(s * W.numel()) == int((W_mag == 0).sum())
        assert out_err(W, W_sg, X_test) < 0.9 * out_err(W, W_mag, X_test), s
    W_sg, mask = sparsegpt.prune_linear(W, H, 0.5, prune_n=2, prune_m=4)
    assert out_err(W, W_sg, X_test) < 0.9 * out_err(W, nm_magnitude(W, 2, 4), X_test)


@pytest.mark.parametrize("shape,s", [((37, 300), 0.3), ((64, 128), 0.5), ((20, 257), 0.9), ((8, 16), 0.0)])
def test_exact_counts_and_obs_update(shape, s):
    g = torch.Generator().manual_seed(1)
    W = torch.randn(*shape, generator=g)
    X = torch.randn(500, shape[1], generator=g) @ torch.randn(shape[1], shape[1], generator=g)
    W_new, mask = sparsegpt.prune_linear(W, 2 * X.T @ X / 500, s, blocksize=128)
    assert int((~mask).sum()) == round(s * W.numel())
    assert not W_new[~mask].any()  # pruned entries exactly 0
    if s > 0:  # the survivors moved to compensate (not just a mask)
        assert (W_new[mask] - W[mask]).abs().max() > 1e-3
    else:
        assert torch.allclose(W_new, W)


def test_two_four_pattern():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(16, 256, generator=g)
    X = torch.randn(400, 256, generator=g)
    W_new, mask = sparsegpt.prune_linear(W, 2 * X.T @ X / 400, 0.5, prune_n=2, prune_m=4)
    assert (mask.view(16, -1, 4).sum(-1) == 2).all()
    assert ((W_new != 0).view(16, -1, 4).sum(-1) <= 2).all()


def test_identity_hessian_single_block_is_magnitude():
    W = torch.randn(32, 100, generator=torch.Generator().manual_seed(3))
    W_new, mask = sparsegpt.prune_linear(W, torch.eye(100), 0.6)
    assert torch.equal(mask, sp.magnitude_mask(W, 0.6))
    assert torch.allclose(W_new, W * mask)  # no correlations: nothing to compensate


def test_prune_gpt_block_by_block():
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"])
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    calib = list(torch.randint(50257, (8, 16)).split(4))
    masks = sparsegpt.prune(model, calib, 0.5)
    assert list(masks) == sp.sparsifiable(model)
    for name, p in model.named_parameters():
        if name in masks:
            assert int((~masks[name]).sum()) == round(0.5 * p.numel())
        else:  # embeddings, LayerNorms, biases untouched
            assert torch.equal(p, dense[name]), name
    assert sp.check_masked(model, masks)


@pytest.mark.slow  # trains end to end twice
def test_pretrain_sparsegpt_from_dense_checkpoint(tmp_path, shakespeare_dir):
    run_pretrain(tmp_path / "dense", shakespeare_dir, "--max_iters=2", "--eval_interval=2")
    dense = load_checkpoint(tmp_path / "dense")
    sparsegpt.main([f"--ckpt={tmp_path / 'dense' / 'ckpt.pt'}", "--sparsity=0.5", "--prune_n=2", "--prune_m=4",
                    "--calib_samples=8", "--eval_batches=1", "--batch_size=2", f"--out={tmp_path / 'pruned.pt'}"])
    run_pretrain(tmp_path / "sg", shakespeare_dir, f"--init_from={tmp_path / 'pruned.pt'}",
                 "--max_iters=2", "--eval_interval=2")
    ck = load_checkpoint(tmp_path / "sg")
    assert len(ck["masks"]) == 12 and ck["iter_num"] == 2 and ck["config"]["sparsity"] == 0.5
    for name, mask in ck["masks"].items():
        assert (mask.view(mask.shape[0], -1, 4).sum(-1) == 2).all()  # 2:4 held through training
        assert not ck["model"][name][~mask].any()
        assert not torch.equal(ck["model"][name], dense["model"][name])
    # the one-shot comparison CLI
    losses = sparsegpt.main([f"--ckpt={tmp_path / 'dense'}", "--calib_samples=4", "--eval_batches=1", "--batch_size=2"])
    assert list(losses) == ["dense", "magnitude 50% unstructured", "sparsegpt 50% unstructured"]
    assert all(0 < v < 20 for v in losses.values())


def test_cli_errors(tmp_path, shakespeare_dir):
    with pytest.raises(UsageError, match="init_from"):
        run_pretrain(tmp_path / "x", shakespeare_dir, "--mask_method=sparsegpt", "--sparsity=0.5")
    run_pretrain(tmp_path / "d", shakespeare_dir, "--max_iters=1", "--eval_interval=1")
    sparsegpt.main([f"--ckpt={tmp_path / 'd'}", "--calib_samples=2", "--eval_batches=1", "--batch_size=2",
                    f"--out={tmp_path / 'p.pt'}"])
    with pytest.raises(UsageError, match="holds masks at sparsity 0.5"):  # the masks decide the sparsity
        run_pretrain(tmp_path / "x", shakespeare_dir, f"--init_from={tmp_path / 'p.pt'}", "--sparsity=0.75")
    with pytest.raises(UsageError, match="sparsity=0.5"):
        sparsegpt.main([f"--ckpt={tmp_path}", "--sparsity=0.7", "--prune_n=2", "--prune_m=4"])
    with pytest.raises(UsageError, match="prune_n"):
        run_pretrain(tmp_path / "x", shakespeare_dir, "--sparsity=0.5", "--prune_n=2", "--prune_m=4")

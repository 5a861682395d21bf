import subprocess
import sys

import pytest
import torch

import sparsity as sp
from model import GPT, PRESETS, GPTConfig
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)


def test_selection_is_exactly_the_six_block_matrices():
    m = GPT(SMALL)
    names = sp.sparsifiable(m)
    assert len(names) == 6 * SMALL.n_layer
    for i in range(SMALL.n_layer):
        for part in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            assert f"transformer.h.{i}.{part}.weight" in names
    assert not any("wte" in n or "wpe" in n or "ln" in n or n.endswith("bias") or "lm_head" in n for n in names)


def test_random_masks_have_exact_zero_counts():
    m = GPT(SMALL)
    params = dict(m.named_parameters())
    for s in (0.5, 0.75, 0.9, 0.333):
        for name, mask in sp.make_masks(m, s, seed=3).items():
            assert mask.dtype == torch.bool and mask.shape == params[name].shape
            assert int((~mask).sum()) == round(s * mask.numel())


def test_masks_depend_on_seed_and_name_only():
    a = sp.make_masks(GPT(SMALL), 0.5, seed=1)
    b = sp.make_masks(GPT(SMALL), 0.5, seed=1)  # different init weights, same masks
    c = sp.make_masks(GPT(SMALL), 0.5, seed=2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)
    q, k = a["transformer.h.0.attn.q_proj.weight"], a["transformer.h.0.attn.k_proj.weight"]
    assert not torch.equal(q, k)  # every matrix draws its own pattern


@pytest.mark.slow
def test_masks_identical_across_processes():
    code = ("import sys, torch, sparsity as sp; from model import GPT, GPTConfig; "
            "m = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)); "
            "ms = sp.make_masks(m, 0.75, seed=7); "
            "print(sum(int(v.flatten().nonzero().sum()) * (i + 1) for i, v in enumerate(ms.values())))")
    outs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    local = sp.make_masks(GPT(SMALL), 0.75, seed=7)
    here = sum(int(v.flatten().nonzero().sum()) * (i + 1) for i, v in enumerate(local.values()))
    assert outs[0] == outs[1] == f"{here}\n"


def test_masked_weights_stay_zero_through_50_adamw_steps_with_weight_decay():
    torch.manual_seed(0)
    m = GPT(SMALL)
    masks = sp.make_masks(m, 0.75, seed=0)
    sp.apply_masks(m, masks)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.9, 0.999))
    params = dict(m.named_parameters())
    before = {n: params[n].detach().clone() for n in masks}
    for _ in range(50):
        x = torch.randint(0, 64, (4, 16))
        m(x, x)[1].backward()
        sp.optimizer_step(opt, m, masks, grad_clip=1.0)  # the step every training loop takes
    assert sp.check_masked(m, masks)
    for n, mask in masks.items():
        state = opt.state[params[n]]
        assert not state["exp_avg"][~mask].any() and not state["exp_avg_sq"][~mask].any()
        assert not torch.equal(params[n][mask], before[n][mask])  # the kept weights did train


def sgd_step(grad_clip, seed=0):
    """One sp.optimizer_step of plain SGD (lr 1: a weight moves by minus its clipped gradient) on a
    50 % sparse model, its gradients scaled up so that a clip to 1 matters. Returns the step's result,
    the masked gradients it started from, each parameter's move, and the model."""
    torch.manual_seed(seed)
    m = GPT(SMALL)
    masks = sp.make_masks(m, 0.5, seed=seed)
    sp.apply_masks(m, masks)
    x = torch.randint(0, 64, (4, 16))
    (100 * m(x, x)[1]).backward()
    params = dict(m.named_parameters())
    grads = {n: p.grad * masks[n] if n in masks else p.grad.clone() for n, p in params.items()}
    before = {n: p.detach().clone() for n, p in params.items()}
    norm = sp.optimizer_step(torch.optim.SGD(m.parameters(), lr=1.0), m, masks, grad_clip)
    moves = {n: before[n] - p.detach() for n, p in params.items()}
    return norm, grads, moves, m


def test_optimizer_step_returns_the_pre_clip_norm_of_the_masked_gradients_and_clips_to_grad_clip():
    norm, grads, moves, m = sgd_step(grad_clip=1.0)
    expect = torch.cat([g.flatten() for g in grads.values()]).norm()
    assert float(norm) == pytest.approx(float(expect), rel=1e-5) and expect > 10  # before the clip
    scale = 1.0 / (float(expect) + 1e-6)  # torch's clip_grad_norm_ coefficient
    for n, g in grads.items():
        torch.testing.assert_close(moves[n], g * scale, rtol=1e-4, atol=1e-7)
    assert torch.cat([d.flatten() for d in moves.values()]).norm() == pytest.approx(1.0, rel=1e-4)
    assert all(p.grad is None for p in m.parameters())  # gradients zeroed for the next step


@pytest.mark.parametrize("grad_clip", [0.0, -1.0])
def test_optimizer_step_with_grad_clip_zero_or_below_clips_nothing(grad_clip):
    norm, grads, moves, _ = sgd_step(grad_clip)
    assert float(norm) == pytest.approx(float(torch.cat([g.flatten() for g in grads.values()]).norm()), rel=1e-5)
    assert norm > 10  # a clip to any limit at or below 1 would have shrunk these moves
    for n, g in grads.items():
        torch.testing.assert_close(moves[n], g, rtol=1e-4, atol=1e-6)


def test_optimizer_state_is_cleared_when_masks_are_installed_late():
    torch.manual_seed(0)
    m = GPT(SMALL)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randint(0, 64, (2, 16))
    m(x, x)[1].backward()
    opt.step()  # dense step: every moment is non-zero
    masks = sp.make_masks(m, 0.5)
    sp.mask_optimizer_state(opt, m, masks)
    w = dict(m.named_parameters())["transformer.h.0.mlp.c_fc.weight"]
    mask = masks["transformer.h.0.mlp.c_fc.weight"]
    assert not opt.state[w]["exp_avg"][~mask].any() and opt.state[w]["exp_avg"][mask].any()


def test_lifting_masks_lets_pruned_weights_learn_from_zero():
    torch.manual_seed(0)
    m = GPT(SMALL)
    masks = sp.make_masks(m, 0.75)
    sp.apply_masks(m, masks)
    name = "transformer.h.1.attn.c_proj.weight"
    w = dict(m.named_parameters())[name]
    assert not w[~masks[name]].any()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)  # dense fine-tuning: masks gone
    x = torch.randint(0, 64, (4, 16))
    m(x, x)[1].backward()
    opt.step()
    assert (w[~masks[name]] != 0).float().mean() > 0.9


def test_report_counts_share_of_all_parameters_for_gpt2_small():
    with torch.device("meta"):
        m = GPT(PRESETS["gpt2-small"])
    masks = sp.make_masks(m, 0.75)  # random masks need only shapes
    summary, lines = sp.report(m, masks)
    assert abs(summary["of_sparsifiable"] - 0.75) < 1e-6
    assert f"{summary['of_all']:.1%}" == "50.9%"
    assert len(summary["per_matrix"]) == 72 and lines[-1].startswith("pruned")

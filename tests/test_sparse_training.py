"""Training with the sparse kernels (--kernel=csr): the same mathematics as the masked path, checkpoints
in the masked format so a run resumes under either kernel, and one-line refusals where it cannot run."""
import json

import pytest
import torch

import sparse_kernels
import sparsity as sp
from common import UsageError
from model import ADAMW, GPT, GPTConfig, configure_optimizer
from tests.conftest import run_pretrain

pytestmark = pytest.mark.usefixtures("one_thread")


def losses(out_dir):
    return [json.loads(line)["loss"] for line in (out_dir / "log.jsonl").read_text().splitlines()]


def assert_close_losses(a, b, rtol=1e-5):
    assert len(a) == len(b) and a
    worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    assert worst <= rtol, f"losses differ by {worst:.2e} relative"


def train(model, masks, kernel, steps, tokens=32):
    """`steps` pre-training steps (pretrain.py's optimizer step) on fixed random batches; the losses."""
    if kernel == "csr":
        sparse_kernels.to_sparse_model(model, masks)
        masks = {}
    optimizer = configure_optimizer(model, dict(ADAMW, learning_rate=1e-3), "cpu")
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        x = torch.randint(0, model.config.vocab_size, (2, tokens), generator=gen)
        _, loss = model(x, x)
        loss.backward()
        sp.optimizer_step(optimizer, model, masks, 1.0)
        out.append(loss.item())
    return out


@pytest.mark.slow
def test_csr_steps_equal_masked_steps_at_gpt2_small_width():
    # gpt2-small's block matrices (768 wide, 3072 MLP), two blocks and a small vocabulary: 50 steps, fp32
    config = GPTConfig(block_size=32, n_layer=2, n_head=12, n_embd=768, vocab_size=512)
    runs = {}
    for kernel in ("masked", "csr"):
        torch.manual_seed(0)
        model = GPT(config)
        masks = sp.make_masks(model, 0.75, seed=0)
        sp.apply_masks(model, masks)
        runs[kernel] = train(model, masks, kernel, 50)
    assert runs["masked"][-1] < runs["masked"][0] - 1  # it learns (the same batches come back)
    assert_close_losses(runs["csr"], runs["masked"])


@pytest.mark.slow
def test_pretrain_csr_losses_equal_masked_on_the_cpu_preset(tmp_path, shakespeare_dir):
    common = ["--model=cpu", "--sparsity=0.75", "--max_iters=50", "--eval_interval=50", "--batch_size=2",
              "--block_size=64"]
    run_pretrain(tmp_path / "masked", shakespeare_dir, *common)
    run_pretrain(tmp_path / "csr", shakespeare_dir, *common, "--kernel=csr")
    assert_close_losses(losses(tmp_path / "csr"), losses(tmp_path / "masked"))
    a = torch.load(tmp_path / "masked" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "csr" / "ckpt.pt", weights_only=True)
    assert b["config"]["kernel"] == "csr" and a["model"].keys() == b["model"].keys()  # one format
    for name, mask in b["masks"].items():
        assert b["model"][name].shape == mask.shape and not b["model"][name][~mask].any()
        assert b["optimizer"]["state"][0]["exp_avg"].dim() == 2  # dense-shaped moments


@pytest.mark.parametrize("first,second", [("csr", "masked"), ("masked", "csr")])
def test_a_run_resumes_under_the_other_kernel(tmp_path, shakespeare_dir, first, second):
    common = ["--sparsity=0.75", "--eval_interval=3"]
    run_pretrain(tmp_path / "straight", shakespeare_dir, *common, "--max_iters=6", f"--kernel={first}")
    run_pretrain(tmp_path / "switched", shakespeare_dir, *common, "--max_iters=3", f"--kernel={first}")
    run_pretrain(tmp_path / "switched", shakespeare_dir, "--init_from=resume", "--max_iters=6", f"--kernel={second}")
    assert_close_losses(losses(tmp_path / "switched"), losses(tmp_path / "straight"))
    ckpt = torch.load(tmp_path / "switched" / "ckpt.pt", weights_only=True)
    assert ckpt["config"]["kernel"] == second and ckpt["iter_num"] == 6


def test_optimizer_state_round_trips_between_shapes():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32))
    masks = sp.make_masks(model, 0.5, seed=0)
    sp.apply_masks(model, masks)
    sparse_kernels.to_sparse_model(model, masks)
    optimizer = configure_optimizer(model, dict(ADAMW, learning_rate=1e-3), "cpu")
    model(torch.randint(0, 100, (1, 8)), torch.randint(0, 100, (1, 8)))[1].backward()
    optimizer.step()
    state = optimizer.state_dict()
    dense = sparse_kernels.dense_optimizer_state(state, model, optimizer)
    back = sparse_kernels.sparse_optimizer_state(dense, model, optimizer)
    layer = model.transformer.h[0].mlp.c_fc
    i = [p is layer.values for g in optimizer.param_groups for p in g["params"]].index(True)
    assert dense["state"][i]["exp_avg"].shape == (layer.out_features, layer.in_features)
    assert dense["state"][i]["exp_avg"].count_nonzero() <= layer.values.numel()
    for j, s in state["state"].items():
        for k, v in s.items():
            assert torch.equal(back["state"][j][k], v), (j, k)
    # and the values decay, as the matrix weights they are
    assert any(layer.values is p for p in optimizer.param_groups[0]["params"])
    assert not any(layer.bias is p for p in optimizer.param_groups[0]["params"])
    assert optimizer.param_groups[0]["weight_decay"] > 0


@pytest.mark.parametrize("args,message", [
    (["--kernel=csr"], "needs a sparse model"),  # --sparsity=0
    (["--kernel=blocked", "--sparsity=0.5"], "--kernel must be masked or csr"),
    (["--kernel=csr", "--sparsity=0.5", "--densify_at=0.5"], "does not combine with --densify_at"),
    (["--kernel=csr", "--sparsity=0.5", "--compile=True"], "does not combine with --compile"),
    (["--kernel=csr", "--sparsity=0.5", "--fsdp=True"], "trains in one process"),
])
def test_pretrain_refuses_what_csr_cannot_do_before_writing(tmp_path, shakespeare_dir, args, message):
    with pytest.raises(UsageError, match=message):
        run_pretrain(tmp_path / "run", shakespeare_dir, "--max_iters=2", *args)
    assert not (tmp_path / "run").exists()


def test_pretrain_csr_refuses_torchrun(tmp_path, shakespeare_dir, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="trains in one process"):
        run_pretrain(tmp_path / "run", shakespeare_dir, "--kernel=csr", "--sparsity=0.5")
    assert not (tmp_path / "run").exists()


def test_kernels_exist_for_cpu_only_here():
    assert sparse_kernels.supports("cpu") and not sparse_kernels.supports("mps")


def finetune_run(out, ckpt, *args):
    import finetune
    return finetune.main([f"--init_from={ckpt}", f"--out_dir={out}", "--device=cpu", "--task=e2e", "--sparse=True",
                          "--max_examples=16", "--batch_size=8", "--eval_examples=2", "--beam_size=1",
                          "--max_new_tokens=4", *args])


@pytest.mark.slow
def test_sparse_finetuning_with_csr_equals_masked(tiny_ckpt, tmp_path, monkeypatch):
    import metrics
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)  # no JVM start-ups
    masked = finetune_run(tmp_path / "masked", tiny_ckpt)
    csr = finetune_run(tmp_path / "csr", tiny_ckpt, "--kernel=csr")
    a = torch.load(tmp_path / "masked" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "csr" / "ckpt.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys() and b["masks"].keys() == a["masks"].keys()  # one format
    assert abs(a["best_val_loss"] - b["best_val_loss"]) <= 1e-5 * abs(a["best_val_loss"])
    for name, mask in b["masks"].items():
        assert not b["model"][name][~mask].any()  # still sparse
        # Adam divides by sqrt(v): a weight whose gradients are near 0 moves a rounding error furthest
        torch.testing.assert_close(b["model"][name], a["model"][name], rtol=1e-4, atol=1e-5)
    assert csr["flops"] == masked["flops"]


def test_finetune_refuses_csr_without_sparse_or_masks(tmp_path, shakespeare_dir):
    with pytest.raises(UsageError, match="needs --sparse=True"):
        finetune_run(tmp_path / "a", tmp_path, "--sparse=False", "--kernel=csr")
    run_pretrain(tmp_path / "dense", shakespeare_dir, "--max_iters=1", "--eval_interval=1", "--block_size=64")
    with pytest.raises(UsageError, match="holds no masks"):
        finetune_run(tmp_path / "b", tmp_path / "dense", "--kernel=csr")
    assert not (tmp_path / "b").exists()


def test_continued_pretraining_from_a_masked_checkpoint_runs_on_csr(tiny_ckpt, tmp_path, shakespeare_dir):
    # as after related.sparsegpt: --init_from a checkpoint whose masks the run keeps
    source = torch.load(tiny_ckpt / "ckpt.pt", weights_only=True)
    run_pretrain(tmp_path, shakespeare_dir, f"--init_from={tiny_ckpt / 'ckpt.pt'}", "--kernel=csr",
                 "--block_size=64", "--max_iters=2", "--eval_interval=2")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["config"]["sparsity"] == 0.75 and ckpt["config"]["kernel"] == "csr"
    for name, mask in source["masks"].items():
        assert torch.equal(ckpt["masks"][name], mask) and not ckpt["model"][name][~mask].any()
    assert not torch.equal(ckpt["model"][name], source["model"][name])  # it trained

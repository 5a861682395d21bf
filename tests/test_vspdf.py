"""Variable SPDF: sparse then dense pre-training in one run, FLOPs of both phases, resume across the switch."""
import json

import pytest
import torch

from checkpoint import load_checkpoint
from conftest import run_pretrain
from flops import densify_iter, train_flops, vspdf_train_flops
from model import PRESETS


def test_flops_of_both_phases():
    cfg = PRESETS["gpt2-small"]
    assert densify_iter(0.0, 100) is None
    assert densify_iter(0.87, 100) == 87 and densify_iter(40, 100) == 40
    sparse, dense = train_flops(cfg, 2048, 0.9), train_flops(cfg, 2048, 0.0)
    assert vspdf_train_flops(cfg, 2048, 0.9, 1.0) == sparse
    assert vspdf_train_flops(cfg, 2048, 0.9, 0.0) == dense
    assert vspdf_train_flops(cfg, 2048, 0.9, 0.75) == pytest.approx(0.75 * sparse + 0.25 * dense)


ARGS = ["--sparsity=0.75", "--max_iters=5", "--lr_decay_iters=5", "--warmup_iters=1", "--densify_at=3"]


@pytest.mark.slow
def test_switch_to_dense_and_resume_across_it(tmp_path, shakespeare_dir):
    run_pretrain(tmp_path / "sparse", shakespeare_dir, "--sparsity=0.75", "--max_iters=1", "--eval_interval=1")
    run_pretrain(tmp_path / "straight", shakespeare_dir, *ARGS, "--eval_interval=5")
    ck = load_checkpoint(tmp_path / "straight")
    assert ck["masks"] == {} and ck["config"]["densified_at_iter"] == 3 and ck["config"]["sparsity"] == 0.75
    # zeros learn: weights that the static mask kept at 0 for 3 steps moved in the 2 dense steps
    # (the mask is rebuilt from the seed, as in the sparse run)
    mask = load_checkpoint(tmp_path / "sparse")["masks"]["transformer.h.0.mlp.c_fc.weight"]
    w = ck["model"]["transformer.h.0.mlp.c_fc.weight"]
    assert (w[~mask] != 0).float().mean() > 0.9
    # FLOPs: 3 sparse steps then 2 dense ones
    log = [json.loads(line) for line in open(tmp_path / "straight" / "log.jsonl")]
    per_step = [b["flops_spent"] - a["flops_spent"] for a, b in zip([dict(flops_spent=0.0)] + log, log)]
    mcfg = PRESETS["tiny"]
    sparse, dense = (2 * train_flops(mcfg, 32, s, 50257) for s in (0.75, 0.0))  # 2 sequences per step
    assert per_step == pytest.approx([sparse] * 3 + [dense] * 2)
    assert ck["flops_spent"] == pytest.approx(5 * vspdf_train_flops(mcfg, 32, 0.75, 3 / 5, 50257) * 2)

    # the same run, stopped before the switch and resumed across it, ends identical
    run_pretrain(tmp_path / "split", shakespeare_dir, *ARGS, "--max_iters=2", "--eval_interval=2")
    assert len(load_checkpoint(tmp_path / "split")["masks"]) == 12
    run_pretrain(tmp_path / "split", shakespeare_dir, "--init_from=resume", "--max_iters=5", "--eval_interval=5")
    resumed = load_checkpoint(tmp_path / "split")
    assert resumed["masks"] == {} and resumed["config"]["densified_at_iter"] == 3
    assert resumed["flops_spent"] == pytest.approx(ck["flops_spent"])
    for name, p in ck["model"].items():
        assert torch.allclose(resumed["model"][name], p, atol=1e-6), name

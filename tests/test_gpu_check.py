"""gpu_check.py: the one-command GPU check, run here as its CPU dry run (every step, toy sizes)."""
import json

import pytest
import torch

import gpu_check
from common import UsageError, save_checkpoint


def test_dry_run_runs_every_step_and_writes_the_table(tmp_path):
    records = gpu_check.main(["--dry_run=True", f"--out={tmp_path}"])
    assert [r["step"] for r in records] == ["kernel_tests", "pretrain", "finetune", "fsdp", "bench_small", "kernels"]
    assert all(r["status"] == "ok" for r in records), [(r["step"], r["status"]) for r in records]
    assert records[1]["masks"] == "exact"
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["device"] == "cpu (dry run)" and len(summary["steps"]) == 6
    table = (tmp_path / "README.md").read_text()
    assert "| pretrain | ok (masks exact) |" in table and "sparse / dense step" in table and "ours" in table
    assert not list(tmp_path.glob("**/*.pt"))  # checkpoints stay out of the results folder


def test_masks_exact_names_a_wrong_zero_count_and_weights_off_the_mask(tmp_path):
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[0, :3] = False  # 3 zeros of 40, where s = 0.25 wants 10
    w = torch.ones(4, 10)
    save_checkpoint(dict(model={"h.0.w": w}, model_config={}, masks={"h.0.w": mask}, config={"sparsity": 0.25}),
                    tmp_path / "ckpt.pt")
    problem = gpu_check.masks_exact(tmp_path)
    assert "h.0.w: 3 zeros, not 10" in problem and "nonzero weights off the mask" in problem


def test_without_cuda_it_asks_for_the_dry_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the real check would run")
    with pytest.raises(UsageError, match="--dry_run=True"):
        gpu_check.main([f"--out={tmp_path}"])

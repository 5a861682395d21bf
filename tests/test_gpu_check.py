"""gpu_check.py: the one-command GPU check, run here as its CPU dry run (every step, toy sizes)."""
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from tools import gpu_check
from common import UsageError
from checkpoint import save_checkpoint


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_table(tmp_path):
    records = gpu_check.main(["--dry_run=True", f"--out={tmp_path}"])
    assert [r["step"] for r in records] == ["kernel_tests", "pretrain", "fsdp", "bench_small", "finetune", "kernels",
                                            "reproduce"]
    assert all(r["status"] == "ok" for r in records), [(r["step"], r["status"]) for r in records]
    assert records[1]["masks"] == "exact"
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["device"] == "cpu (dry run)" and len(summary["steps"]) == 7
    table = (tmp_path / "README.md").read_text()
    assert "| pretrain | ok (masks exact) |" in table and "sparse / dense step" in table and "ours" in table
    assert "reproduce/table.md" in table and "no pre-training (control)" in (tmp_path / "reproduce" / "table.md").read_text()
    with tarfile.open(tmp_path / "reproduce" / "runs.tar.gz") as tar:  # logs and metrics, no checkpoints
        names = tar.getnames()
    assert any(n.endswith("metrics.json") for n in names) and not any(n.endswith(".pt") for n in names)
    assert any(n.endswith("stdout.log") for n in names)  # its cells ran as parallel processes (--jobs=2)
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


def test_pack_then_unpack_gives_the_gpu_machine_the_same_tokens_and_the_data_paths(tmp_path, monkeypatch):
    from data.prepare import load_tokens
    command, size = gpu_check.pack(tmp_path / "pack", datasets=(("shakespeare", 1000),))
    assert "tools.gpu_check" in command and 0 < size < 56 * 2**20
    assert (tmp_path / "pack/mirror/e2e/train.txt").exists() and list((tmp_path / "pack/tiktoken").iterdir())
    monkeypatch.delenv("SPDF_DATA_MIRROR", raising=False)  # the GPU machine has neither
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("PYTHONPATH", "")  # restored after the test, which unpack's change would outlive
    wrote = gpu_check.unpack(tmp_path / "pack", tmp_path / "data")
    assert sorted(wrote) == [str(tmp_path / "data/shakespeare" / f) for f in ("train.bin", "val.bin")]
    for split, n in (("train", 1000), ("val", None)):
        got = np.fromfile(tmp_path / f"data/shakespeare/{split}.bin", dtype=np.uint16)
        assert np.array_equal(got, np.asarray(load_tokens("shakespeare", split)[:n]))
    assert os.environ["SPDF_DATA_MIRROR"] == str((tmp_path / "pack/mirror").resolve())
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str((tmp_path / "pack/tiktoken").resolve())
    assert gpu_check.unpack(tmp_path / "pack", tmp_path / "data") == []  # token files already there stay
    assert os.environ["PYTHONPATH"] == str((tmp_path / "pack/python.zip").resolve())  # once, however often


@pytest.mark.slow
def test_the_packed_python_packages_import_from_the_zip_in_the_steps_environment(tmp_path, monkeypatch):
    (tmp_path / "pack").mkdir()
    gpu_check.pack(tmp_path / "pack", datasets=())
    monkeypatch.delenv("SPDF_DATA_MIRROR", raising=False)  # unpack sets both: restored after the test
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("PYTHONPATH", "")
    gpu_check.unpack(tmp_path / "pack", tmp_path / "data")
    code = "import nltk.tokenize, pycocoevalcap.rouge.rouge as r, pycocoevalcap.cider.cider as c; " \
           "print(nltk.tokenize.__file__, r.__file__, c.__file__)"
    files = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert len(files) == 3 and all(f.startswith(str((tmp_path / "pack/python.zip").resolve())) for f in files)


def test_finetune_step_alone_is_refused_since_it_needs_the_pretrain_checkpoint(tmp_path):
    with pytest.raises(UsageError, match="pretrain step"):
        gpu_check.main(["--dry_run=True", f"--out={tmp_path}", "--steps=finetune"])
    with pytest.raises(UsageError, match="unknown step warp"):
        gpu_check.main(["--dry_run=True", f"--out={tmp_path / 'out'}", "--steps=pretrain,warp"])
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_step_the_budget_cannot_fit_is_skipped_and_said_so(tmp_path):
    records = gpu_check.main(["--dry_run=True", f"--out={tmp_path}", "--steps=kernels", "--budget_s=1"])
    assert [(r["step"], r["status"]) for r in records] == [("kernels", "skipped (budget spent)")]
    assert "| kernels | skipped (budget spent) |" in (tmp_path / "README.md").read_text()


@pytest.mark.slow
def test_a_reproduction_cut_short_by_the_budget_still_leaves_its_tables_and_logs(tmp_path):
    records = gpu_check.main(["--dry_run=True", f"--out={tmp_path}", "--steps=reproduce", "--budget_s=4"])  # 20 s here
    assert records[0]["status"].startswith("timed out")
    results = records[0]["command"].split("--results=")[1]  # the timeout stopped its parallel runs too
    assert subprocess.run(["pgrep", "-f", results], capture_output=True).returncode == 1
    assert (tmp_path / "reproduce" / "table.md").read_text().startswith("# SPDF, controlled")  # finished cells only
    with tarfile.open(tmp_path / "reproduce" / "runs.tar.gz") as tar:
        assert not any(n.endswith(".pt") for n in tar.getnames())

import json
import math
import subprocess
import sys

import pytest
import torch

from flops import train_flops
from model import GPTConfig
from sparsity import SPARSE_MATRICES
from tests.conftest import ROOT, run_pretrain

SIX = tuple(f"{m}.weight" for m in SPARSE_MATRICES)


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory, shakespeare_dir):
    out = tmp_path_factory.mktemp("sparse75")
    run_pretrain(out, shakespeare_dir, "--sparsity=0.75", "--max_iters=20", "--eval_interval=10")
    return out


def test_checkpoint_holds_exact_masks_on_the_six_matrices_only(sparse_run):
    ckpt = torch.load(sparse_run / "ckpt.pt", weights_only=True)
    masks, weights = ckpt["masks"], ckpt["model"]
    n_layer = ckpt["model_config"]["n_layer"]
    assert set(masks) == {f"transformer.h.{i}.{s}" for i in range(n_layer) for s in SIX}
    for name, mask in masks.items():
        assert int((~mask).sum()) == round(0.75 * mask.numel())
        assert not weights[name][~mask].any()   # pruned weights exactly 0
        assert weights[name][mask].all()         # kept weights trained and non-zero
    for key in ("model", "masks", "optimizer", "config", "iter_num", "tokens_seen", "flops_spent", "rng"):
        assert key in ckpt
    assert ckpt["iter_num"] == 20 and ckpt["tokens_seen"] == 20 * 2 * 32


def test_log_has_loss_throughput_and_flops(sparse_run):
    records = [json.loads(l) for l in (sparse_run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == list(range(1, 21))
    assert all(r["tokens_per_s"] > 0 and r["flops_spent"] > 0 for r in records)
    assert "val_loss" in records[9] and "val_loss" in records[19]
    assert records[-1]["flops_spent"] == pytest.approx(20 * records[0]["flops_spent"])
    # learning: the validation loss falls from iteration 10 to 20, both below the uniform guess's ln(vocab)
    vocab = torch.load(sparse_run / "ckpt.pt", weights_only=True)["model_config"]["vocab_size"]
    assert records[-1]["val_loss"] < records[9]["val_loss"] < math.log(vocab)


def test_each_iteration_spends_the_exact_training_flops_of_its_sparsity(sparse_run, tmp_path, shakespeare_dir):
    run_pretrain(tmp_path, shakespeare_dir, "--max_iters=1", "--eval_interval=1")
    dense = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["flops_spent"]
    sparse = json.loads((sparse_run / "log.jsonl").read_text().splitlines()[0])["flops_spent"]
    mcfg = GPTConfig(**torch.load(sparse_run / "ckpt.pt", weights_only=True)["model_config"])
    per_seq = lambda s: train_flops(mcfg, 32, s, mcfg.vocab_size)  # block_size 32, 2 sequences an iteration
    assert dense == 2 * per_seq(0.0) and sparse == 2 * per_seq(0.75)
    assert sparse < dense


@pytest.mark.slow
def test_two_process_ddp_run_ends_identical_on_both_ranks(ddp_run):
    last = json.loads((ddp_run / "log.jsonl").read_text().splitlines()[-1])
    fingerprints = last["rank_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    ckpt = torch.load(ddp_run / "ckpt.pt", weights_only=True)
    assert all(int((~m).sum()) == round(0.75 * m.numel()) for m in ckpt["masks"].values())


@pytest.mark.parametrize("arg, message", [
    ("--sparsity=1.5", "sparsity"), ("--sparsity=-0.1", "sparsity"), ("--model=nope", "model"),
    ("--max_iters=abc", "max_iters"), ("--no_such_key=1", "no_such_key"), ("--dataset=nope", "dataset"),
    ("--fsdp=True", "torchrun"),
])
@pytest.mark.slow
def test_bad_input_is_a_one_line_error(arg, message, tmp_path):
    # an out_dir of its own: the checkout's out/ (the quick start's) must not change the outcome
    proc = subprocess.run([sys.executable, "pretrain.py", arg, f"--out_dir={tmp_path / 'out'}"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]

import json
import subprocess
import sys

import pytest
import torch

from common import UsageError, parse_config
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
    assert records[-1]["val_loss"] < records[9]["val_loss"] + 1.0


def test_sparse_run_spends_fewer_flops_than_dense(sparse_run, tmp_path, shakespeare_dir):
    run_pretrain(tmp_path, shakespeare_dir, "--max_iters=2", "--eval_interval=2")
    dense = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["flops_spent"]
    sparse = json.loads((sparse_run / "log.jsonl").read_text().splitlines()[0])["flops_spent"]
    assert sparse < dense


@pytest.mark.slow
def test_resume_after_interruption_is_bit_identical(tmp_path, shakespeare_dir):
    common = ["--sparsity=0.5", "--lr_decay_iters=12", "--eval_interval=6", "--dropout=0.1"]
    run_pretrain(tmp_path / "full", shakespeare_dir, *common, "--max_iters=12")
    run_pretrain(tmp_path / "cut", shakespeare_dir, *common, "--max_iters=6")  # stopped half way
    run_pretrain(tmp_path / "cut", shakespeare_dir, "--init_from=resume", "--max_iters=12")
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)
    assert b["iter_num"] == 12 and b["tokens_seen"] == a["tokens_seen"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert all(torch.equal(a["masks"][n], b["masks"][n]) for n in a["masks"])


def test_resume_refuses_to_change_sparsity(tmp_path, shakespeare_dir):
    run_pretrain(tmp_path, shakespeare_dir, "--sparsity=0.5", "--max_iters=1", "--eval_interval=1")
    with pytest.raises(UsageError, match="sparsity cannot change"):
        run_pretrain(tmp_path, shakespeare_dir, "--init_from=resume", "--sparsity=0.75", "--max_iters=2")


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


def test_config_files_then_overrides_with_type_checks(tmp_path):
    defaults = dict(model="tiny", sparsity=0.0, max_iters=10, compile=False)
    cfgfile = tmp_path / "c.py"
    cfgfile.write_text("model = 'mini'\nmax_iters = 100\n")
    cfg, overrides = parse_config(defaults, [str(cfgfile), "--max_iters=5", "--sparsity=1", "--compile=True"])
    assert cfg == dict(model="mini", sparsity=1.0, max_iters=5, compile=True)
    assert set(overrides) == {"model", "max_iters", "sparsity", "compile"}
    with pytest.raises(UsageError, match="float"):
        parse_config(defaults, ["--sparsity=abc"])
    cfgfile.write_text("n_layers = 3\n")
    with pytest.raises(UsageError, match="unknown config key 'n_layers'"):
        parse_config(defaults, [str(cfgfile)])


def test_key_space_value_bare_bool_flags_and_positional_arguments():
    defaults = dict(model="tiny", sparsity=0.0, compile=False, json="")
    cfg, _ = parse_config(defaults, ["--model", "mini", "--compile", "--json", "out.json", "--sparsity=0.5"])
    assert cfg == dict(model="mini", sparsity=0.5, compile=True, json="out.json")
    assert parse_config(defaults, ["--compile", "false"])[0]["compile"] is False
    with pytest.raises(UsageError, match="--model needs a value"):
        parse_config(defaults, ["--model", "--compile"])
    cfg, _ = parse_config(defaults, ["mini", "--json", "x.json"], positional=("model",))
    assert cfg["model"] == "mini" and cfg["json"] == "x.json"
    with pytest.raises(UsageError, match="unexpected argument"):
        parse_config(defaults, ["mini", "extra"], positional=("model",))


def test_paper_config_files_parse():
    import pretrain
    for name, lr, tokens in (("pretrain_gpt2_small.py", 6e-4, 2.5e9), ("pretrain_gpt3_xl.py", 2e-4, 26e9)):
        cfg, _ = parse_config(pretrain.DEFAULTS, [str(ROOT / "config" / name)])
        pretrain.validate(cfg)
        seqs = cfg["batch_size"] * cfg["gradient_accumulation_steps"]
        assert cfg["learning_rate"] == lr and seqs in (256, 512)
        assert abs(cfg["max_iters"] * seqs * 2048 - tokens) / tokens < 0.001
        assert abs(cfg["warmup_iters"] * seqs * 2048 - 375e6) / 375e6 < 0.002

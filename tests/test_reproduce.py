import json

import pytest

from experiments import report
from experiments import reproduce
from common import UsageError

ONE_SEED = ["--scale=smoke", "--tasks=e2e", "--sparsities=0,0.75", "--seeds=1", "--device=cpu"]


@pytest.mark.slow
def test_grid_with_control_writes_tables_plots_benefit_retained_and_resumes_without_redoing(tmp_path, capsys):
    root = reproduce.main([*ONE_SEED, f"--results={tmp_path}"])
    runs = tmp_path / "runs" / "seed1"
    for cell in ("e2e_none_dense", "e2e_s0_dense", "e2e_s0.75_dense", "e2e_s0.75_sparse"):
        assert (runs / cell / "metrics.json").exists(), cell
    table = (tmp_path / "table.md").read_text()
    assert "no pre-training (control)" in table and "retained (val loss)" in table and "75% sparse" in table
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = summary["finetune"]["e2e"]["rows"]
    # benefit retained is computed from the cells' own validation losses
    loss = lambda cell: json.loads((runs / cell / "metrics.json").read_text())["best_val_loss"]
    expect = (loss("e2e_none_dense") - loss("e2e_s0.75_dense")) / (loss("e2e_none_dense") - loss("e2e_s0_dense"))
    assert rows["s0.75_dense"]["retained_val_loss"][0] == pytest.approx(expect)
    assert rows["s0_dense"]["retained_val_loss"][0] == pytest.approx(1.0)
    assert "retained_val_loss" not in rows["none_dense"] and "retained_val_loss" not in rows["s0.75_sparse"]
    # readings a and c are paired by seed
    c = summary["finetune"]["e2e"]["sparse_minus_dense_ft"]
    assert c["stats"][0] == pytest.approx(loss("e2e_s0.75_sparse") - loss("e2e_s0.75_dense"))
    assert c["holds"] == int(c["stats"][0] > 0)
    last_val = lambda cell: json.loads((runs / cell / "log.jsonl").read_text().splitlines()[-1])["val_loss"]
    gap = summary["pretrain_gaps"]["s0.75 - s0"]["stats"][0]
    assert gap == pytest.approx(last_val("pretrain_s0.75") - last_val("pretrain_s0"))
    assert f"| s0.75_sparse | {loss('e2e_s0.75_sparse'):.3f} (" in table and "Reading c, paired by seed" in table
    assert (tmp_path / "pretrain_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "finetune_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"
    metrics = runs / "e2e_s0.75_dense" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    pre_stamp = (runs / "pretrain_s0.75" / "ckpt.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert reproduce.main([*ONE_SEED, f"--results={tmp_path}"]) == root
    assert "skip e2e_s0.75_dense" in capsys.readouterr().out
    assert metrics.stat().st_mtime_ns == stamp
    assert (runs / "pretrain_s0.75" / "ckpt.pt").stat().st_mtime_ns == pre_stamp


def test_control_checkpoint_is_the_untrained_model_of_the_pretraining_shape(tmp_path):
    scale = reproduce.SCALES["smoke"]
    reproduce.write_control(scale, 3, tmp_path)
    import torch
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["model_config"]["block_size"] == 64 and ckpt["iter_num"] == 0 and ckpt["pretrain_sparsity"] == 0.0
    reproduce.write_control(scale, 4, tmp_path / "other")
    other = torch.load(tmp_path / "other" / "ckpt.pt", weights_only=True)
    assert not torch.equal(ckpt["model"]["lm_head.weight"], other["model"]["lm_head.weight"])  # seeded


def test_retained_is_one_for_dense_zero_for_no_benefit_and_signed_by_metric_direction():
    ft = {(1, None, "e2e", False): dict(best_val_loss=4.0, bleu=10.0),
          (1, 0.0, "e2e", False): dict(best_val_loss=3.0, bleu=30.0),
          (1, 0.75, "e2e", False): dict(best_val_loss=3.5, bleu=10.0)}
    assert report.retained(ft, "e2e", [1], 0.0, "best_val_loss", False) == [1.0]
    assert report.retained(ft, "e2e", [1], 0.75, "best_val_loss", False) == [0.5]
    assert report.retained(ft, "e2e", [1], 0.75, "bleu", True) == [0.0]


def test_grid_has_control_dense_cells_for_every_sparsity_and_sparse_ft_at_the_highest():
    cfg = dict(reproduce.DEFAULTS)
    cells = list(reproduce.cells(cfg))
    e2e = [c for c in cells if c[2] == "e2e"]
    assert len(e2e) == 3 * (1 + 3 + 1)  # 3 seeds x (control, 0/50/75 % dense FT, 75 % sparse FT)
    assert {c for c in e2e if c[1] is None} == {(s, None, "e2e", False) for s in (1, 2, 3)}
    assert {c for c in cells if c[3]} == {(s, 0.75, "e2e", True) for s in (1, 2, 3)} | {
        (1, 0.75, t, True) for t in ("webnlg", "dart")}
    assert cells[:len(e2e)] == e2e  # E2E over every seed runs first


@pytest.mark.parametrize("arg", ["--scale=huge", "--sparsities=0,1.0", "--tasks=e2e,nope", "--seeds=a", "--seeds=",
                                 "--jobs=0"])
def test_bad_grid_arguments_are_usage_errors(arg, tmp_path):
    with pytest.raises(UsageError):
        reproduce.main([arg, f"--results={tmp_path}"])


@pytest.mark.slow
def test_parallel_runs_log_to_their_folders_and_a_failed_one_is_named(tmp_path):
    bad = ["--sparsity=2", f"--out_dir={tmp_path / 'a'}"]
    good = ["--model=tiny", "--dataset=shakespeare", "--max_iters=1", "--batch_size=2", "--block_size=32",
            "--eval_iters=1", "--eval_interval=1", "--device=cpu", f"--out_dir={tmp_path / 'b'}"]
    assert reproduce.run_parallel("pretrain.py", [bad, good], jobs=2) == [tmp_path / "a"]
    assert "error: --sparsity must be in [0, 1)" in (tmp_path / "a" / "stdout.log").read_text()
    assert "iter 1: train" in (tmp_path / "b" / "stdout.log").read_text() and (tmp_path / "b" / "ckpt.pt").exists()


def test_run_false_writes_tables_from_finished_cells_without_running_any(tmp_path):
    reproduce.main(["--scale=smoke", "--run=False", f"--results={tmp_path}"])
    assert not (tmp_path / "runs").exists()
    assert "no pre-training (control)" not in (tmp_path / "table.md").read_text()  # no cell finished yet
    assert (tmp_path / "pretrain_loss.png").exists()


def test_without_java_the_e2e_table_shows_rouge_l_and_cider_under_their_approx_names(tmp_path):
    cfg = dict(reproduce.DEFAULTS, sparsities="0", tasks="e2e", control=False, sparse_ft=False, scale="smoke")
    pre = {(1, 0.0): [dict(iter=1, val_loss=5.0, tokens_seen=10, flops_spent=1.0)]}
    ft = {(1, 0.0, "e2e", False): dict(best_val_loss=2.0, bleu=30.0, nist=4.0, meteor_missing="no Java",
                                       rouge_l_approx=0.4567, cider_approx=1.2346, flops=1.0)}
    report.write_tables(cfg, tmp_path, report.summarize(cfg, pre, ft))
    table = (tmp_path / "table.md").read_text()
    assert "rouge_l_approx | cider_approx" in table and "| 0.457 | 1.235 |" in table
    assert "| rouge_l |" not in table

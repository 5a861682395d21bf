import pytest

import reproduce
from common import UsageError

ONE_CELL = ["--scale=smoke", "--tasks=e2e", "--sparsities=0.75", "--sparse_ft=False", "--device=cpu"]


@pytest.mark.slow
def test_one_cell_runs_writes_tables_and_plots_and_resumes_without_redoing(tmp_path, capsys):
    root = reproduce.main([*ONE_CELL, f"--results={tmp_path}"])
    metrics = tmp_path / "runs" / "seed1" / "e2e_s0.75_dense" / "metrics.json"
    assert metrics.exists()
    table = (tmp_path / "table.md").read_text()
    assert "| 75% |" in table and "e2e BLEU" in table and "## FLOPs" in table
    assert (tmp_path / "pretrain_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "bleu_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"
    stamp = metrics.stat().st_mtime_ns
    pre_stamp = (tmp_path / "runs" / "seed1" / "pretrain_s0.75" / "ckpt.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert reproduce.main([*ONE_CELL, f"--results={tmp_path}"]) == root
    assert "skip e2e_s0.75_dense" in capsys.readouterr().out
    assert metrics.stat().st_mtime_ns == stamp
    assert (tmp_path / "runs" / "seed1" / "pretrain_s0.75" / "ckpt.pt").stat().st_mtime_ns == pre_stamp


def test_grid_has_dense_cells_for_every_sparsity_and_sparse_ft_at_the_highest():
    cfg = dict(reproduce.DEFAULTS)
    cells = list(reproduce.cells(cfg))
    assert len(cells) == 3 * 3 + 3
    assert {c for c in cells if c[3]} == {(1, 0.75, t, True) for t in ("e2e", "webnlg", "dart")}


@pytest.mark.parametrize("arg", ["--scale=huge", "--sparsities=0,1.0", "--tasks=e2e,nope", "--seeds=a"])
def test_bad_grid_arguments_are_usage_errors(arg, tmp_path):
    with pytest.raises(UsageError):
        reproduce.main([arg, f"--results={tmp_path}"])

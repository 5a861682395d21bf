import json

import pytest

import bench
from common import UsageError


def test_bench_times_dense_and_sparse_in_one_run(tmp_path):
    out = tmp_path / "b.json"
    dense, sparse = bench.main(["--device=cpu", "--model=tiny", "--sparsity=0.75", "--batch_size=2",
                                "--block_size=16", "--steps=2", "--warmup=1", f"--json={out}"])
    assert dense["sparsity"] == 0.0 and sparse["sparsity"] == 0.75
    assert dense["step_ms"] > 0 and sparse["tokens_per_s"] > 0
    assert dense["mfu"] is None  # no known peak for a CPU: omitted, not guessed
    saved = json.loads(out.read_text())
    assert saved["sparse_over_dense"] == pytest.approx(sparse["step_ms"] / dense["step_ms"])


def test_bench_rejects_bad_sparsity():
    with pytest.raises(UsageError, match="sparsity"):
        bench.main(["--sparsity=1.0"])

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
    # the breakdown names every phase of the step; mask upkeep costs something only when sparse
    assert set(sparse["phases_ms"]) == {"forward+backward", "mask gradients", "clip", "AdamW", "re-mask", "zero_grad"}
    assert sparse["phases_ms"]["forward+backward"] > sparse["phases_ms"]["mask gradients"] > 0


def test_bench_gradient_accumulation_counts_every_micro_batch():
    four = bench.main(["--device=cpu", "--model=tiny", "--batch_size=2", "--block_size=16", "--steps=1", "--warmup=0",
                       "--gradient_accumulation_steps=4", "--activation_checkpointing=True"])
    # tokens/s counts the 4 micro-batches of a step (no timing comparison: that would be a timed test)
    assert four[0]["tokens_per_s"] == pytest.approx(4 * 2 * 16 / (four[0]["step_ms"] / 1000))


def test_bench_csr_times_a_third_run_on_the_sparse_kernels(tmp_path):
    out = tmp_path / "b.json"
    runs = bench.main(["--device=cpu", "--model=tiny", "--batch_size=2", "--block_size=16", "--steps=1", "--warmup=0",
                       "--kernel=csr", f"--json={out}"])
    assert [r["kernel"] for r in runs] == ["dense", "masked", "csr"] and runs[2]["sparsity"] == 0.75
    assert runs[2]["step_ms"] > 0 and set(runs[2]["phases_ms"]) == set(runs[1]["phases_ms"])  # phase by phase
    assert json.loads(out.read_text())["csr"]["kernel"] == "csr"


@pytest.mark.slow
def test_bench_memory_measures_each_run_alone():
    runs = bench.main(["--device=cpu", "--model=tiny", "--batch_size=2", "--block_size=16", "--steps=1", "--warmup=0",
                       "--kernel=csr", "--memory=True"])
    assert all(r["peak_memory_gb"] > 0 for r in runs)  # the model, its gradients and AdamW state at least
    with pytest.raises(UsageError, match="--kernel must be"):
        bench.main(["--kernel=blocked"])


def test_bench_rejects_bad_sparsity():
    with pytest.raises(UsageError, match="sparsity"):
        bench.main(["--sparsity=1.0"])


def test_finetune_benchmark_reports_tokens_per_second_for_each_step(capsys):
    import bench
    tps = bench.main(["--device=cpu", "--model=tiny", "--block_size=64", "--batch_size=2", "--steps=1",
                      "--warmup=0", "--finetune=True"])
    assert set(tps) == {"pre-training", "fine-tuning", "fine-tuning, baseline"}
    assert all(v > 0 for v in tps.values())
    assert "x pre-training" in capsys.readouterr().out


def test_compile_blocks_compiles_each_block_in_place_and_leaves_the_rest_eager():
    from model import GPT, PRESETS
    model = GPT(PRESETS["tiny"])
    assert bench.compiled(model, model.transformer.h, dict(compile=False, compile_blocks=False)) is model
    whole = bench.compiled(model, model.transformer.h, dict(compile=True, compile_blocks=False))
    assert whole is not model and whole._orig_mod is model  # torch.compile's wrapper
    assert all(b._compiled_call_impl is None for b in model.transformer.h)
    assert bench.compiled(model, model.transformer.h, dict(compile=True, compile_blocks=True)) is model
    assert all(b._compiled_call_impl is not None for b in model.transformer.h)  # compiled on first call
    assert model._compiled_call_impl is None and model.lm_head._compiled_call_impl is None
    with pytest.raises(UsageError, match="--compile_blocks=True needs --compile=True"):
        bench.main(["--device=cpu", "--compile_blocks=True"])


@pytest.mark.slow
def test_bench_compiled_block_by_block_times_ours_and_the_hf_peer(tmp_path, capsys):
    out = tmp_path / "b.json"
    bench.main(["--device=cpu", "--model=tiny", "--batch_size=2", "--block_size=16", "--steps=1", "--warmup=1",
                "--compile=True", "--compile_blocks=True", "--hf_peer=True", f"--json={out}"])
    saved = json.loads(out.read_text())
    assert saved["config"]["compile_blocks"] and saved["hf_peer"]["tokens_per_s"] > 0
    assert "compile=blocks" in capsys.readouterr().out

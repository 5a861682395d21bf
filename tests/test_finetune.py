"""Dense vs sparse fine-tuning, tiny end-to-end runs (E2E, summarization), --eval_only, and one-line
CLI errors. Beam search is tests/test_decode.py."""
import json
import math
import subprocess
import sys

import pytest
import torch

import finetune
from common import UsageError
from checkpoint import load_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


def run_ft(out, ckpt, *args):
    return finetune.main([f"--init_from={ckpt}", f"--out_dir={out}", "--device=cpu", "--max_examples=16",
                          "--batch_size=8", "--max_epochs=1", "--eval_examples=3", "--beam_size=2",
                          "--max_new_tokens=6", *args])


def masked_values(model_state, masks):
    return torch.cat([model_state[n][~m].flatten() for n, m in masks.items()])


@pytest.mark.slow
def test_dense_vs_sparse_finetuning_end_to_end(tiny_ckpt, tmp_path, monkeypatch):
    import metrics
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)  # no JVM start-ups (test_metrics runs METEOR)
    pre = load_checkpoint(tiny_ckpt)
    masks = pre["masks"]
    assert masks and not masked_values(pre["model"], masks).any()  # 75% sparse pre-training
    dense = run_ft(tmp_path / "dense", tiny_ckpt, "--task=e2e")
    sparse = run_ft(tmp_path / "sparse", tiny_ckpt, "--task=e2e", "--sparse=True")
    d, s = load_checkpoint(tmp_path / "dense"), load_checkpoint(tmp_path / "sparse")
    assert d["masks"] == {} and set(s["masks"]) == set(masks)
    assert (masked_values(d["model"], masks) != 0).float().mean() > 0.5  # pruned weights learned
    assert not masked_values(s["model"], masks).any()  # ... or stayed exactly 0
    for m in (dense, sparse):
        assert m["task"] == "e2e" and m["n_examples"] == 3 and m["pretrain_sparsity"] == 0.75
        assert {"bleu", "nist", "rouge_l", "cider", "meteor_missing"} <= set(m)
    assert dense["sparse_finetune"] is False and sparse["sparse_finetune"] is True
    assert 0 < sparse["flops"] < dense["flops"]  # sparse matrices cost less per step
    preds = (tmp_path / "dense" / "predictions.txt").read_text().split("\n")
    assert len(preds) == 4 and preds[-1] == ""  # 3 lines
    ref_blocks = (tmp_path / "dense" / "references.txt").read_text().strip().split("\n\n")
    assert len(ref_blocks) == 3 and all(len(b.split("\n")) >= 1 for b in ref_blocks)
    assert json.loads((tmp_path / "dense" / "metrics.json").read_text())["bleu"] == dense["bleu"]
    # the fine-tuned checkpoint scores again with --eval_only, same model -> same predictions
    again = finetune.main([f"--init_from={tmp_path / 'dense'}", "--eval_only=True", "--task=e2e", "--device=cpu",
                           "--eval_examples=3", "--beam_size=2", "--max_new_tokens=6",
                           f"--out_dir={tmp_path / 'eval'}"])
    assert (tmp_path / "eval" / "predictions.txt").read_text() == "\n".join(preds)
    assert again["bleu"] == dense["bleu"] and again["pretrain_sparsity"] == 0.75
    # saved work is never overwritten
    with pytest.raises(UsageError, match="exists"):
        run_ft(tmp_path / "dense", tiny_ckpt, "--task=e2e")


def test_summarization_perplexity(tiny_ckpt, tmp_path):
    data = tmp_path / "news.jsonl"
    data.write_text("\n".join(json.dumps({"article": f"Company {i} reported revenue of {i} million dollars.",
                                          "summary": f"Revenue {i}m."}) for i in range(30)))
    m = run_ft(tmp_path / "summ", tiny_ckpt, "--task=summarization", f"--data={data}")
    assert m["n_examples"] == 3 and math.isfinite(m["perplexity"]) and m["perplexity"] > 1
    assert m["perplexity"] == pytest.approx(math.exp(m["test_loss"])) and m["flops"] > 0


@pytest.mark.slow
def test_cli_errors(tiny_ckpt, tmp_path):
    r = subprocess.run([sys.executable, "finetune.py", "--task=nope", f"--init_from={tiny_ckpt}"],
                       capture_output=True, text=True, cwd=finetune.__file__.rsplit("/", 1)[0])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown task 'nope'" in r.stderr
    with pytest.raises(UsageError, match="checkpoint not found"):
        finetune.main(["--init_from=/nonexistent/ckpt.pt", f"--out_dir={tmp_path / 'a'}"])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="cannot read checkpoint"):
        finetune.main([f"--init_from={corrupt}", f"--out_dir={tmp_path / 'b'}"])
    with pytest.raises(UsageError, match="beam_size"):
        finetune.main([f"--init_from={tiny_ckpt}", "--beam_size=0"])

"""Dense vs sparse fine-tuning, tiny end-to-end runs (E2E, summarization), --eval_only, and one-line
CLI errors. Beam search is tests/test_decode.py."""
import json
import math
import random
import subprocess
import sys

import pytest
import torch

import finetune
from common import UsageError
from checkpoint import load_checkpoint
from data.tasks import load_groups
from flops import train_flops
from model import GPTConfig


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
    shapes = []  # (sequences, padded length) of every training batch
    real_batches = finetune.batches

    def spy(examples, batch_size, shuffle, rng):
        for batch in real_batches(examples, batch_size, shuffle, rng):
            if shuffle:  # training; validation batches come unshuffled
                shapes.append((len(batch), max(len(ids) for ids, _ in batch) - 1))
            yield batch
    monkeypatch.setattr(finetune, "batches", spy)
    pre = load_checkpoint(tiny_ckpt)
    masks = pre["masks"]
    assert masks and not masked_values(pre["model"], masks).any()  # 75% sparse pre-training
    mcfg = GPTConfig(**pre["model_config"])
    dense = run_ft(tmp_path / "dense", tiny_ckpt, "--task=e2e")
    dense_shapes, shapes[:] = list(shapes), []
    sparse = run_ft(tmp_path / "sparse", tiny_ckpt, "--task=e2e", "--sparse=True")
    assert dense_shapes == shapes and len(shapes) == 2  # the same 2 batches of 8 (16 examples, 1 epoch)
    d, s = load_checkpoint(tmp_path / "dense"), load_checkpoint(tmp_path / "sparse")
    assert d["masks"] == {} and set(s["masks"]) == set(masks)
    assert (masked_values(d["model"], masks) != 0).float().mean() > 0.5  # pruned weights learned
    assert not masked_values(s["model"], masks).any()  # ... or stayed exactly 0
    for m in (dense, sparse):
        assert m["task"] == "e2e" and m["n_examples"] == 3 and m["pretrain_sparsity"] == 0.75
        assert {"bleu", "nist", "rouge_l_approx", "cider_approx", "meteor_missing"} <= set(m)
    assert dense["sparse_finetune"] is False and sparse["sparse_finetune"] is True
    # every step costs the exact training FLOPs of its batch at its padded length; sparse matrices cost less
    exact = lambda s: sum(n * train_flops(mcfg, T, s, mcfg.vocab_size) for n, T in shapes)
    assert dense["flops"] == exact(0.0) and sparse["flops"] == exact(0.75) and sparse["flops"] < dense["flops"]
    preds = (tmp_path / "dense" / "predictions.txt").read_text().split("\n")
    assert len(preds) == 4 and preds[-1] == ""  # 3 lines
    # one block of reference lines per scored input: 3 of the test split's groups, in the split's order
    ref_blocks = [b.split("\n") for b in (tmp_path / "dense" / "references.txt").read_text().strip().split("\n\n")]
    test_refs = iter(g["refs"] for g in load_groups("e2e", "test")[0])
    assert len(ref_blocks) == 3 and all(block in test_refs for block in ref_blocks)  # an ordered subsequence
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


def test_early_stopping_after_patience_bad_epochs_saves_the_best_epochs_model(tiny_ckpt, tmp_path, monkeypatch, capsys):
    data = tmp_path / "news.jsonl"
    data.write_text("\n".join(json.dumps({"article": f"Company {i} reported revenue of {i} million dollars.",
                                          "summary": f"Revenue {i}m."}) for i in range(30)))
    script = [3.0, 2.0, 2.5, 2.4, 1.0]  # validation losses: best at epoch 2, then 2 epochs without a better one
    states, real_evaluate = [], finetune.evaluate_loss

    def scripted(model, examples, batch_size, device, prompt=None):
        if (tmp_path / "ft" / "ckpt.pt").exists():  # saved: the test split's perplexity
            return real_evaluate(model, examples, batch_size, device, prompt)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return script[len(states) - 1]
    monkeypatch.setattr(finetune, "evaluate_loss", scripted)
    m = run_ft(tmp_path / "ft", tiny_ckpt, "--task=summarization", f"--data={data}", "--max_examples=8",
               "--batch_size=4", "--max_epochs=5", "--patience=2", "--warmup_iters=0")
    assert "early stopping: validation loss has not improved for 2 epoch(s)" in capsys.readouterr().out
    assert len(states) == 4 and m["epochs"] == 4 and m["train_steps"] == 8  # epoch 5 never ran
    ckpt = load_checkpoint(tmp_path / "ft")
    assert [h["val_loss"] for h in ckpt["finetune"]["history"]] == script[:4] and ckpt["best_val_loss"] == 2.0
    assert m["best_val_loss"] == 2.0
    assert all(torch.equal(v, states[1][k]) for k, v in ckpt["model"].items())  # epoch 2's weights ...
    assert not all(torch.equal(v, states[3][k]) for k, v in ckpt["model"].items())  # ... not the last epoch's


def test_batches_yield_every_example_exactly_once():
    examples = [([j] * (2 + j * 7 % 11), [True] * (1 + j * 7 % 11)) for j in range(237)]  # 11 lengths
    for shuffle in (False, True):
        got = list(finetune.batches(examples, 2, shuffle, random.Random(3)))
        assert sorted(ids[0] for batch in got for ids, _ in batch) == list(range(237))
        assert sorted(len(b) for b in got) == [1] + [2] * 118  # only one batch is short
    # shuffled: another order for another seed, the same for the same; batches of similar lengths
    order = lambda seed: [ids[0] for b in finetune.batches(examples, 2, True, random.Random(seed)) for ids, _ in b]
    assert order(3) == order(3) != order(4)
    unshuffled = [ids for b in finetune.batches(examples, 2, False, None) for ids, _ in b]
    assert [len(ids) for ids in unshuffled[:100]] == sorted(len(ids) for ids, _ in examples[:100])  # a window: 50 batches

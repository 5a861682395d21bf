"""Soft prompts (MediSwift / Lester et al. prompt tuning): the model's prefix_embeds hook and its
positions and KV cache, beam search with a prompt, --freeze_model, dense and sparse fine-tuning
with a prompt, the checkpoint round trip with --eval_only, and one-line CLI errors."""
import json
import subprocess
import sys

import pytest
import torch

import finetune
from related import softprompt
from common import UsageError
from checkpoint import load_checkpoint
from decode import beam_search
from model import GPT, GPTConfig


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_meteor(monkeypatch):
    import metrics
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)  # no JVM start-ups


def small_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=16)).eval()


def test_prefix_embeds_are_tokens_at_the_first_positions():
    model = small_gpt()
    prefix_ids, idx = torch.tensor([[3, 8, 1]]), torch.tensor([[5, 9, 2, 7], [1, 1, 3, 60]])
    prefix = model.transformer.wte.weight[prefix_ids]  # (1, 3, d): the embeddings of real tokens
    with torch.no_grad():
        got, _ = model(idx, prefix_embeds=prefix)
        ref, _ = model(torch.cat([prefix_ids.expand(2, -1), idx], dim=1))
    assert got.shape == (2, 4, 64)  # logits for the tokens only
    torch.testing.assert_close(got, ref[:, 3:])
    # targets line up with the tokens, and the loss reaches the prompt
    p = torch.nn.Parameter(torch.randn(1, 3, 16) * 0.02)
    _, loss = model(idx, targets=torch.roll(idx, -1, 1), prefix_embeds=p)
    loss.backward()
    assert p.grad.abs().sum() > 0
    # generate with the KV cache: same as putting the prompt tokens in front
    out = model.generate(idx[:1], 8, temperature=0, prefix_embeds=prefix)
    ref = model.generate(torch.cat([prefix_ids, idx[:1]], dim=1), 8, temperature=0)[:, 3:]
    assert out.tolist() == ref.tolist()
    with pytest.raises(AssertionError, match="block_size"):
        model(torch.zeros(1, 30, dtype=torch.long), prefix_embeds=prefix)  # 3 + 30 > 32


def test_beam_search_with_a_soft_prompt_equals_an_uncached_greedy_rollout():
    model = small_gpt()
    soft = torch.randn(5, 16) * 0.5  # not any token's embedding
    prompts = [[5, 9, 2, 7], [40, 41, 42, 43]]
    got = beam_search(model, prompts, beam_size=1, max_new_tokens=12, no_repeat_ngram=0, eos=63,
                      soft_prompt=soft)
    without = beam_search(model, prompts, beam_size=1, max_new_tokens=12, no_repeat_ngram=0, eos=63)
    for p, g in zip(prompts, got):
        seq = list(p)
        with torch.no_grad():  # recompute everything every step: no cache, no pos_offset
            while len(seq) - len(p) < 12:
                tok = model(torch.tensor([seq]), prefix_embeds=soft[None])[0][0, -1].argmax().item()
                if tok == 63:
                    break
                seq.append(tok)
        assert g == seq[len(p):]
    assert got != without  # the prompt changes what the model says
    # the prompt's positions count against block_size: 5 + 4 prompt tokens leave 23 of 32
    long = beam_search(model, prompts[:1], beam_size=2, max_new_tokens=100, no_repeat_ngram=0, eos=99,
                       soft_prompt=soft)[0]
    assert len(long) == 32 - 5 - 4


def run_ft(out, ckpt, *args):
    return finetune.main([f"--init_from={ckpt}", f"--out_dir={out}", "--device=cpu", "--max_examples=16",
                          "--batch_size=8", "--max_epochs=1", "--eval_examples=3", "--beam_size=2",
                          "--max_new_tokens=6", "--warmup_iters=0", *args])


def initial_prompt(ckpt_dir, n, seed=1337):
    pre = load_checkpoint(ckpt_dir)
    model = GPT(GPTConfig(**pre["model_config"]))
    model.load_state_dict(pre["model"])
    return softprompt.init_soft_prompt(model, n, seed), pre


def changed(a, b):
    return sorted(k for k in a if not torch.equal(a[k], b[k]))


def test_freeze_model_trains_the_prompt_alone_and_eval_only_restores_it(tiny_ckpt, tmp_path):
    data = tmp_path / "news.jsonl"
    data.write_text("\n".join(json.dumps({"article": f"Company {i} reported revenue of {i} million dollars.",
                                          "summary": f"Revenue {i}m."}) for i in range(30)))
    args = ["--task=summarization", f"--data={data}"]
    init, pre = initial_prompt(tiny_ckpt, 4)
    assert torch.equal(init, pre["model"]["transformer.wte.weight"][torch.randperm(
        5000, generator=torch.Generator().manual_seed(1337))[:4]])  # sampled token embeddings
    m = run_ft(tmp_path / "frozen", tiny_ckpt, *args, "--soft_prompt=4", "--freeze_model=True",
               "--soft_prompt_lr=0.01")
    ft = load_checkpoint(tmp_path / "frozen")
    assert changed(ft["model"], pre["model"]) == []  # every model tensor exactly as loaded
    assert ft["soft_prompt"].shape == (4, 128) and not torch.equal(ft["soft_prompt"], init)
    assert m["soft_prompt"] == 4 and m["freeze_model"] is True
    dense = run_ft(tmp_path / "dense", tiny_ckpt, *args)
    assert 0 < m["flops"] < dense["flops"]  # no weight gradients
    # --eval_only restores the prompt: the same perplexity; without the prompt, another one
    again = finetune.main([f"--init_from={tmp_path / 'frozen'}", "--eval_only=True", "--device=cpu",
                           "--eval_examples=3", *args, f"--out_dir={tmp_path / 'eval'}"])
    assert again["soft_prompt"] == 4 and again["perplexity"] == pytest.approx(m["perplexity"], rel=1e-6)
    bare = {k: v for k, v in ft.items() if k != "soft_prompt"}
    (tmp_path / "bare").mkdir()
    torch.save(bare, tmp_path / "bare" / "ckpt.pt")
    plain = finetune.main([f"--init_from={tmp_path / 'bare'}", "--eval_only=True", "--device=cpu",
                           "--eval_examples=3", *args, f"--out_dir={tmp_path / 'eval2'}"])
    assert plain["soft_prompt"] == 0 and abs(plain["perplexity"] - m["perplexity"]) > 1e-3


@pytest.mark.slow
def test_dense_and_sparse_finetuning_with_a_prompt(tiny_ckpt, tmp_path):
    init, pre = initial_prompt(tiny_ckpt, 6)
    masks = pre["masks"]
    run_ft(tmp_path / "dense", tiny_ckpt, "--task=e2e", "--soft_prompt=6", "--beam_size=1")
    d = load_checkpoint(tmp_path / "dense")
    assert not torch.equal(d["soft_prompt"], init)
    assert len(changed(d["model"], pre["model"])) == len(pre["model"])  # every tensor learned
    assert any(d["model"][n][~m].any() for n, m in masks.items())  # pruned weights too (dense FT)
    # the checkpoint decodes the same with --eval_only (prompt restored, beam 1)
    finetune.main([f"--init_from={tmp_path / 'dense'}", "--eval_only=True", "--task=e2e", "--device=cpu",
                   "--eval_examples=3", "--beam_size=1", "--max_new_tokens=6", f"--out_dir={tmp_path / 'ev'}"])
    assert (tmp_path / "ev" / "predictions.txt").read_text() == (tmp_path / "dense" / "predictions.txt").read_text()
    # sparse fine-tuning with a prompt: both learn, the masks still hold exactly
    run_ft(tmp_path / "sparse", tiny_ckpt, "--task=e2e", "--soft_prompt=6", "--sparse=True", "--beam_size=1")
    s = load_checkpoint(tmp_path / "sparse")
    assert not torch.equal(s["soft_prompt"], init) and changed(s["model"], pre["model"])
    assert set(s["masks"]) == set(masks) and not any(s["model"][n][~m].any() for n, m in masks.items())


@pytest.mark.slow
def test_cli_errors(tiny_ckpt, tmp_path):
    r = subprocess.run([sys.executable, "finetune.py", "--soft_prompt=-1", f"--init_from={tiny_ckpt}",
                        f"--out_dir={tmp_path / 'x'}"],
                       capture_output=True, text=True, cwd=finetune.__file__.rsplit("/", 1)[0])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--soft_prompt must be non-negative" in r.stderr
    with pytest.raises(UsageError, match="nothing to train"):
        finetune.main([f"--init_from={tiny_ckpt}", "--freeze_model=True", f"--out_dir={tmp_path / 'a'}"])
    with pytest.raises(UsageError, match="no room in block_size 64"):
        finetune.main([f"--init_from={tiny_ckpt}", "--soft_prompt=63", f"--out_dir={tmp_path / 'b'}"])
    with pytest.raises(UsageError, match="holds no trained soft prompt"):
        finetune.main([f"--init_from={tiny_ckpt}", "--soft_prompt=4", "--eval_only=True", "--device=cpu"])
    with pytest.raises(UsageError, match="soft_prompt_lr"):
        finetune.main([f"--init_from={tiny_ckpt}", "--soft_prompt=4", "--soft_prompt_lr=0"])

"""sample.py: greedy tokens are the same on the masked and the CSR kernel, a seed fixes the samples, the
speed line, the prompt from a file, a soft prompt, and bad input as one 'error:' line before any loading."""
import re
import subprocess
import sys

import pytest
import torch

import sample
import sparse_kernels
import sparsity as sp
from checkpoint import checkpoint_dict, save_checkpoint
from common import run_cli
from data.sources import EOT, get_tokenizer
from model import GPT, PRESETS
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """The tiny model at 75 % sparsity as a pre-training out_dir (masks), a dense checkpoint, a dense
    fine-tuned one (no masks, pre-trained sparse) and one with a 3-vector soft prompt."""
    ws = tmp_path_factory.mktemp("sample")
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"])
    with torch.no_grad():  # a random GPT repeats one token; large positions make greedy tokens vary
        model.transformer.wpe.weight.mul_(50)
    masks = sp.make_masks(model, 0.75)
    sp.apply_masks(model, masks)
    state, cfg = model.state_dict(), model.config
    save_checkpoint(checkpoint_dict(state, cfg, dict(sparsity=0.75), masks), ws / "sparse" / "ckpt.pt")
    save_checkpoint(checkpoint_dict(state, cfg, dict(sparsity=0.0)), ws / "dense.pt")
    save_checkpoint(checkpoint_dict(state, cfg, dict(task="e2e"), pretrain_sparsity=0.75), ws / "finetuned.pt")
    soft = 0.5 * torch.randn(3, cfg.n_embd)
    save_checkpoint(checkpoint_dict(state, cfg, dict(task="e2e"), soft_prompt=soft), ws / "soft.pt")
    return ws


def run(ckpt, *args):
    return sample.main([f"--init_from={ckpt}", "--device=cpu", f"--start={PROMPT}", *args])


def test_greedy_csr_gives_the_masked_tokens_on_a_sparse_checkpoint(ckpts, monkeypatch):
    converted, to_sparse = [], sparse_kernels.to_sparse_model

    def spy(model, masks):  # what sample.py converted, to look at its layers
        converted.append(to_sparse(model, masks))
        return converted[-1]
    monkeypatch.setattr(sparse_kernels, "to_sparse_model", spy)
    greedy = ["--temperature=0", "--num_samples=2", "--max_new_tokens=24"]
    masked = run(ckpts / "sparse", *greedy, "--kernel=masked")
    assert not converted
    csr = run(ckpts / "sparse", *greedy, "--kernel=csr")
    # the csr run computed with SparseLinear holding the kept 25 % of each block matrix
    layers = [m for m in converted[0].modules() if isinstance(m, sparse_kernels.SparseLinear)]
    assert len(layers) == 6 * PRESETS["tiny"].n_layer
    assert all(m.values.numel() == round(0.25 * m.in_features * m.out_features) for m in layers)
    assert (masked["kernel"], csr["kernel"]) == ("masked", "csr")
    assert masked["sparsity"] == csr["sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert [len(t) for t in masked["tokens"]] == [24, 24]
    assert len(set(masked["tokens"][0])) > 10  # varied tokens: a wrong position or cache would show
    assert csr["tokens"] == masked["tokens"]
    assert masked["tokens"][0] == masked["tokens"][1]  # greedy: every sample the same
    # the KV-cache loop agrees with the model's own generate()
    model = GPT(PRESETS["tiny"]).eval()
    model.load_state_dict(torch.load(ckpts / "sparse" / "ckpt.pt", weights_only=True)["model"])
    ref = model.generate(torch.tensor([masked["prompt"]]), 24, temperature=0)[0, len(masked["prompt"]):]
    assert ref.tolist() == masked["tokens"][0]


def test_sampling_is_reproducible_with_a_seed(ckpts):
    args = ["--temperature=0.8", "--top_k=200", "--num_samples=2", "--max_new_tokens=16"]
    first = run(ckpts / "sparse", *args, "--seed=7")
    again = run(ckpts / "sparse", *args, "--seed=7")
    other = run(ckpts / "sparse", *args, "--seed=8")
    assert first["tokens"] == again["tokens"]
    assert first["tokens"] != other["tokens"]
    assert first["tokens"][0] != first["tokens"][1]  # samples of one run differ from each other


def test_prints_samples_and_tokens_per_second_and_writes_nothing(ckpts, capsys):
    before = sorted(p for p in ckpts.rglob("*"))
    r = run(ckpts / "sparse", "--kernel=csr", "--num_samples=3", "--max_new_tokens=8")
    out = capsys.readouterr().out.splitlines()
    assert out.count("-" * 15) == 3
    assert out[0].startswith(PROMPT) and r["texts"][0].startswith(PROMPT)
    m = re.fullmatch(r"24 tokens in ([\d.]+) s: ([\d,.]+) tokens/s, kernel csr, sparsity 75\.0% .*, cpu", out[-1])
    assert m, out[-1]
    assert r["tokens_per_s"] > 0 and r["tokens_per_s"] == pytest.approx(24 / r["seconds"])
    assert float(m.group(2).replace(",", "")) == pytest.approx(r["tokens_per_s"], rel=0.01, abs=0.1)
    assert sorted(p for p in ckpts.rglob("*")) == before


def test_prompt_from_a_file_and_the_empty_prompt(ckpts, tmp_path):
    (tmp_path / "prompt.txt").write_text(PROMPT, encoding="utf-8")
    args = ["--temperature=0", "--num_samples=1", "--max_new_tokens=6"]
    dense = [f"--init_from={ckpts / 'dense.pt'}", "--device=cpu"]
    from_file = sample.main([*dense, f"--start=FILE:{tmp_path / 'prompt.txt'}", *args])
    inline = run(ckpts / "dense.pt", *args)
    assert from_file["prompt"] == get_tokenizer().encode(PROMPT) == inline["prompt"]
    assert from_file["tokens"] == inline["tokens"]
    empty = sample.main([*dense, "--start=", *args])
    assert empty["prompt"] == [EOT]  # GPT-2's unconditional start


def test_a_soft_prompt_goes_before_the_prompt(ckpts):
    args = ["--temperature=0", "--num_samples=1", "--max_new_tokens=12"]
    with_soft, without = run(ckpts / "soft.pt", *args), run(ckpts / "dense.pt", *args)
    ckpt = torch.load(ckpts / "soft.pt", weights_only=True)
    model = GPT(PRESETS["tiny"]).eval()
    model.load_state_dict(ckpt["model"])
    prompt = torch.tensor([with_soft["prompt"]])
    ref = model.generate(prompt, 12, temperature=0, prefix_embeds=ckpt["soft_prompt"][None])[0, prompt.size(1):]
    assert with_soft["tokens"][0] == ref.tolist() != without["tokens"][0]


def error_line(capsys, argv, code=2):
    with pytest.raises(SystemExit) as e:
        run_cli(sample.main, argv)
    assert e.value.code == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("name, why", [("dense.pt", "a dense model"), ("gpt2", "Hugging Face"),
                                       ("finetuned.pt", "dense fine-tuned from a 75% sparse")])
def test_csr_without_masks_is_refused(ckpts, capsys, monkeypatch, name, why):
    monkeypatch.chdir(ckpts)  # "gpt2" is the Hub name (no folder of that name here); refused before any download
    source = name if name == "gpt2" else ckpts / name
    err = error_line(capsys, [f"--init_from={source}", "--device=cpu", "--kernel=csr"])
    assert "--kernel=csr needs a sparse checkpoint (pre-training masks)" in err and why in err


@pytest.mark.parametrize("arg, words", [
    ("--kernel=dense", "--kernel must be one of masked, csr"),
    ("--temperature=-0.5", "--temperature must be >= 0"),
    ("--top_k=-1", "--top_k must be >= 0"),
    ("--num_samples=0", "--num_samples must be at least 1"),
    ("--max_new_tokens=0", "--max_new_tokens must be at least 1"),
    ("--start=FILE:{ws}/missing.txt", "no such file"),
])
def test_bad_flags_are_refused_before_loading(ckpts, capsys, monkeypatch, arg, words):
    monkeypatch.setattr(sample, "load_source", lambda *a: pytest.fail("loaded a checkpoint for a bad flag"))
    err = error_line(capsys, [f"--init_from={ckpts / 'sparse'}", "--device=cpu", arg.format(ws=ckpts)])
    assert words in err


def test_too_long_a_generation_or_a_missing_checkpoint_is_refused(ckpts, capsys):
    err = error_line(capsys, [f"--init_from={ckpts / 'sparse'}", "--device=cpu", f"--start={PROMPT}",
                              "--max_new_tokens=200"])
    assert "--max_new_tokens=200" in err and "block_size of 128" in err and "--max_new_tokens=124 or less" in err
    err = error_line(capsys, [f"--init_from={ckpts / 'nowhere'}", "--device=cpu"])
    assert "checkpoint not found" in err


def test_the_command_line_answers_one_error_line(ckpts):
    proc = subprocess.run([sys.executable, "sample.py", f"--init_from={ckpts / 'dense.pt'}", "--kernel=csr"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --kernel=csr needs a sparse checkpoint") and proc.stderr.count("\n") == 1
    assert proc.stdout == ""

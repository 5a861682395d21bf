"""Hugging Face GPT-2 import/export (hf.py): logits equal transformers' both ways, for a tiny and a
gpt2-small-shaped model with both GELUs; sparse export; soft prompt; one-line errors; the Sparse
Llama pipeline (HF GPT-2 -> SparseGPT -> sparse continued pre-training -> dense FT -> export).
HF weights come from randomly initialized GPT2LMHeadModels saved by the tests (no Hub access)."""
import json
from dataclasses import asdict

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel  # noqa: E402

import finetune  # noqa: E402
import hf  # noqa: E402
from related import sparsegpt  # noqa: E402
from common import UsageError  # noqa: E402
from checkpoint import load_checkpoint  # noqa: E402
from conftest import run_pretrain  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-4  # max |logit difference| in fp32


def hf_gpt2(seed=0, scale=1.0, **kw):
    """A random GPT2LMHeadModel; scale > 1 widens the weights so that the GELU choice matters."""
    torch.manual_seed(seed)
    m = GPT2LMHeadModel(GPT2Config(**kw)).eval()
    if scale != 1.0:
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(scale)
    return m


def ours(ckpt):
    model = GPT(GPTConfig(**ckpt["model_config"])).eval()
    model.load_state_dict(ckpt["model"])
    return model


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
    """A GPT-2-vocabulary HF GPT-2 (tanh GELU) small enough to pre-train and fine-tune in a test."""
    path = tmp_path_factory.mktemp("hf_tiny")
    hf_gpt2(n_layer=2, n_head=2, n_embd=32, n_positions=128).save_pretrained(path)
    return path


@pytest.mark.parametrize("act", ["gelu_new", "gelu"])
def test_tiny_import_and_export_match_transformers(tmp_path, act):
    m = hf_gpt2(1, 8.0, n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=300, activation_function=act)
    m.save_pretrained(tmp_path / "src")
    ck = hf.load_source(str(tmp_path / "src"))
    assert ck["model_config"]["activation"] == {"gelu_new": "gelu_tanh", "gelu": "gelu"}[act]
    assert ck["model_config"]["block_size"] == 64 and ck["masks"] == {}
    x = torch.randint(0, 300, (2, 64))
    with torch.no_grad():
        ref, mine = m(x).logits, ours(ck)(x)[0]
    assert max_diff(ref, mine) <= TOL * ref.abs().max().item() / 10  # weights 8x: logits in the hundreds
    # the other GELU would be visibly wrong at these weight scales (the reason for the field)
    wrong = GPT(GPTConfig(**{**ck["model_config"], "activation": "gelu" if act == "gelu_new" else "gelu_tanh"})).eval()
    wrong.load_state_dict(ck["model"])
    with torch.no_grad():
        assert max_diff(ref, wrong(x)[0]) > 1e-3
    hf.main([f"--ckpt={tmp_path / 'src'}", f"--out={tmp_path / 'out'}"])  # HF -> ours -> HF
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert back.config.activation_function == act and back.config.n_positions == 64
    with torch.no_grad():
        assert max_diff(back(x).logits, mine) <= TOL * ref.abs().max().item() / 10


@pytest.mark.slow
@pytest.mark.parametrize("act", ["gelu_tanh", "gelu"])
def test_gpt2_small_shaped_round_trip(act):
    """124M parameters, GPT-2's shapes (1024 positions); converted in memory, a few tokens."""
    cfg = GPTConfig(block_size=1024, n_layer=12, n_head=12, n_embd=768, activation=act)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():  # LayerNorm and bias values off their 1/0 init, so a mix-up shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("ln_1.weight") or "ln_2.weight" in name or "ln_f.weight" in name else 0.0, 0.1)
    hcfg = GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, activation_function=hf.GELU_TO_HF[act])
    theirs = GPT2LMHeadModel(hcfg).eval()
    missing, unexpected = theirs.load_state_dict(hf.to_hf_state(model.state_dict(), cfg), strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected  # the tied head
    x = torch.randint(0, 50257, (1, 12))
    pos = torch.arange(1000, 1012)[None]  # the last rows of the 1024-position table too
    with torch.no_grad():
        ref = theirs(x).logits
        assert max_diff(ref, model(x)[0]) <= TOL
        assert max_diff(theirs(x, position_ids=pos).logits, model(x, pos_offset=1000)[0]) <= TOL
        back = GPT(cfg).eval()
        back.load_state_dict(hf.from_hf_state(theirs.state_dict(), cfg))
        assert max_diff(ref, back(x)[0]) <= TOL


def test_old_checkpoint_without_activation_is_exact_gelu(tmp_path):
    cfg = GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16, vocab_size=64)
    model = GPT(cfg)
    old = {k: v for k, v in asdict(cfg).items() if k != "activation"}
    torch.save(dict(model=model.state_dict(), model_config=old, config={}), tmp_path / "old.pt")
    ck = hf.load_source(str(tmp_path / "old.pt"))
    assert ck["model_config"]["activation"] == "gelu"
    assert GPT(GPTConfig(**old)).transformer.h[0].mlp.approximate == "none"


def test_export_sparse_checkpoint_and_tokenizer(tmp_path, tiny_ckpt, capsys):
    ck = load_checkpoint(tiny_ckpt)
    summary = hf.main([f"--ckpt={tiny_ckpt}", f"--out={tmp_path / 'hf'}"])
    numel = sum(m.numel() for m in ck["masks"].values())
    pruned = sum(int((~m).sum()) for m in ck["masks"].values())
    assert summary["sparse_numel"] == numel and summary["zeros"] >= pruned and summary["masks"] == 12
    assert f"{summary['zeros']:,} of {numel:,} weights are zero" in capsys.readouterr().out
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.activation_function == "gelu"  # the tiny preset: exact GELU
    w = theirs.transformer.h[0].mlp.c_fc.weight  # Conv1D (in, out)
    assert torch.equal(w == 0, ~ck["masks"]["transformer.h.0.mlp.c_fc.weight"].t())  # the zeros, as they are
    x = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        assert max_diff(theirs(x).logits, ours(ck)(x)[0]) <= TOL
    if summary["tokenizer"]:  # GPT-2's BPE from tiktoken's cache: the same ids as ours
        from data.sources import get_tokenizer
        tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
        text = "The Eagle is a coffee shop near Burger King.\n  It's  £20-25 — family-friendly!"
        assert tok(text)["input_ids"] == get_tokenizer().encode(text)
    with pytest.raises(UsageError, match="exists"):  # never overwrites
        hf.main([f"--ckpt={tiny_ckpt}", f"--out={tmp_path / 'hf'}"])


def test_export_soft_prompt(tmp_path, tiny_ckpt):
    from safetensors.torch import load_file
    ck = load_checkpoint(tiny_ckpt)
    ck["soft_prompt"] = torch.randn(3, 128) * 0.02
    torch.save(ck, tmp_path / "sp.pt")
    assert hf.main([f"--ckpt={tmp_path / 'sp.pt'}", f"--out={tmp_path / 'hf'}"])["soft_prompt"] == 3
    prompt = load_file(tmp_path / "hf" / "soft_prompt.safetensors")["soft_prompt"]
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 50257, (1, 10))
    with torch.no_grad():
        embeds = torch.cat([prompt[None], theirs.transformer.wte(x)], dim=1)  # as docs/hf.md says
        assert max_diff(theirs(inputs_embeds=embeds).logits[:, 3:], ours(ck)(x, prefix_embeds=prompt[None])[0]) <= TOL


def test_one_line_errors(tmp_path, shakespeare_dir):
    (tmp_path / "empty").mkdir()
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for source, msg in [(tmp_path / "nope", "no such folder|not found"), (tmp_path / "empty", "no config.json|not found"),
                        (tmp_path / "llama", "llama model, not GPT-2")]:
        with pytest.raises(UsageError, match=msg):
            hf.load_source(str(source))
    with pytest.raises(UsageError, match="llama model, not GPT-2"):
        finetune.main([f"--init_from={tmp_path / 'llama'}", f"--out_dir={tmp_path / 'ft'}"])
    with pytest.raises(UsageError, match="llama model, not GPT-2"):
        run_pretrain(tmp_path / "pt", shakespeare_dir, f"--init_from={tmp_path / 'llama'}")
    (tmp_path / "noweights").mkdir()
    GPT2Config(n_layer=1, n_head=1, n_embd=8).save_pretrained(tmp_path / "noweights")
    with pytest.raises(UsageError, match="cannot load the GPT-2 weights"):
        hf.load_source(str(tmp_path / "noweights"))
    with pytest.raises(UsageError, match="usage"):
        hf.main([])


@pytest.mark.slow
def test_sparse_llama_pipeline_from_local_hf_folder(tmp_path, tiny_hf_dir, shakespeare_dir):
    """HF GPT-2 -> SparseGPT 50% (sparsegpt.py --out) -> sparse continued pre-training -> dense
    fine-tuning -> export, the README's commands."""
    sparsegpt.main([f"--ckpt={tiny_hf_dir}", "--sparsity=0.5", "--calib_samples=4", "--eval_batches=1",
                    "--batch_size=2", "--dataset=shakespeare", f"--data_dir={shakespeare_dir}",
                    f"--out={tmp_path / 'pruned.pt'}"])
    pruned = load_checkpoint(tmp_path / "pruned.pt")
    assert pruned["model_config"]["activation"] == "gelu_tanh" and pruned["model_config"]["block_size"] == 128
    run_pretrain(tmp_path / "sparse", shakespeare_dir, f"--init_from={tmp_path / 'pruned.pt'}",
                 "--max_iters=2", "--eval_interval=2", "--block_size=64")  # a shorter context than GPT-2's
    ck = load_checkpoint(tmp_path / "sparse")
    assert ck["model_config"]["activation"] == "gelu_tanh" and ck["model_config"]["n_embd"] == 32
    assert ck["model_config"]["block_size"] == 64 and len(ck["masks"]) == 12
    for name, mask in ck["masks"].items():
        assert abs((~mask).float().mean().item() - 0.5) < 1e-3 and not ck["model"][name][~mask].any()
    ft_args = ["--task=e2e", "--device=cpu", "--max_examples=8", "--batch_size=8", "--max_epochs=1",
               "--eval_examples=2", "--beam_size=1", "--max_new_tokens=4"]
    finetune.main([f"--init_from={tmp_path / 'sparse'}", f"--out_dir={tmp_path / 'ft'}", *ft_args])
    ft = load_checkpoint(tmp_path / "ft")
    assert not ft["masks"] and ft["pretrain_sparsity"] == 0.5
    summary = hf.main([f"--ckpt={tmp_path / 'ft'}", f"--out={tmp_path / 'hf'}"])
    assert summary["zeros"] < summary["sparse_numel"] * 0.1  # dense fine-tuning grew the pruned weights back
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        assert max_diff(theirs(x).logits, ours(ft)(x)[0]) <= TOL
    # fine-tuning straight from the HF folder works too (1024 -> its 128 positions)
    metrics = finetune.main([f"--init_from={tiny_hf_dir}", f"--out_dir={tmp_path / 'ft2'}", *ft_args])
    assert metrics["n_examples"] == 2 and metrics["pretrain_sparsity"] == 0.0


def test_a_broken_transformers_is_a_one_line_error_naming_its_version(monkeypatch):
    import importlib.metadata
    import sys
    import types

    class Broken(types.ModuleType):  # what our old kernels/ did: shadow a module transformers imports
        def __getattr__(self, name):
            raise ImportError("cannot import name 'CUDAProperties' from 'kernels'")
    monkeypatch.setitem(sys.modules, "transformers", Broken("transformers"))
    version = importlib.metadata.version("transformers")
    with pytest.raises(UsageError, match=rf"^transformers {version} cannot be imported "
                                         r"\(ImportError: cannot import name 'CUDAProperties'"):
        hf.from_transformers("GPT2Config")

"""
Hugging Face GPT-2 in and out: start SPDF from real GPT-2 weights, hand any checkpoint to transformers.

Import (every script whose --init_from may name one, through load_any here):
  --init_from=gpt2 | gpt2-medium | gpt2-large | gpt2-xl   downloaded through transformers (Hub cache)
  --init_from=<folder with config.json and weights>        a local HF GPT-2 (save_pretrained layout)
HF's GPT-2 keeps its matrices as Conv1D (x @ W, W of shape (in, out)): transposed here into
nn.Linear's (out, in); the fused attention input c_attn (d, 3d) is split into q, k, v. The head is
tied to the token embedding in both. GPT-2 has 1024 positions and the tanh GELU ("gelu_new"), so an
import carries activation="gelu_tanh" and block_size=n_positions (a smaller --block_size keeps the
first rows of the position table).

Export:
  python hf.py --ckpt=out/ckpt.pt --out=hf-out     # any project checkpoint or out_dir
writes config.json + model.safetensors (+ vocab.json/merges.txt, GPT-2's BPE files, when they can
be found) that transformers.AutoModelForCausalLM.from_pretrained(hf-out) loads. A sparse checkpoint's
pruned weights are exported as the zeros they are (the masks themselves are not written: HF GPT-2
has no place for them; weight == 0 recovers them). A soft prompt has no slot in GPT2LMHeadModel
either: it goes to soft_prompt.safetensors, to be fed as inputs_embeds before the token embeddings.
"""
import json
import os
from pathlib import Path

import torch

from checkpoint import build_model, checkpoint_dict, load_checkpoint
from common import UsageError, check, check_writable_dir, parse_config, run_cli
from model import GPTConfig

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
GELU_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
HF_TO_GELU = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
CONV1D = ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # HF Conv1D modules that map 1:1 onto our Linears


def from_transformers(*names):
    """transformers' classes by name; a missing or broken transformers (an import error inside it, a
    module of ours shadowing one it needs) is a one-line error naming the package and its version."""
    import importlib.metadata
    try:
        import transformers
        found = [getattr(transformers, name) for name in names]  # lazy: the model modules load here
    except Exception as e:
        try:
            version = importlib.metadata.version("transformers")
        except importlib.metadata.PackageNotFoundError:
            raise UsageError("transformers is not installed (pip install transformers); it is needed "
                             "for GPT-2 import and export") from e
        raise UsageError(f"transformers {version} cannot be imported ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
    return found[0] if len(found) == 1 else found


def is_hf_source(source):
    """A Hub name (not shadowed by a local path) or a folder with config.json and no ckpt.pt."""
    source = str(source)
    if source in HUB_NAMES and not os.path.exists(source):
        return True
    p = Path(source)
    return p.is_dir() and (p / "config.json").is_file() and not (p / "ckpt.pt").exists()


def _hf_config(source):
    """The transformers GPT2Config of a Hub name or local folder; one-line errors for the rest."""
    AutoConfig = from_transformers("AutoConfig")
    if source not in HUB_NAMES or os.path.exists(source):
        p = Path(source)
        check(p.is_dir(), f"{source}: no such folder (and not one of {', '.join(HUB_NAMES)})")
        check((p / "config.json").is_file(), f"{source}: not a Hugging Face model folder (no config.json)")
        try:
            raw = json.loads((p / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{source}/config.json: cannot parse ({type(e).__name__})") from e
        check(isinstance(raw, dict) and raw.get("model_type") == "gpt2",
              f"{source}: a {raw.get('model_type') if isinstance(raw, dict) else '?'!s} model, not GPT-2 "
              "(config.json model_type must be 'gpt2')")
    try:
        hc = AutoConfig.from_pretrained(source)
    except Exception as e:  # no network, unknown name, bad json: transformers raises many kinds
        raise UsageError(f"cannot load the config of {source} ({type(e).__name__}); "
                         "offline, pass a local Hugging Face GPT-2 folder") from e
    check(hc.model_type == "gpt2", f"{source}: a {hc.model_type} model, not GPT-2")
    act = hc.activation_function
    check(act in HF_TO_GELU, f"{source}: activation {act!r} is not supported ({', '.join(HF_TO_GELU)})")
    check(hc.n_inner in (None, 4 * hc.n_embd), f"{source}: MLP width n_inner={hc.n_inner} is not 4 * n_embd")
    check(abs(hc.layer_norm_epsilon - 1e-5) < 1e-12, f"{source}: layer_norm_epsilon {hc.layer_norm_epsilon} != 1e-5")
    check(not getattr(hc, "scale_attn_by_inverse_layer_idx", False) and getattr(hc, "scale_attn_weights", True),
          f"{source}: attention scaling other than 1/sqrt(head_dim) is not supported")
    check(not getattr(hc, "add_cross_attention", False), f"{source}: cross-attention is not supported")
    check(hc.n_embd % hc.n_head == 0, f"{source}: n_embd {hc.n_embd} is not a multiple of n_head {hc.n_head}")
    return hc


def gpt_config(source, dropout=0.0, block_size=0):
    """Our GPTConfig for an HF GPT-2 source; block_size 0 = all its positions."""
    hc = _hf_config(source)
    check(block_size <= hc.n_positions, f"--block_size={block_size} exceeds {source}'s {hc.n_positions} positions")
    return GPTConfig(block_size=block_size or hc.n_positions, vocab_size=hc.vocab_size, n_layer=hc.n_layer,
                     n_head=hc.n_head, n_embd=hc.n_embd, dropout=dropout,
                     activation=HF_TO_GELU[hc.activation_function])


def from_hf_state(sd, cfg):
    """Our state dict from an HF GPT2LMHeadModel state dict (Conv1D transposed, c_attn split)."""
    d, out = cfg.n_embd, {}
    g = lambda k: sd[f"transformer.{k}"].float()
    out["transformer.wte.weight"] = g("wte.weight")
    out["transformer.wpe.weight"] = g("wpe.weight")[:cfg.block_size]
    out["lm_head.weight"] = out["transformer.wte.weight"]
    for name in ("ln_f.weight", "ln_f.bias"):
        out[f"transformer.{name}"] = g(name)
    for i in range(cfg.n_layer):
        h = f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            out[f"transformer.{h}{ln}.weight"], out[f"transformer.{h}{ln}.bias"] = g(f"{h}{ln}.weight"), g(f"{h}{ln}.bias")
        w, b = g(f"{h}attn.c_attn.weight"), g(f"{h}attn.c_attn.bias")  # (d, 3d): q | k | v
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"transformer.{h}attn.{name}.weight"] = w[:, j * d:(j + 1) * d].t().contiguous()
            out[f"transformer.{h}attn.{name}.bias"] = b[j * d:(j + 1) * d].clone()
        for name in CONV1D:
            out[f"transformer.{h}{name}.weight"] = g(f"{h}{name}.weight").t().contiguous()
            out[f"transformer.{h}{name}.bias"] = g(f"{h}{name}.bias")
    return out


def to_hf_state(sd, cfg):
    """The inverse of from_hf_state: an HF GPT2LMHeadModel state dict (tied head left out)."""
    out = {}
    for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
        out[f"transformer.{k}"] = sd[f"transformer.{k}"]
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            out[f"{h}{ln}.weight"], out[f"{h}{ln}.bias"] = sd[f"{h}{ln}.weight"], sd[f"{h}{ln}.bias"]
        qkv = ("q_proj", "k_proj", "v_proj")
        out[f"{h}attn.c_attn.weight"] = torch.cat([sd[f"{h}attn.{n}.weight"].t() for n in qkv], dim=1)
        out[f"{h}attn.c_attn.bias"] = torch.cat([sd[f"{h}attn.{n}.bias"] for n in qkv])
        for name in CONV1D:
            out[f"{h}{name}.weight"] = sd[f"{h}{name}.weight"].t()
            out[f"{h}{name}.bias"] = sd[f"{h}{name}.bias"]
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def import_hf(source, dropout=0.0, block_size=0):
    """A project-style checkpoint dict (model, model_config, empty masks, config) from HF GPT-2."""
    GPT2LMHeadModel = from_transformers("GPT2LMHeadModel")
    cfg = gpt_config(source, dropout, block_size)
    try:
        hf = GPT2LMHeadModel.from_pretrained(source).float()
    except Exception as e:
        raise UsageError(f"cannot load the GPT-2 weights of {source} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
    sd = from_hf_state(hf.state_dict(), cfg)
    return checkpoint_dict(sd, cfg, dict(init_from=str(source), sparsity=0.0, hf_source=str(source)))


def load_source(source, dropout=0.0, block_size=0):
    """What --init_from names, as a checkpoint dict: a project checkpoint (or out_dir) or an HF GPT-2
    (Hub name or folder), imported with empty masks."""
    if is_hf_source(source):
        return import_hf(source, dropout, block_size)
    check(os.path.exists(source), f"checkpoint not found: {source} (nor a Hugging Face GPT-2: "
          f"{', '.join(HUB_NAMES)} or a folder with config.json)")
    return load_checkpoint(source)


def load_any(source, **config):
    """(GPT, checkpoint dict) from what --init_from names (load_source); `config` overrides
    model_config fields as in checkpoint.build_model."""
    ckpt = load_source(source, config.get("dropout", 0.0), config.get("block_size", 0))
    return build_model(ckpt, source, **config), ckpt


# -----------------------------------------------------------------------------
# export


def tokenizer_files():
    """GPT-2's (vocab.bpe, encoder.json) as bytes: $SPDF_GPT2_BPE_DIR, then tiktoken's cache (or its
    download, which is where tiktoken itself gets them). None when neither is available."""
    folder = os.environ.get("SPDF_GPT2_BPE_DIR")
    if folder and (Path(folder) / "vocab.bpe").is_file() and (Path(folder) / "encoder.json").is_file():
        return (Path(folder) / "vocab.bpe").read_bytes(), (Path(folder) / "encoder.json").read_bytes()
    try:
        from tiktoken.load import read_file_cached
        base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
        return read_file_cached(base + "vocab.bpe"), read_file_cached(base + "encoder.json")
    except Exception:
        return None


def export(model, ckpt, out_dir, dtype="float32"):
    """Write `model` (and ckpt's soft prompt) as an HF GPT-2 folder; returns a summary dict (zeros,
    soft prompt, tokenizer). model, ckpt = load_any(path)."""
    from safetensors.torch import save_file
    GPT2Config = from_transformers("GPT2Config")
    import sparsity as sp
    cfg = model.config
    masks = ckpt.get("masks") or {}
    summary = dict(masks=len(masks))
    if masks:  # pruned entries are 0 in saved weights already; make sure
        sp.apply_masks(model, masks)
    sd = model.state_dict()
    summary["zeros"] = int(sum((sd[n] == 0).sum() for n in sp.sparsifiable(model)))
    summary["sparse_numel"] = int(sum(sd[n].numel() for n in sp.sparsifiable(model)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hc = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                    n_head=cfg.n_head, activation_function=GELU_TO_HF[cfg.activation], resid_pdrop=cfg.dropout,
                    embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, layer_norm_epsilon=1e-5,
                    tie_word_embeddings=True, **({"bos_token_id": 50256, "eos_token_id": 50256}
                                                if cfg.vocab_size == 50257 else {}),
                    architectures=["GPT2LMHeadModel"])
    hc.save_pretrained(out)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    tensors = {k: v.to(torch_dtype).clone() for k, v in to_hf_state(sd, cfg).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    prompt = ckpt.get("soft_prompt")
    summary["soft_prompt"] = 0 if prompt is None else int(prompt.shape[0])
    if prompt is not None:
        save_file({"soft_prompt": prompt.detach().float().cpu().contiguous()}, str(out / "soft_prompt.safetensors"))
    files = tokenizer_files() if cfg.vocab_size == 50257 else None
    summary["tokenizer"] = files is not None
    if files is not None:
        (out / "merges.txt").write_bytes(files[0])
        (out / "vocab.json").write_bytes(files[1])
        (out / "tokenizer_config.json").write_text(json.dumps(dict(
            tokenizer_class="GPT2Tokenizer", model_max_length=cfg.block_size, bos_token="<|endoftext|>",
            eos_token="<|endoftext|>", unk_token="<|endoftext|>", add_prefix_space=False), indent=1) + "\n")
    return summary


DEFAULTS = dict(ckpt="", out="", dtype="float32")


def main(argv):
    cfg, _ = parse_config(DEFAULTS, argv)
    check(cfg["ckpt"] and cfg["out"], "usage: python hf.py --ckpt=out/ckpt.pt --out=hf-out [--dtype=float32]")
    check(cfg["dtype"] in ("float32", "bfloat16", "float16"), f"--dtype must be float32, bfloat16 or float16, got {cfg['dtype']!r}")
    out = Path(cfg["out"])
    check_writable_dir(out, "--out")
    check(not (out / "model.safetensors").exists(), f"{out / 'model.safetensors'} exists: choose another --out")
    model, ckpt = load_any(cfg["ckpt"])
    s = export(model, ckpt, out, cfg["dtype"])
    print(f"wrote {out}/config.json, model.safetensors ({cfg['dtype']})"
          + (", vocab.json, merges.txt" if s["tokenizer"] else " (no tokenizer files: GPT-2's vocab.bpe/encoder.json "
             "not found; set TIKTOKEN_CACHE_DIR or SPDF_GPT2_BPE_DIR)"))
    print(f"block matrices: {s['zeros']:,} of {s['sparse_numel']:,} weights are zero ({s['zeros'] / s['sparse_numel']:.1%})"
          + (f"; the {s['masks']} masks are not written (weight == 0 recovers them)" if s["masks"] else ""))
    if s["soft_prompt"]:
        print(f"soft prompt ({s['soft_prompt']} vectors): {out}/soft_prompt.safetensors; GPT2LMHeadModel has no slot "
              "for it: pass inputs_embeds = cat([soft_prompt, wte(ids)]) (see README.md)")
    return s


if __name__ == "__main__":
    run_cli(main)

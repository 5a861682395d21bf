"""
Checkpoints: one format for every script, written atomically (a crash mid-save never destroys the previous
one) and read with weights_only=True (a checkpoint that would run code is refused). A checkpoint is a plain
dict of tensors and plain values:

  model          the GPT's state_dict (the tied head included, as state_dict() gives it)
  model_config   model.GPTConfig as a dict
  masks          parameter name -> bool tensor (True = kept); {} when dense
  config         the settings of the run that wrote it (its script's DEFAULTS plus overrides)
pretrain.py adds, for an exact resume: optimizer (optimizer.state_dict()'s numbering), iter_num,
  tokens_seen, flops_spent (SPDF's accounting), best_val_loss, rng (torch, cuda, data: one per rank)
related/sparsegpt.py --out writes the four keys only (no optimizer: a new run starts from it)
finetune.py adds: pretrain_sparsity, pretrain_config, finetune (its log), iter_num, best_val_loss,
  soft_prompt (N, n_embd) when it trained one
experiments/reproduce.py writes the no-pre-training control's initialization with pretrain_sparsity=0
Every writer builds its dict with checkpoint_dict(); pretrain_sparsity() and is_pretrain() are the readers.
"""
import os
import pickle
from dataclasses import asdict
from pathlib import Path

import torch

from common import UsageError, check, raise_write_error
from model import GPT, GPTConfig


def checkpoint_dict(state, model_config, config, masks=None, **extra):
    """The keys every checkpoint has, on the CPU: a state_dict, its GPTConfig, the writer's config and
    masks, plus the writer's own `extra` keys. Every script saves what this returns."""
    return dict(model={k: v.detach().cpu() for k, v in state.items()}, model_config=asdict(model_config),
                masks={n: m.cpu() for n, m in (masks or {}).items()}, config=config, **extra)


def pretrain_sparsity(ckpt):
    """The sparsity the checkpoint's weights were pre-trained at: a fine-tuned checkpoint records it, a
    pre-training (or SparseGPT) checkpoint holds it in its config; 0 for a dense or imported model."""
    if "pretrain_sparsity" in ckpt:
        return float(ckpt["pretrain_sparsity"])
    return float((ckpt.get("config") or {}).get("sparsity", 0.0))


def is_pretrain(ckpt):
    """Written by pretrain.py (resumable): it carries the optimizer and the run's counters."""
    return all(k in ckpt for k in ("optimizer", "iter_num", "tokens_seen", "flops_spent", "rng")) \
        and "finetune" not in ckpt


def save_checkpoint(obj, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:  # through a Python file: a full disk surfaces as its OSError
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # no half-written leftovers; the previous checkpoint is untouched
        raise_write_error(e, path, "checkpoint")
        raise


def load_checkpoint(path):
    """Load `path`, or `path/ckpt.pt` when given an out_dir. Tensors and plain values only
    (weights_only=True): a checkpoint that would run code is refused. Errors are one line."""
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    check(path.is_file(), f"checkpoint not found: {path}")
    import zipfile
    check(zipfile.is_zipfile(path), f"cannot read checkpoint {path}: not a file written by torch.save")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UsageError(f"refusing to load {path}: it holds objects other than tensors and plain values, "
                         "which could run code (only weights_only=True checkpoints are read)") from e
    except Exception as e:
        raise UsageError(f"cannot read checkpoint {path}: {type(e).__name__}") from e
    check(isinstance(ckpt, dict) and "model" in ckpt and "model_config" in ckpt,
          f"{path} is not an spdf checkpoint (no 'model'/'model_config')")
    try:  # every GPTConfig field: old checkpoints get today's defaults (the exact GELU they were trained with)
        ckpt["model_config"] = asdict(GPTConfig(**ckpt["model_config"]))
    except (TypeError, AssertionError) as e:
        raise UsageError(f"{path}: checkpoint does not match model.py ({type(e).__name__})") from e
    return ckpt


def load_weights(model, state, path):
    """model.load_state_dict(state), a mismatch reported as one line naming the checkpoint."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path}: weights do not match the model ({first[:200]})") from e


def build_model(ckpt, source, **config):
    """The GPT of a checkpoint dict (`source` names it in errors), on the CPU; `config` overrides
    model_config fields (e.g. dropout=0.1; a smaller block_size keeps the first rows of the position table)."""
    try:
        model = GPT(GPTConfig(**{**ckpt["model_config"], **config}))
    except (TypeError, ValueError, AssertionError) as e:
        raise UsageError(f"{source}: model_config does not match model.py ({type(e).__name__}: {e})") from e
    state, positions = ckpt["model"], ckpt["model_config"].get("block_size")
    if positions and model.config.block_size != positions:  # a shorter context than the checkpoint's
        check(model.config.block_size < positions,
              f"--block_size={model.config.block_size} exceeds {source}'s {positions} positions")
        state = {**state, "transformer.wpe.weight": state["transformer.wpe.weight"][:model.config.block_size]}
    load_weights(model, state, source)
    return model


def load_model(path, **config):
    """(GPT, checkpoint) from a checkpoint or an out_dir (a Hugging Face GPT-2 too: hf.load_any)."""
    ckpt = load_checkpoint(path)
    return build_model(ckpt, path, **config), ckpt


def check_pretrain_checkpoint(ckpt, path):
    """A checkpoint that --init_from=resume can continue: written by pretrain.py, not finetune.py."""
    missing = [k for k in ("optimizer", "config", "iter_num", "tokens_seen", "flops_spent", "rng", "masks")
               if k not in ckpt]
    check(not missing and isinstance(ckpt["config"], dict) and "model" in ckpt["config"] and is_pretrain(ckpt),
          f"{path} is not a pre-training checkpoint (a fine-tuned one?): it cannot be resumed by pretrain.py")

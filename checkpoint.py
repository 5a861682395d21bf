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
The last section is pre-training's resume policy: how an extended run keeps its schedule, its log cut back
to the checkpoint, its RNG states restored.
"""
import json
import os
import pickle
from dataclasses import asdict
from pathlib import Path

import torch

from common import UsageError, check, raise_write_error, write_output
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
    """Written by pretrain.py (resumable): it carries the optimizer, the run's counters, config and masks."""
    return all(k in ckpt for k in ("optimizer", "config", "iter_num", "tokens_seen", "flops_spent", "rng", "masks")) \
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
    check(is_pretrain(ckpt) and isinstance(ckpt["config"], dict) and "model" in ckpt["config"],
          f"{path} is not a pre-training checkpoint (a fine-tuned one?): it cannot be resumed by pretrain.py")


# -----------------------------------------------------------------------------
# resuming a pre-training run: its schedule, its log and its RNG states


def resume_schedule(saved, overrides, iter_num):
    """How a resumed pre-training run continues: (config changes, message or None, finished).
    The run's LR schedule is kept: when --max_iters changes (an "extend"), a cosine decay that ran
    over max_iters stays pinned to the old length (then the LR stays at its floor) and a fractional
    --densify_at stays at its iteration, unless --lr_decay_iters / --densify_at are given too."""
    old = saved["max_iters"]
    new = overrides.get("max_iters", old)
    check(new >= iter_num, f"--max_iters={new} is below the checkpoint's iteration {iter_num}: a run cannot go back")
    if new == iter_num:
        return {}, (f"the run finished at iteration {iter_num} (--max_iters={old}): nothing to do; "
                    f"pass --max_iters=N with N > {iter_num} to extend it"), True
    if new == old:
        return {}, None, False
    changes = {}
    if "lr_decay_iters" not in overrides and not saved.get("lr_decay_iters"):
        changes["lr_decay_iters"] = old
    densify_at = saved.get("densify_at", 0.0)
    if "densify_at" not in overrides and 0 < densify_at < 1:
        changes["densify_at"] = float(max(1, round(densify_at * old)))
    decay = overrides.get("lr_decay_iters") or changes.get("lr_decay_iters") or saved.get("lr_decay_iters") or new
    note = (f"{'extending' if new > old else 'shortening'} the run from {old} to {new} iterations; the learning "
            f"rate keeps its schedule: cosine decay until iteration {decay}"
            + (", then constant at its floor" if decay < new else "")
            + ("" if "lr_decay_iters" in overrides else f" (pass --lr_decay_iters={new} to stretch the decay instead)"))
    if "densify_at" in changes:
        note += f"; dense from iteration {int(changes['densify_at'])} as before"
    return changes, note, False


def trim_log(log_path, iter_num):
    """Cut a log.jsonl back to the records of iterations <= iter_num (the checkpoint's), so a resumed
    run logs every iteration exactly once. A torn last line (a kill mid-write) goes too."""
    log_path = Path(log_path)
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("iter"), int) and record["iter"] <= iter_num:
            kept.append(line + "\n")
    write_output(log_path, "".join(kept))


def restore_progress(ckpt, rank, device, data_gen):
    """(iter_num, tokens_seen, flops_spent, best_val_loss), and the RNG states, of a resumed run."""
    if ckpt is None:
        return 0, 0, 0.0, float("inf")
    torch.set_rng_state(ckpt["rng"]["torch"])
    data_gen.set_state(ckpt["rng"]["data"][rank] if rank < len(ckpt["rng"]["data"]) else data_gen.get_state())
    if device.startswith("cuda") and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
    return ckpt["iter_num"], ckpt["tokens_seen"], ckpt["flops_spent"], ckpt.get("best_val_loss", float("inf"))

"""
Soft prompts (MediSwift; Lester et al. 2021 prompt tuning): N learned input vectors before every
sequence, initialized from the embeddings of N distinct tokens sampled from ids < 5000 (the "sampled
vocabulary" init). finetune.py --soft_prompt=N trains them (with --freeze_model=True, alone); the model
takes them through its prefix_embeds hook.
"""
import torch

from common import check


def init_soft_prompt(model, n, seed):
    """n distinct token embeddings sampled from ids < 5000 (frequent/early BPE tokens), copied."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(min(5000, model.config.vocab_size), generator=g)[:n]
    return model.transformer.wte.weight.detach()[ids.to(model.transformer.wte.weight.device)].clone()


def setup_soft_prompt(cfg, model, ckpt):
    """The soft prompt to use (a trainable Parameter) or None: the checkpoint's if it holds one
    (eval_only, or continued training at the same length), else a new one of --soft_prompt vectors."""
    n, saved = cfg["soft_prompt"], ckpt.get("soft_prompt")
    device = model.transformer.wte.weight.device
    if saved is not None:
        check(n == len(saved) or (n == 0 and cfg["eval_only"]),
              f"{cfg['init_from']} holds a soft prompt of {len(saved)} vectors: pass --soft_prompt={len(saved)}")
        check(saved.shape[1] == model.config.n_embd, f"{cfg['init_from']}: soft prompt width does not match the model")
        cfg["soft_prompt"] = n = len(saved)
    elif n:
        check(not cfg["eval_only"], f"--eval_only: {cfg['init_from']} holds no trained soft prompt")
    if not n:
        return None
    check(n + 2 <= model.config.block_size, f"--soft_prompt={n} leaves no room in block_size {model.config.block_size}")
    init = saved if saved is not None else init_soft_prompt(model, n, cfg["seed"])
    return torch.nn.Parameter(init.to(device=device, dtype=torch.float32).clone())

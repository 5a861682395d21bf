"""
Static unstructured sparsity, as in SPDF (paper §2.2, supplement A.1).

- Which weights: the six matrices of every block (Q, K, V, attention output, MLP in, MLP out).
  Embeddings, LM head, LayerNorms and biases stay dense. `sparsifiable()` is the one place
  that decides; change it to change the selection.
- Masks: bool tensors, True = kept, one per selected parameter, keyed by parameter name. The
  `random` method zeroes exactly round(s * numel) entries of every matrix, from a generator
  seeded by (seed, parameter name): every DDP rank, every resume and every device agrees.
- The invariant: masked weights are exactly 0 for the whole run. Every training loop steps with
  `optimizer_step`: mask the gradients, clip, AdamW, re-mask (`mask_grads` before the step,
  `apply_masks` after it); `mask_optimizer_state` clears Adam moments whenever masks are
  (re)installed, so momentum, weight decay or a stale moment can never revive a pruned weight.
- Dense fine-tuning just drops the masks: pruned weights are already 0 and simply start to learn.
"""
import zlib
from concurrent.futures import ThreadPoolExecutor

import torch

# the six matrices of every block, as module names inside a block; the paper's W_Q, W_K, W_V,
# W_D (attention output), W_I and W_O (MLP in and out)
SPARSE_MATRICES = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def sparsifiable(model):
    """Names of the parameters SPDF sparsifies: the six matrices of each transformer block."""
    suffixes = tuple(f"{m}.weight" for m in SPARSE_MATRICES)
    return [name for name, _ in model.named_parameters()
            if name.startswith("transformer.h.") and name.endswith(suffixes)]


def _generator(seed, name):
    # crc32 of the name, not hash(): Python salts str hashes per process
    g = torch.Generator(device="cpu")
    g.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return g


def random_mask(weight, sparsity, seed, name, **_):
    """Exactly round(sparsity * numel) zeros at positions drawn uniformly at random."""
    n = weight.numel()
    perm = torch.randperm(n, generator=_generator(seed, name))
    mask = torch.ones(n, dtype=torch.bool)
    mask[perm[: round(sparsity * n)]] = False
    return mask.view(weight.shape)


def magnitude_mask(weight, sparsity, **_):
    """Keep the largest-|w| entries of the matrix, zero exactly round(sparsity * numel)."""
    n = weight.numel()
    order = weight.detach().float().abs().flatten().cpu().argsort()
    mask = torch.ones(n, dtype=torch.bool)
    mask[order[: round(sparsity * n)]] = False
    return mask.view(weight.shape)


# pluggable: name -> fn(weight, sparsity, seed=, name=) returning a bool mask (True = kept)
MASK_METHODS = {"random": random_mask, "magnitude": magnitude_mask}


def make_masks(model, sparsity, method="random", seed=0, names=None):
    """One mask per sparsifiable parameter (or per name in `names`), built on the CPU."""
    assert 0.0 <= sparsity < 1.0, "sparsity must be in [0, 1)"
    params = dict(model.named_parameters())
    fn = MASK_METHODS[method]
    names = list(names if names is not None else sparsifiable(model))
    # a thread per core: randperm and argsort release the GIL, and each mask has its own generator, so
    # the masks are the same as one by one (GPT-3 XL's 144 matrices, 2 cores: 45 s -> 26 s)
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        return dict(zip(names, pool.map(lambda name: fn(params[name], sparsity, seed=seed, name=name), names)))


def masks_to(masks, device):
    return {name: m.to(device) for name, m in masks.items()}


def _pairs(model, masks):
    params = dict(model.named_parameters())
    return [params[name] for name in masks], list(masks.values())


@torch.no_grad()
def apply_masks(model, masks):
    """Zero the pruned weights (after init, after every optimizer step)."""
    if masks:
        weights, ms = _pairs(model, masks)
        torch._foreach_mul_(weights, ms)


@torch.no_grad()
def mask_grads(model, masks):
    """Zero the gradients of pruned weights, so Adam moments there stay 0."""
    if masks:
        weights, ms = _pairs(model, masks)
        pairs = [(w.grad, m) for w, m in zip(weights, ms) if w.grad is not None]
        if pairs:  # one fused multi-tensor kernel instead of one launch per matrix
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])


@torch.no_grad()
def mask_optimizer_state(optimizer, model, masks):
    """Zero every optimizer-state tensor shaped like a masked weight (Adam's two moments)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        for value in optimizer.state.get(params[name], {}).values():
            if torch.is_tensor(value) and value.shape == mask.shape:
                value.mul_(mask)


def optimizer_step(optimizer, model, masks, grad_clip, params=None, phase=None):
    """
    SPDF's optimizer step, the one every loop takes: mask the gradients (Adam's moments at pruned
    entries stay 0), clip `params` (default: the model's), AdamW, re-mask (AdamW's decoupled weight
    decay touches every entry), zero the gradients. Returns the gradient norm before clipping (computed
    even when grad_clip <= 0, which clips nothing), for the caller's divergence check.
    phase(name, fn) may wrap each part and must return fn's result (bench.py times them).
    """
    phase = phase or (lambda name, fn: fn())
    phase("mask gradients", lambda: mask_grads(model, masks))
    params = model.parameters() if params is None else params
    limit = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = phase("clip", lambda: torch.nn.utils.clip_grad_norm_(params, limit))
    phase("AdamW", optimizer.step)
    phase("re-mask", lambda: apply_masks(model, masks))
    phase("zero_grad", lambda: optimizer.zero_grad(set_to_none=True))
    return grad_norm


def check_masked(model, masks):
    """True if every pruned weight is exactly 0 (under FSDP: in this rank's shards, masks sharded alike)."""
    params = dict(model.named_parameters())
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this rank
    return all(not local(params[n].detach())[~local(m).to(params[n].device)].any() for n, m in masks.items())


def report(model, masks):
    """Per-matrix and overall sparsity, as a dict and as printable lines."""
    params = dict(model.named_parameters())
    rows = []
    for name, mask in masks.items():
        rows.append((name, mask.numel(), int((~mask).sum())))
    pruned = sum(r[2] for r in rows)
    sparsifiable_total = sum(params[n].numel() for n in sparsifiable(model))
    total = sum(p.numel() for p in model.parameters())
    summary = dict(
        pruned=pruned, total_params=total, sparsifiable_params=sparsifiable_total,
        of_sparsifiable=pruned / sparsifiable_total if sparsifiable_total else 0.0,
        of_all=pruned / total,
        per_matrix={name: zeros / numel for name, numel, zeros in rows},
    )
    lines = [f"{name:42s} {numel:>12,d} {zeros / numel:7.2%}" for name, numel, zeros in rows]
    lines.append(f"pruned {pruned:,} = {summary['of_sparsifiable']:.2%} of sparsifiable, "
                 f"{summary['of_all']:.2%} of all {total:,} parameters")
    return summary, lines

"""
SAT-style neuron omission: compute only the important MLP channels and attention heads during
continued pre-training, by slicing the weights (a real saving, not a mask).

"SAT-style", not SAT: Sparsity-Accelerated Training (Ma et al., Findings of ACL 2024) omits
unimportant heads and MLP channels with a "ladder omission rate scheduler", but its importance
metric, selection rule and schedule are not public. Our choices, each a guess:

- importance: an exponential moving average (momentum 0.9) of the mean |GELU output| of each MLP
  channel, and of the mean L2 norm of each head's attention output (before the output projection),
  observed in training forwards. Omitted units keep their last value, so a kept unit whose
  importance falls below theirs hands its place back: selection is not one-way.
- selection: per layer, the top ceil((1 - r) * N) units by importance, re-chosen every step.
  No rescaling of the kept outputs. Until a layer has been observed once it runs dense.
- compute: F.linear with the kept rows of the input projections (c_fc; q/k/v) and the kept columns
  of the output projections (c_proj), so forward and backward FLOPs shrink by the omitted share;
  omitted units get exactly zero gradient (AdamW still decays their moments and weights).
- ladder schedule: the run is cut into equal rungs with rates omit_rate * multipliers, the last
  rung 0 (dense), so training ends on the full model. Default multipliers: 1, 2/3, 1/3, 0.
- only in training mode: evaluation and generation run the dense model.

Install with `Omitter(model)` (it patches the forwards of the blocks' attn and mlp modules; the
weights and state_dict are untouched) and call `set_rate(r)` before each step (pretrain.py:
`step(iter_num, cfg)`, which follows --omit_rate and --omit_schedule).
`python -m related.omission --bench` measures a training step's time and FLOPs against dense.
"""
import math
import time

import torch
import torch.nn.functional as F

from common import check, parse_config, run_cli

LADDER = (1.0, 2 / 3, 1 / 3, 0.0)


def parse_schedule(spec):
    """'ladder' or comma-separated rate multipliers, one per equal-length rung, ending in 0."""
    if spec == "ladder":
        return LADDER
    try:
        rungs = tuple(float(v) for v in spec.split(","))
    except ValueError:
        rungs = ()
    check(rungs, f"--omit_schedule must be 'ladder' or comma-separated numbers, got {spec!r}")
    check(all(0.0 <= r <= 1.0 for r in rungs) and rungs[-1] == 0.0,
          f"--omit_schedule multipliers must lie in [0, 1] and end in 0, got {spec!r}")
    return rungs


def validate(cfg):
    """pretrain.py's omission settings."""
    check(0.0 <= cfg["omit_rate"] < 1.0, f"--omit_rate must be in [0, 1), got {cfg['omit_rate']}")
    check(not (cfg["omit_rate"] and cfg["compile"]), "--omit_rate does not work with --compile")
    check(not (cfg["omit_rate"] and cfg["fsdp"]), "--omit_rate does not work with --fsdp")
    check(not (cfg["omit_rate"] and cfg["activation_checkpointing"]),  # the recompute would observe twice
          "--omit_rate does not work with --activation_checkpointing")
    parse_schedule(cfg["omit_schedule"])


def rate_at(it, max_iters, omit_rate, rungs):
    """The omission rate of iteration `it`: the rung it falls in, times omit_rate."""
    rung = min(len(rungs) - 1, it * len(rungs) // max(1, max_iters))
    return omit_rate * rungs[rung]


class Omitter:

    def __init__(self, model, heads=True, momentum=0.9):
        self.model, self.heads, self.momentum = model, heads, momentum
        blocks = model.transformer.h
        self.n_head = model.config.n_head
        self.mlp_imp = [None] * len(blocks)   # per layer: importance of each MLP channel
        self.head_imp = [None] * len(blocks)  # per layer: importance of each head
        self.mlp_keep = [None] * len(blocks)  # per layer: sorted kept indices, None = all
        self.head_keep = [None] * len(blocks)
        self.rate = 0.0
        for i, block in enumerate(blocks):
            block.mlp.forward = self._mlp_forward(i, block.mlp)
            if heads:
                block.attn.forward = self._attn_forward(i, block.attn, block.attn.forward)

    def set_rate(self, rate):
        """Choose each layer's kept units for the next step (dense where nothing is observed yet)."""
        self.rate = rate
        top = lambda imp: None if imp is None or rate == 0 else \
            imp.topk(math.ceil((1 - rate) * imp.numel())).indices.sort().values
        self.mlp_keep = [top(imp) for imp in self.mlp_imp]
        self.head_keep = [top(imp) for imp in self.head_imp] if self.heads else self.head_keep

    def step(self, it, cfg):
        """The rate of pre-training iteration `it` under cfg's omit_rate, omit_schedule and max_iters."""
        self.set_rate(rate_at(it, cfg["max_iters"], cfg["omit_rate"], parse_schedule(cfg["omit_schedule"])))

    def kept_fraction(self):
        """(MLP channels kept, heads kept), as fractions averaged over layers."""
        def frac(keeps, n):
            return sum(n if k is None else k.numel() for k in keeps) / (n * len(keeps))
        return frac(self.mlp_keep, 4 * self.model.config.n_embd), frac(self.head_keep, self.n_head)

    def _observe(self, store, i, keep, value):
        with torch.no_grad():
            if store[i] is None:
                store[i] = value.float().clone()
            elif keep is None:
                store[i].mul_(self.momentum).add_(value.float(), alpha=1 - self.momentum)
            else:  # omitted units keep their last importance
                store[i][keep] = self.momentum * store[i][keep] + (1 - self.momentum) * value.float()

    def _mlp_forward(self, i, mlp):
        def forward(x):
            keep = self.mlp_keep[i] if mlp.training else None
            if keep is None:
                h = mlp.act(mlp.c_fc(x))
                out = mlp.c_proj(h)
            else:  # only the kept channels: rows of c_fc, columns of c_proj
                h = mlp.act(F.linear(x, mlp.c_fc.weight[keep], mlp.c_fc.bias[keep]))
                out = F.linear(h, mlp.c_proj.weight[:, keep], mlp.c_proj.bias)
            if mlp.training:
                self._observe(self.mlp_imp, i, keep, h.detach().abs().flatten(0, -2).mean(0))
            return mlp.dropout(out)
        return forward

    def _attn_forward(self, i, attn, dense_forward):
        def forward(x, kv_cache=None):
            if not attn.training or kv_cache is not None:
                return dense_forward(x, kv_cache)
            keep = self.head_keep[i]
            B, T, C = x.shape
            hd = C // self.n_head
            nh = self.n_head if keep is None else keep.numel()
            if keep is None:
                proj = lambda lin: lin(x)
            else:  # rows of q/k/v (and columns of the output projection) of the kept heads
                rows = (keep.unsqueeze(1) * hd + torch.arange(hd, device=keep.device)).flatten()
                proj = lambda lin: F.linear(x, lin.weight[rows], lin.bias[rows])
            heads = lambda t: t.view(B, T, nh, hd).transpose(1, 2)
            q, k, v = heads(proj(attn.q_proj)), heads(proj(attn.k_proj)), heads(proj(attn.v_proj))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=attn.dropout)
            self._observe(self.head_imp, i, keep, y.detach().float().norm(dim=-1).mean(dim=(0, 2)))
            y = y.transpose(1, 2).contiguous().view(B, T, nh * hd)
            if keep is None:
                out = attn.c_proj(y)
            else:
                out = F.linear(y, attn.c_proj.weight[:, rows], attn.c_proj.bias)
            return attn.resid_dropout(out)
        return forward

    def saved_train_flops(self, seq_len, sparsity=0.0):
        """Training FLOPs per sequence that this step's omission saves, in flops.py's accounting."""
        cfg, S = self.model.config, seq_len
        d, hd = cfg.n_embd, cfg.n_embd // cfg.n_head
        saved = 0.0
        for mk, hk in zip(self.mlp_keep, self.head_keep):
            if mk is not None:  # c_fc and c_proj: 2 * S * d per channel each
                saved += 2 * 2 * S * d * (4 * d - mk.numel()) * (1 - sparsity)
            if hk is not None:  # q, k, v, out: 2 * S * d * hd per head each; scores and AV are dense
                gone = self.n_head - hk.numel()
                saved += gone * (4 * 2 * S * d * hd * (1 - sparsity) + 4 * S * S * hd + 3 * S * S)
        return 3 * saved


# -----------------------------------------------------------------------------
# benchmark: a training step (forward, backward, AdamW) of the whole GPT, dense against omission

BENCH = dict(bench=False,  # required: the benchmark is this file's only command
             model="mini", batch_size=4, block_size=256, rates="0.25,0.5,0.75", iters=6, threads=0, seed=0,
             parts="model,blocks")  # whole model and/or the transformer blocks alone


def _loss(model, x, y, blocks_only):
    if not blocks_only:
        return model(x, y)[1]
    h = x  # the transformer blocks alone, on hidden states: the part omission acts on
    for block in model.transformer.h:
        h = block(h)
    return h.float().pow(2).mean()


def train_step_flops(model, x, y, blocks_only=False):
    """FLOPs of one forward + backward, counted by torch (not timed)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        _loss(model, x, y, blocks_only).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main(argv):
    from dataclasses import replace

    from model import GPT, PRESETS
    cfg, _ = parse_config(BENCH, argv)
    check(cfg["bench"], "usage: python -m related.omission --bench [--model=mini --batch_size=4 --block_size=256 "
          "--rates=0.25,0.5,0.75 --iters=6 --threads=0 --parts=model,blocks]")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    mcfg = replace(PRESETS[cfg["model"]], block_size=cfg["block_size"])
    model = GPT(mcfg)
    model.train()
    omitter = Omitter(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B, T = cfg["batch_size"], cfg["block_size"]
    tokens = torch.randint(mcfg.vocab_size, (2, B, T))
    hidden = torch.randn(B, T, mcfg.n_embd)
    rates = [0.0] + [float(r) for r in cfg["rates"].split(",")]
    print(f"SAT-style omission, {cfg['model']} training step (fwd+bwd+AdamW), batch {B} x {T} tokens, "
          f"{torch.get_num_threads()} threads, median of {cfg['iters']} interleaved steps")
    results = {}
    for part, blocks_only in (("whole model", False), ("blocks only", True)):
        if ("blocks" if blocks_only else "model") not in cfg["parts"].split(","):
            continue
        x, y = (hidden, None) if blocks_only else (tokens[0], tokens[1])

        def step():
            _loss(model, x, y, blocks_only).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        omitter.set_rate(0.0)
        step()  # a dense step: observes importance, warms up the allocator
        times, flops = {r: [] for r in rates}, {}
        for r in rates:
            omitter.set_rate(r)
            flops[r] = train_step_flops(model, x, y, blocks_only)
            step()
        for _ in range(cfg["iters"]):  # interleaved, so load changes hit every rate alike
            for r in rates:
                omitter.set_rate(r)
                t0 = time.perf_counter()
                step()
                times[r].append(time.perf_counter() - t0)
        med = {r: sorted(t)[len(t) // 2] for r, t in times.items()}
        print(f"\n{part}:\n{'omit_rate':>9s} {'step ms':>9s} {'speedup':>8s} {'fwd+bwd FLOPs':>14s} {'FLOP ratio':>10s}")
        for r in rates:
            print(f"{r:9.2f} {1000 * med[r]:9.1f} {med[0.0] / med[r]:7.2f}x {flops[r]:14.4g} "
                  f"{flops[0.0] / flops[r]:9.2f}x")
        results[part] = (med, flops)
    return results


if __name__ == "__main__":
    run_cli(main)

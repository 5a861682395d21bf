"""
A GPT in the nanoGPT manner: learned positions, pre-LayerNorm blocks, causal SDPA attention,
GELU MLP of width 4d (exact, or GPT-2's tanh approximation), LM head tied to the token embedding, biases everywhere but the head.

The model is plain and dense. Sparsity lives in sparsity.py as masks over the six block
matrices, which are separate nn.Linear modules here (q, k, v, attention output, MLP in, MLP
out) so that each one carries its own mask and can be swapped for a sparse kernel.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257  # GPT-2 BPE
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    # "gelu": exact erf GELU (the default: checkpoints saved before this field behave as before);
    # "gelu_tanh": the tanh approximation OpenAI's GPT-2 was trained with (HF's "gelu_new")
    activation: str = "gelu"

    def __post_init__(self):
        assert self.activation in ACTIVATIONS, f"unknown activation {self.activation!r}"


ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}  # -> F.gelu's `approximate`

PRESETS = {
    # CPU toys: embedding-dominated but real GPTs with the GPT-2 vocabulary; exact GELU
    "tiny": GPTConfig(block_size=128, n_layer=2, n_head=4, n_embd=128),
    "mini": GPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384),
    # the CPU reproduction's: 4 blocks hold 16 % of the parameters (tiny's 2 hold 6 %), so block
    # sparsity can show in the loss, while a 2-core CPU still pre-trains it in minutes
    "cpu": GPTConfig(block_size=128, n_layer=4, n_head=6, n_embd=192),
    # the paper's two models (supplement Table 1), trained from scratch: exact GELU, as the Cerebras
    # reference configs (nonlinearity "gelu"); 2048 positions
    "gpt2-small": GPTConfig(block_size=2048, n_layer=12, n_head=12, n_embd=768),
    "gpt3-xl": GPTConfig(block_size=2048, n_layer=24, n_head=16, n_embd=2048),
    # OpenAI's GPT-2 shapes (1024 positions, tanh GELU) are not presets: --init_from=gpt2 (hf.py)
    # takes shape, activation and weights from the released checkpoint
}


def preset_config(name, block_size=0, dropout=0.0):
    """A copy of PRESETS[name] with its context (0 = the preset's) and dropout set."""
    preset = PRESETS[name]
    return GPTConfig(**{**asdict(preset), "dropout": dropout, "block_size": block_size or preset.block_size})


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        d = config.n_embd
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.c_proj = nn.Linear(d, d)
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache=None):
        B, T, C = x.shape
        heads = lambda t: t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if kv_cache is not None:  # generation: attend to the cached keys/values of earlier tokens
            k, v = extend_kv_cache(kv_cache, k, v)
        # a single new token may see every cached one; otherwise causal within the chunk
        causal = T > 1 and (kv_cache is None or k.size(2) == T)
        assert T == 1 or causal, "the KV cache takes the prompt once, then one token at a time"
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def extend_kv_cache(cache, k, v):
    """A layer's cache is [keys, values, n]: buffers (B, n_head, capacity, head size) whose first n positions
    are filled. Writes this step's k and v (B, n_head, T, head size) after them and returns the filled part.
    The buffers double when full, so a generated token costs a write of its own k and v, where torch.cat
    would copy the whole cache every token (quadratic in the sequence's length)."""
    n, T = cache[2], k.size(2)
    if cache[0] is None or n + T > cache[0].size(2):
        for i, new in enumerate((k, v)):
            grown = new.new_empty(*new.shape[:2], max(2 * n, n + T), new.size(3))
            if n:
                grown[:, :, :n] = cache[i][:, :, :n]
            cache[i] = grown
    cache[0][:, :, n:n + T], cache[1][:, :, n:n + T] = k, v
    cache[2] = n + T
    return cache[0][:, :, :n + T], cache[1][:, :, :n + T]


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = ACTIVATIONS[config.activation]

    def act(self, h):
        return F.gelu(h, approximate=self.approximate)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        return x + self.mlp(self.ln_2(x))


class HeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the LM head's logits x @ weight.T over the targets, its gradients computed
    in the same pass, 1024 tokens at a time. On a CPU this takes a gpt2-small step's head from 1.8-1.9
    to 1.4-1.6 s (results/cpu_training/shared_parts.py): the logits come out transposed (weight @ x.T,
    which MKL runs 1.5x faster), are soft-maxed in place, and are never kept for backward."""
    CHUNK = 1024

    @staticmethod
    def forward(ctx, x, weight, targets):  # x (N, C), weight (vocab, C), targets (N,)
        n, chunk = x.size(0), HeadCrossEntropy.CHUNK
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dw = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        loss = torch.zeros((), dtype=torch.float32)
        for s in range(0, n, chunk):
            xc, tc = x[s:s + chunk], targets[s:s + chunk]
            cols = torch.arange(len(tc))
            logits = weight @ xc.T  # (vocab, chunk)
            top, picked = logits.amax(0), logits[tc, cols]
            probs = logits.sub_(top).exp_()
            total = probs.sum(0)
            loss += (top + total.log() - picked).sum()
            probs.mul_(1 / (total * n))  # d(mean loss)/d(logits) = (softmax - one_hot(target)) / n
            probs[tc, cols] -= 1 / n
            if dx is not None:
                torch.mm(probs.T, weight, out=dx[s:s + chunk])
            if dw is not None:
                dw.addmm_(probs, xc)
        ctx.save_for_backward(dx, dw)
        return loss / n

    @staticmethod
    def backward(ctx, grad):
        # loss.backward() passes exactly 1: no 150 MB multiply then (gradient accumulation passes 1/steps)
        one = grad.item() == 1
        scale = lambda g: g if g is None or one else g * grad
        dx, dw = ctx.saved_tensors
        return scale(dx), scale(dw), None


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied
        # training only: keep each block's input, recompute its activations in backward (less memory)
        self.activation_checkpointing = False
        self.apply(self._init_weights)
        # GPT-2: residual output projections scaled by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def forward(self, idx, targets=None, kv_caches=None, pos_offset=0, prefix_embeds=None, positions=None):
        """
        idx (B, T) token ids. With targets, also returns the mean cross-entropy over all positions
        (finetune.completion_loss counts completion tokens only); when that loss will be backpropagated
        in fp32 on a CPU, the logits are not kept and None stands in their place (HeadCrossEntropy).
        kv_caches: one [k, v, n] list per layer, filled in place during generation; pos_offset is the
        number of positions already cached.
        prefix_embeds (B or 1, N, n_embd): a soft prompt (finetune.py), N vectors that take
        positions pos_offset.. before the tokens; logits (and loss) cover the T tokens only.
        positions (B, T) bool, without targets: logits (K, vocab) at the K True positions only; the
        LM head is most of a small model's compute, so fine-tuning skips it where no loss is taken.
        """
        B, T = idx.shape
        N = 0 if prefix_embeds is None else prefix_embeds.size(1)
        assert pos_offset + N + T <= self.config.block_size, "sequence longer than block_size"
        pos = torch.arange(pos_offset, pos_offset + N + T, device=idx.device)
        x = self.transformer.wte(idx)
        if N:
            x = torch.cat([prefix_embeds.to(x.dtype).expand(B, -1, -1), x], dim=1)
        x = self.transformer.drop(x + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            if self.activation_checkpointing and self.training and kv_caches is None:
                x = checkpoint(block, x, use_reentrant=False)  # replays dropout with the same RNG state
            else:
                x = block(x, None if kv_caches is None else kv_caches[i])
        x = self.transformer.ln_f(x[:, N:])
        if positions is not None:
            x = x[positions]
        if targets is None:
            return self.lm_head(x), None
        if x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled():  # CUDA: fused bf16
            return None, HeadCrossEntropy.apply(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1))
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="none")
        return logits, loss.mean()

    def new_kv_caches(self):
        return [[None, None, 0] for _ in range(self.config.n_layer)]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, eos_token=None, prefix_embeds=None):
        """Sample continuations of idx (B, T), using a KV cache. temperature 0 is greedy."""
        caches = self.new_kv_caches()
        logits, _ = self(idx, kv_caches=caches, prefix_embeds=prefix_embeds)
        N = 0 if prefix_embeds is None else prefix_embeds.size(1)  # cached prompt positions
        for _ in range(max_new_tokens):
            if N + idx.size(1) >= self.config.block_size:
                break
            logits = logits[:, -1, :].float()
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                next_token = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, next_token), dim=1)
            if eos_token is not None and (next_token == eos_token).all():
                break
            logits, _ = self(next_token, kv_caches=caches, pos_offset=N + idx.size(1) - 1)
        return idx


# the paper's AdamW (supplement A.1); pretrain.py exposes each as an option, bench.py times it as is
ADAMW = dict(weight_decay=0.1, beta1=0.9, beta2=0.999, eps=1e-8)


def decay_groups(model, weight_decay):
    """AdamW parameter groups: decay on trainable matrices only (biases and LayerNorms get none). A
    sparse_kernels.SparseLinear's `values` are a matrix's kept weights: they decay, in the matrix's place."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    matrix = lambda n, p: p.dim() >= 2 or n.endswith(".values")
    return [dict(params=[p for n, p in named if matrix(n, p)], weight_decay=weight_decay),
            dict(params=[p for n, p in named if not matrix(n, p)], weight_decay=0.0)]


def configure_optimizer(model, cfg, device):
    """AdamW with cfg's learning_rate, weight_decay, beta1, beta2, eps; decay on matrices only."""
    return torch.optim.AdamW(decay_groups(model, cfg["weight_decay"]), lr=cfg["learning_rate"],
                             betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"], fused=fused_adamw(device))


def fused_adamw(device):
    """torch's fused AdamW: one kernel over all parameters, where torch has one. On a CPU it updates
    gpt2-small's 124 M parameters 7x faster than the per-tensor default (shared_parts.py)."""
    return torch.device(device).type in ("cpu", "cuda", "mps")


# the learning-rate schedules of the two loops: pre-training's cosine, fine-tuning's linear (LoRA's)
def cosine_lr(it, max_lr, warmup_iters, decay_iters, min_lr_ratio=0.1):
    """Linear warm-up, then cosine decay to min_lr_ratio * max_lr (the paper: 10% of peak)."""
    if it < warmup_iters:
        return max_lr * (it + 1) / warmup_iters
    if it >= decay_iters:
        return max_lr * min_lr_ratio
    progress = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return max_lr * (min_lr_ratio + coeff * (1.0 - min_lr_ratio))


def linear_lr(it, max_lr, warmup_iters, total_iters):
    """Linear warm-up, then linear decay to 0 at total_iters (the fine-tuning schedule)."""
    if it < warmup_iters:
        return max_lr * (it + 1) / warmup_iters
    return max_lr * max(0.0, (total_iters - it) / max(1, total_iters - warmup_iters))

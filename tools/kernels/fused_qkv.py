"""
What q, k and v as one product would save in generation: GPT-2 Small with SparseLinear, one token per step,
the model as it is (three 768-row products per layer) against a copy whose attention runs one 2,304-row
SparseLinear over the three patterns stacked (same weights, same outputs), interleaved, best of --repeats.
An experiment, not the model: on Zen 4 it changed a step by +1.8 % and -2.2 % (results/kernels/fused_qkv_zen4.txt,
within the noise), so model.py keeps the paper's three matrices. Run from the repository root:

    python -m tools.kernels.fused_qkv [--sparsity 0.75] [--threads 2] [--tokens 48] [--repeats 7]
"""
import copy
import types

import torch
import torch.nn.functional as F

from model import extend_kv_cache
from sparse_kernels import SparseLinear, to_sparse_model
from tools.kernel_bench import cpu_model
from tools.kernels.in_model import decode_arguments, decode_ms, masked_gpt2_small


def fused_forward(self, x, kv_cache):
    """CausalSelfAttention.forward for generation (a KV cache, no dropout) with self.qkv in place of q/k/v_proj."""
    B, T, C = x.shape
    heads = lambda t: t.reshape(B, T, self.n_head, C // self.n_head).transpose(1, 2)
    q, k, v = (heads(t) for t in self.qkv(x).split(C, dim=-1))
    k, v = extend_kv_cache(kv_cache, k, v)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1 and k.size(2) == T)
    return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


def fuse(model):
    """A copy of a SparseLinear GPT whose attention runs q, k, v as one product."""
    model = copy.deepcopy(model)
    for block in model.transformer.h:
        a = block.attn
        parts = (a.q_proj, a.k_proj, a.v_proj)
        stacked = torch.nn.Linear(a.q_proj.in_features, 3 * a.q_proj.out_features)
        with torch.no_grad():
            stacked.weight.copy_(torch.cat([p.dense_weight() for p in parts]))
            stacked.bias.copy_(torch.cat([p.bias for p in parts]))
        mask = torch.cat([p.dense_weight() != 0 for p in parts])
        a.qkv = SparseLinear.from_linear(stacked, mask)
        del a.q_proj, a.k_proj, a.v_proj
        a.forward = types.MethodType(fused_forward, a)
    return model


def main():
    args = decode_arguments(__doc__).parse_args()
    torch.set_num_threads(args.threads)
    model, masks, prompt = masked_gpt2_small(args.sparsity)
    separate = to_sparse_model(model, masks)
    fused = fuse(separate)
    with torch.no_grad():  # the same logits, token after token
        a, b = separate.new_kv_caches(), fused.new_kv_caches()
        torch.testing.assert_close(separate(prompt, kv_caches=a)[0], fused(prompt, kv_caches=b)[0])
        torch.testing.assert_close(separate(prompt[:, :1], kv_caches=a, pos_offset=8)[0],
                                   fused(prompt[:, :1], kv_caches=b, pos_offset=8)[0])
    best = {"q, k, v separate": float("inf"), "q, k, v fused": float("inf")}
    for _ in range(args.repeats):  # interleaved
        for name, m in zip(best, (separate, fused)):
            best[name] = min(best[name], decode_ms(m, prompt, args.tokens))
    print(f"# {cpu_model()}; {args.threads} threads; gpt2-small at s={args.sparsity}, one token per step, "
          f"best of {args.repeats} x {args.tokens} steps")
    for name, ms in best.items():
        print(f"{name:18s} {ms:7.2f} ms per step")
    print(f"fused saves {1 - best['q, k, v fused'] / best['q, k, v separate']:.1%}")


if __name__ == "__main__":
    main()

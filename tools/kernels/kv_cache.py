"""
What the KV cache's layout costs a decode step, as the cache grows: GPT-2 Small, one token per step after a
prompt of each given length, masked (dense products) and csr, each with model.extend_kv_cache (buffers that
double when full: a token writes its own keys and values) and with torch.cat (the whole cache copied every
token, as before 2026-12-06), interleaved. The cat copy grows with the cache, so the gap grows with it, and
since both kernels pay it, it lowers csr's speed-up over masked. Run from the repository root:

    python -m tools.kernels.kv_cache [--lengths 64,512,960] [--sparsity 0.75] [--threads 2] [--tokens 32] [--repeats 5]
"""
import copy
import time

import torch

import model as gpt
from sparse_kernels import to_sparse_model
from tools.kernel_bench import cpu_model
from tools.kernels.in_model import decode_arguments, masked_gpt2_small


def concat_kv_cache(cache, k, v):
    """The old cache: [keys, values, n] grown by torch.cat, a copy of everything cached per token."""
    if cache[0] is not None:
        k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
    cache[0], cache[1], cache[2] = k, v, k.size(2)
    return k, v


def step_ms(m, length, tokens):
    """ms per decode step over `tokens` steps after a random prompt of `length` tokens."""
    prompt = torch.randint(0, m.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        caches = m.new_kv_caches()
        logits, _ = m(prompt, kv_caches=caches)
        token = logits[:, -1].argmax(-1, keepdim=True)
        t = time.perf_counter()
        for i in range(tokens):
            logits, _ = m(token, kv_caches=caches, pos_offset=length + i)
            token = logits[:, -1].argmax(-1, keepdim=True)
        return (time.perf_counter() - t) / tokens * 1e3


def main():
    ap = decode_arguments(__doc__)
    ap.set_defaults(tokens=32, repeats=5)
    ap.add_argument("--lengths", default="64,512,960", help="prompt lengths: the cache's size when timing starts")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    if max(lengths) + args.tokens > 1024:
        raise SystemExit("error: --lengths plus --tokens must stay within GPT-2's 1,024 positions")
    torch.set_num_threads(args.threads)
    model, masks, _ = masked_gpt2_small(args.sparsity)
    runs = {"masked": model, "csr": to_sparse_model(copy.deepcopy(model), masks)}
    layouts = {"grow": gpt.extend_kv_cache, "cat": concat_kv_cache}
    print(f"# {cpu_model()}; {args.threads} threads; gpt2-small at s={args.sparsity}, ms per decode step, "
          f"best of {args.repeats} x {args.tokens} steps after a prompt of the given length")
    print(f"{'cache':>6s} {'masked cat':>11s} {'masked grow':>12s} {'csr cat':>8s} {'csr grow':>9s}"
          f" {'speed-up cat':>13s} {'speed-up grow':>14s}")
    try:
        for length in lengths:
            best = {}
            for r in range(args.repeats):  # interleaved, the order flipped every repeat
                order = list(layouts.items())[::1 if r % 2 else -1]
                for kernel, m in list(runs.items())[::1 if r % 2 else -1]:
                    for layout, extend in order:
                        gpt.extend_kv_cache = extend
                        ms = step_ms(m, length, args.tokens)
                        best[kernel, layout] = min(best.get((kernel, layout), float("inf")), ms)
            print(f"{length:6d} {best['masked', 'cat']:11.2f} {best['masked', 'grow']:12.2f} {best['csr', 'cat']:8.2f} "
                  f"{best['csr', 'grow']:9.2f} {best['masked', 'cat'] / best['csr', 'cat']:12.2f}x "
                  f"{best['masked', 'grow'] / best['csr', 'grow']:13.2f}x", flush=True)
    finally:
        gpt.extend_kv_cache = layouts["grow"]


if __name__ == "__main__":
    main()

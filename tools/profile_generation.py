"""
Sparse inference on the CPU: greedy generation with a masked dense GPT vs the same GPT converted by
to_sparse_model, tokens/s at each sparsity, and where a decode step's time goes (torch.profiler).

    python -m tools.profile_generation                       # gpt2-small, s = 0.75 and 0.9, 2 threads
    python -m tools.profile_generation --sparsity 0.9 --new_tokens 16 --json results/kernels/generation.json

Random weights and a random mask (the speed does not depend on what the weights are). Dense and
sparse are timed interleaved, best of --repeats, in the same process. The profile covers
--profile_tokens decode steps of each model; it reports the time of the six sparse (or masked
dense) block matrices together, the LM head (the 768 x 50257 matrix tied to the embedding: dense in
both models, since the paper sparsifies only the blocks), attention and the rest.
"""
import argparse
import copy
import json
import os
import time

import torch

from sparse_kernels import SparseLinear, to_sparse_model
from tools.kernel_bench import cpu_model


def _step_breakdown(model, prompt, new_tokens):
    """Milliseconds per decode step by category, from torch.profiler module-level records."""
    from torch.profiler import ProfilerActivity, profile, record_function
    lm_head = model.lm_head
    hooks, names = [], {}
    for name, mod in model.named_modules():
        if isinstance(mod, (SparseLinear, torch.nn.Linear)):
            kind = "lm_head" if mod is lm_head else "block matrices"
            names[mod] = kind

            def pre(m, inp, _kind=kind):
                m._rf = record_function("cat::" + _kind)
                m._rf.__enter__()

            def post(m, inp, out):
                m._rf.__exit__(None, None, None)
            hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        with torch.no_grad():
            caches = model.new_kv_caches()
            logits, _ = model(prompt, kv_caches=caches)  # the prompt: not profiled
            idx = prompt
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(new_tokens):
                    nxt = logits[:, -1, :].argmax(-1, keepdim=True)
                    idx = torch.cat((idx, nxt), 1)
                    with record_function("cat::step"):
                        logits, _ = model(nxt, kv_caches=caches, pos_offset=idx.size(1) - 1)
    finally:
        for h in hooks:
            h.remove()
    total = {e.key[5:]: e.cpu_time_total / 1e3 / new_tokens for e in prof.key_averages() if e.key.startswith("cat::")}
    step = total.pop("step")
    out = {k: total.get(k, 0.0) for k in ("block matrices", "lm_head")}
    out["rest (attention, layer norms, embedding, Python)"] = step - sum(out.values())
    out["step"] = step
    return out


def run(preset, sparsity, prompt_len, new_tokens, repeats, profile_tokens, seed=0):
    from model import GPT, PRESETS
    from sparsity import apply_masks, make_masks
    torch.manual_seed(seed)
    model = GPT(PRESETS[preset]).eval()
    masks = make_masks(model, sparsity, "random", seed)
    apply_masks(model, masks)
    sparse = to_sparse_model(copy.deepcopy(model), masks)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    for m in (model, sparse):
        m.generate(prompt, 2, temperature=0)  # warm-up (and the C++ build, if not cached)
    secs, outs = {"dense": [], "sparse": []}, {}
    for _ in range(repeats):
        for name, m in (("dense", model), ("sparse", sparse)):
            t = time.perf_counter()
            outs[name] = m.generate(prompt, new_tokens, temperature=0)
            secs[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in secs.items()}
    med = {k: sorted(v)[len(v) // 2] for k, v in secs.items()}
    lm = model.lm_head.weight
    return dict(model=preset, sparsity=sparsity, prompt_len=prompt_len, new_tokens=new_tokens, repeats=repeats,
                dense_tok_s=new_tokens / best["dense"], sparse_tok_s=new_tokens / best["sparse"],
                speedup_best=best["dense"] / best["sparse"], speedup_median=med["dense"] / med["sparse"],
                same_tokens=bool(torch.equal(outs["dense"], outs["sparse"])),
                lm_head_weights=lm.numel(), block_weights_kept=sum(int(v.sum()) for v in masks.values()),
                ms_per_step={"dense": _step_breakdown(model, prompt, profile_tokens),
                             "sparse": _step_breakdown(sparse, prompt, profile_tokens)})


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.profile_generation", description=__doc__.split("\n")[1])
    p.add_argument("--model", default="gpt2-small")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.75, 0.9])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt_len", type=int, default=16)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile_tokens", type=int, default=8)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# tools.profile_generation {started}; torch {torch.__version__}; CPU threads {args.threads}; "
          f"{cpu_model()}; load average {os.getloadavg()[0]:.1f}")
    rows = []
    for s in args.sparsity:
        r = run(args.model, s, args.prompt_len, args.new_tokens, args.repeats, args.profile_tokens)
        rows.append(r)
        print(f"{r['model']} s={s:.2f}: dense {r['dense_tok_s']:.1f} tok/s, sparse {r['sparse_tok_s']:.1f} tok/s, "
              f"speedup {r['speedup_best']:.2f}x best / {r['speedup_median']:.2f}x median of {r['repeats']}, "
              f"same tokens: {r['same_tokens']}; unprofiled ms per token (best): dense {1e3 / r['dense_tok_s']:.1f}, "
              f"sparse {1e3 / r['sparse_tok_s']:.1f}", flush=True)
        for name, b in r["ms_per_step"].items():
            print(f"  {name:6s} ms per decode step: " + ", ".join(f"{k} {v:.1f}" for k, v in b.items()))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(date=started, command="python -m tools.profile_generation " + " ".join(argv or []),
                           cpu=cpu_model(), threads=args.threads, torch=torch.__version__, runs=rows), f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])

"""
Benchmark: dense torch.matmul vs torch.sparse.mm (CSR) vs our CSR kernel, same inputs, one run.

    python -m tools.kernel_bench                      # full: 2048 tokens, GPT-2 Small + GPT-3 XL shapes
    python -m tools.kernel_bench --quick              # a short run (GPT-2 Small shapes, 2 sparsities)
    python -m tools.kernel_bench --json out/kernels.json --threads 2 --sparsity 0.75,0.9 --devices cpu

Each layer computes y = x @ W.T with x (tokens, in) and a random unstructured mask of the given
sparsity. The three methods are timed interleaved (dense, torch.sparse, ours, dense, ...) and
the best of --repeats is kept, so a burst of load from other processes hits all of them alike.
Speedups are time ratios from the same run, of the best times ("vs dense") and of the median times
("median"); "ideal" is 1 / (1 - s), the FLOP ratio. Three more columns are training's, each ours against
dense in the same run: "dy@W" the input gradient (our kernel on the transposed CSR), "SDDMM" the weight
gradient at the nonzeros against dense dy.T @ x, "fwd+bwd" a whole SparseLinear forward and backward
against nn.Linear's. The header names the CPU model and vector ISA
and the load average at the start (other processes on the machine make every time longer).
Then greedy generation: the masked dense GPT against the same GPT converted to SparseLinear,
tokens per second on the CPU, and whether both produced the same tokens; --profile_tokens=N also says
where a decode step's time goes (torch.profiler): the six block matrices together, the LM head (dense
in both: the paper sparsifies the blocks only), attention and the rest.

    python -m tools.kernel_bench --gen_only --gen_sparsity=0.75,0.9 --gen_tokens=24 --profile_tokens=6
On CUDA (when present) the table adds dense bf16 and ours with bf16 inputs.
"""
import copy
import datetime
import json
import os
import platform
import time
import warnings
from types import SimpleNamespace

import torch

from common import UsageError, check, check_output_file, parse_config, run_cli
from sparse_kernels import CSR, SparseLinear, csr_matmul, to_csr, to_sparse_model, transpose_plan
from sparse_kernels.sparse_linear import _sddmm as sddmm

# (model, layer, out_features, in_features): the MLP matrices, the largest of each model
SHAPES = [("gpt2-small", "c_fc", 3072, 768), ("gpt2-small", "c_proj", 768, 3072),
          ("gpt3-xl", "c_fc", 8192, 2048), ("gpt3-xl", "c_proj", 2048, 8192)]


def cpu_model():
    """'<model name> (family F model M), <vector ISA>' from /proc/cpuinfo, plus the kernel's build when
    SPDF_CPU_ARCH sets one other than this CPU's (e.g. the AVX2 path on an AVX-512 machine).
    Under a hypervisor the model name can be generic ('Intel(R) Xeon(R) Processor'); family/model say more."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                info.setdefault(k.strip(), v.strip())
                if not line.strip():
                    break
    except OSError:
        return platform.processor() or platform.machine()
    flags = info.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    arch = os.environ.get("SPDF_CPU_ARCH", "native")
    build = "" if arch == "native" else f", kernel built for {arch}"
    return (f"{info.get('model name', platform.machine())} (family {info.get('cpu family', '?')} "
            f"model {info.get('model', '?')}), {isa}{build}")


def best_ms(fn, repeats):
    """The shortest of `repeats` wall times of fn(), in ms, for CPU work (the results/kernels scripts)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def _timer(device):
    def run(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t
    return run


def bench_layer(device, m, k, sparsity, tokens, repeats, gen, samples=None):
    """Best time of each method (s) and ours' max relative error; samples (a dict), if given, gets every time."""
    w = torch.randn(m, k, generator=gen).mul_(torch.rand(m, k, generator=gen) >= sparsity).to(device)
    x = torch.randn(tokens, k, generator=gen).to(device)
    with warnings.catch_warnings():  # torch's CSR is the baseline here; its "beta" notice is noise
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        ours_csr, torch_csr = to_csr(w), w.to_sparse_csr()
    # training's other two products: the input gradient dy @ W (ours: the transposed CSR, values refreshed
    # by one gather as SparseLinear does) and the weight gradient at the nonzeros (SDDMM), then a whole
    # SparseLinear forward+backward against nn.Linear's
    dy = torch.randn(tokens, m, generator=gen).to(device)
    csr_t, perm = transpose_plan(ours_csr)
    lin = torch.nn.Linear(k, m, bias=False).to(device)
    with torch.no_grad():
        lin.weight.copy_(w)
    sl = SparseLinear(ours_csr).to(device)
    xg = x.clone().requires_grad_()

    def fwd_bwd(layer):
        layer(xg).backward(dy)
        xg.grad = None
    methods = {
        "dense": lambda: torch.matmul(x, w.t()),
        "torch_sparse": lambda: torch.sparse.mm(torch_csr, x.t()).t(),
        "ours": lambda: csr_matmul(ours_csr, x),
        "dense_dx": lambda: torch.matmul(dy, w),
        "ours_dx": lambda: csr_matmul(CSR(csr_t.crow, csr_t.col, ours_csr.values[perm], csr_t.shape, csr_t.cache), dy),
        "dense_dw": lambda: torch.matmul(dy.t(), x),
        "ours_dw": lambda: sddmm(ours_csr, dy, x, (csr_t, perm)),  # as SparseLinear calls it
        "dense_fwd_bwd": lambda: fwd_bwd(lin),
        "ours_fwd_bwd": lambda: fwd_bwd(sl),
    }
    if device == "cuda":
        wb, xb = w.bfloat16(), x.bfloat16()
        methods["dense_bf16"] = lambda: torch.matmul(xb, wb.t())
        methods["ours_bf16"] = lambda: csr_matmul(ours_csr, xb)
    ref = methods["dense"]()
    err = (methods["ours"]() - ref).abs().max().item() / ref.abs().max().clamp(min=1e-30).item()
    timer = _timer(device)
    times = {name: float("inf") for name in methods}
    samples = {} if samples is None else samples
    for _ in range(repeats):  # interleaved; the first call of each is also its warm-up
        for name, fn in methods.items():
            samples.setdefault(name, []).append(timer(fn))
            times[name] = min(times[name], samples[name][-1])
    return times, err


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


def bench_generation(preset, sparsity, prompt_len, new_tokens, repeats=2, profile_tokens=0, seed=0):
    """Tokens/s of greedy generation, masked dense GPT vs the same GPT with SparseLinear, timed
    interleaved (best and median of `repeats`); with profile_tokens, where a decode step's time goes."""
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
    for _ in range(repeats):  # interleaved: generation is sensitive to machine load
        for name, m in (("dense", model), ("sparse", sparse)):
            t = time.perf_counter()
            outs[name] = m.generate(prompt, new_tokens, temperature=0)
            secs[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in secs.items()}
    med = {k: sorted(v)[len(v) // 2] for k, v in secs.items()}
    result = dict(model=preset, sparsity=sparsity, prompt_len=prompt_len, new_tokens=new_tokens, repeats=repeats,
                  dense_tok_s=new_tokens / best["dense"], sparse_tok_s=new_tokens / best["sparse"],
                  speedup=best["dense"] / best["sparse"], speedup_median=med["dense"] / med["sparse"],
                  same_tokens=bool(torch.equal(outs["dense"], outs["sparse"])),
                  lm_head_weights=model.lm_head.weight.numel(),
                  block_weights_kept=sum(int(v.sum()) for v in masks.values()))
    if profile_tokens:
        result["ms_per_step"] = {"dense": _step_breakdown(model, prompt, profile_tokens),
                                 "sparse": _step_breakdown(sparse, prompt, profile_tokens)}
    return result


def _fmt(t):
    return f"{t * 1e3:9.1f}" if t is not None and t != float("inf") else "        -"


def table_header(cuda):
    head = (f"{'device':6s} {'layer':18s} {'out x in':>11s} {'s':>5s} {'dense ms':>9s} {'t.sparse':>9s} "
            f"{'ours ms':>9s} {'vs dense':>8s} {'median':>7s} {'vs t.sp':>8s} {'ideal':>6s} "
            f"{'dy@W':>6s} {'SDDMM':>6s} {'fwd+bwd':>7s}")
    return head + (f" {'dense bf16':>10s} {'ours bf16':>9s}" if cuda else "")


def table_line(r, cuda):
    t = {n: v / 1e3 for n, v in r["ms"].items()}
    line = (f"{r['device']:6s} {r['model'] + ' ' + r['layer']:18s} {r['out']:>5d}x{r['in']:<5d} {r['sparsity']:5.2f} "
            f"{_fmt(t['dense'])} {_fmt(t['torch_sparse'])} {_fmt(t['ours'])} "
            f"{r['speedup_vs_dense']:7.2f}x {r['speedup_vs_dense_median']:6.2f}x "
            f"{r['speedup_vs_torch_sparse']:7.2f}x {r['ideal']:5.1f}x "
            f"{r['speedup_dx']:5.2f}x {r['speedup_dw']:5.2f}x {r['speedup_fwd_bwd']:6.2f}x")
    return line + (f" {_fmt(t.get('dense_bf16')):>10s} {_fmt(t.get('ours_bf16'))}" if cuda else "")


DEFAULTS = dict(
    quick=False,            # GPT-2 Small shapes, s=0.75/0.9, 2 repeats, mini model
    json="",                # also write the results as JSON here
    threads=2,              # CPU threads (torch.set_num_threads)
    tokens=2048,
    sparsity="0.5,0.75,0.9,0.95",
    repeats=3,
    devices="",             # comma-separated; "" = cpu, plus cuda when present
    gen_model="gpt2-small",  # GPT preset for the generation benchmark
    gen_tokens=32,
    gen_sparsity="0.75",    # comma-separated sparsities of the generation benchmark
    profile_tokens=0,       # >0: profile this many decode steps of each model
    no_gen=False,           # skip the generation benchmark
    gen_only=False,         # only the generation benchmark
)


def main(argv):
    cfg, overrides = parse_config(DEFAULTS, argv)
    try:
        sparsities = [float(v) for v in str(cfg["sparsity"]).split(",")]
    except ValueError:
        sparsities = []
    check(sparsities, f"--sparsity must be comma-separated numbers, got {cfg['sparsity']!r}")
    args = SimpleNamespace(**{**cfg, "sparsity": sparsities, "devices": [d for d in cfg["devices"].split(",") if d]})
    if args.quick:
        args.sparsity, args.repeats, args.gen_model, args.gen_tokens = [0.75, 0.9], 2, "mini", 16
    shapes = SHAPES[:2] if args.quick else SHAPES
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    if args.threads < 1 or args.tokens < 1 or args.repeats < 1:
        raise UsageError("--threads, --tokens and --repeats must be positive")
    if not all(0.0 <= s < 1.0 for s in args.sparsity):
        raise UsageError("every --sparsity must be in [0, 1)")
    if "cuda" in devices and not torch.cuda.is_available():
        raise UsageError("--devices cuda, but CUDA is not available")
    check(all(d in ("cpu", "cuda") for d in devices), f"--devices must be cpu and/or cuda, got {' '.join(devices)}")
    from model import PRESETS
    check(args.no_gen or args.gen_model in PRESETS, f"unknown --gen_model {args.gen_model!r} (choose from {', '.join(PRESETS)})")
    check(args.gen_tokens >= 1 and args.profile_tokens >= 0, "--gen_tokens must be positive, --profile_tokens non-negative")
    try:
        gen_sparsities = [float(v) for v in str(cfg["gen_sparsity"]).split(",")]
    except ValueError:
        gen_sparsities = []
    check(gen_sparsities and all(0 < s < 1 for s in gen_sparsities), "--gen_sparsity must be numbers in (0, 1)")
    check(not (args.gen_only and args.no_gen), "--gen_only and --no_gen leave nothing to run")
    if "json" in overrides:  # an explicit --json= is an error, not "no file"
        check_output_file(args.json)
    torch.set_num_threads(args.threads)

    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# tools.kernel_bench {started}; torch {torch.__version__}; CPU threads {args.threads}; "
          f"{cpu_model()}; load average {os.getloadavg()[0]:.1f}"
          + (f"; GPU {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    rows, gen = [], torch.Generator().manual_seed(0)
    if not args.gen_only:
        print(table_header("cuda" in devices))
    for device in ([] if args.gen_only else devices):
        for model, layer, m, k in shapes:
            for s in args.sparsity:
                samples = {}
                times, err = bench_layer(device, m, k, s, args.tokens, args.repeats, gen, samples)
                med = {n: sorted(v)[len(v) // 2] for n, v in samples.items()}
                rows.append(dict(device=device, model=model, layer=layer, out=m, **{"in": k}, sparsity=s,
                                 tokens=args.tokens, ms={n: t * 1e3 for n, t in times.items()},
                                 speedup_vs_dense=times["dense"] / times["ours"],
                                 speedup_vs_dense_median=med["dense"] / med["ours"],
                                 speedup_vs_torch_sparse=times["torch_sparse"] / times["ours"],
                                 speedup_dx=times["dense_dx"] / times["ours_dx"],
                                 speedup_dw=times["dense_dw"] / times["ours_dw"],
                                 speedup_fwd_bwd=times["dense_fwd_bwd"] / times["ours_fwd_bwd"],
                                 ideal=1 / (1 - s), max_rel_err=err))
                print(table_line(rows[-1], "cuda" in devices), flush=True)
    result = dict(date=started, command="python -m tools.kernel_bench " + " ".join(argv),
                  torch=torch.__version__, threads=args.threads, platform=platform.platform(),
                  cuda=torch.cuda.get_device_name() if "cuda" in devices else None, layers=rows)
    if not args.no_gen:
        result["generation"] = []
        for s in gen_sparsities:
            g = bench_generation(args.gen_model, s, 16, args.gen_tokens, args.repeats, args.profile_tokens)
            print(f"\ngreedy generation, {g['model']} at s={s:g}, CPU, batch 1, {g['prompt_len']}-token prompt, "
                  f"{g['new_tokens']} new tokens: dense {g['dense_tok_s']:.1f} tok/s, sparse {g['sparse_tok_s']:.1f} "
                  f"tok/s, speedup {g['speedup']:.2f}x best / {g['speedup_median']:.2f}x median of {g['repeats']}, "
                  f"same tokens: {g['same_tokens']}")
            for name, b in g.get("ms_per_step", {}).items():
                print(f"  {name:6s} ms per decode step: " + ", ".join(f"{k} {v:.1f}" for k, v in b.items()))
            result["generation"].append(g)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    run_cli(main)

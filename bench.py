"""
Times pre-training steps on synthetic data, dense and sparse in one run with their steps interleaved
on one model, so the ratio between them is measured under the same conditions. The step is pretrain.py's: forward, backward, gradient masking,
clipping, AdamW, re-masking.

  python bench.py --device=cpu --model=tiny --sparsity=0.75
  python bench.py --model=gpt3-xl --batch_size=8 --block_size=2048 --compile=True --compile_blocks=True --json=bench.json
  python bench.py --model=gpt3-xl --batch_size=8 --block_size=2048 --compile=True \
      --gradient_accumulation_steps=64     # the paper's step: 512 x 2048 tokens

  python bench.py --device=cpu --model=cpu --block_size=128 --finetune=True   # fine-tuning vs pre-training tokens/s
  python bench.py --model=gpt2-small --batch_size=16 --block_size=1024 --compile=True --hf_peer=True
  python bench.py --device=cpu --model=gpt2-small --block_size=256 --batch_size=4 --kernel=csr --memory=True

--hf_peer=True times Hugging Face's GPT2LMHeadModel of the same shape (SDPA attention, the same autocast,
compile and fused AdamW, the same batch) in the same loop: a peer measured beside ours, not quoted.
--compile_blocks=True compiles each transformer block in place, ours and the peer's alike, instead of the
whole model: one compilation serves every block, so a deep model's first step comes far sooner (GPT-2 Small
with the peer, CPU: 31 s against 72-77 s), and the embeddings, LM head and loss run eagerly.

Besides the step time it prints where a sparse step's time goes (forward + backward, gradient masking,
clipping, AdamW, re-masking): profile before optimizing.
"""
import json
import os
import subprocess
import sys
import time

import torch

import sparse_kernels
import sparsity as sp
from common import autocast, check, check_output_file, parse_config, peak_flops, pick_device, run_cli
from flops import forward_flops
from model import ADAMW, GPT, PRESETS, configure_optimizer, preset_config

DEFAULTS = dict(
    model="tiny",
    batch_size=8,
    block_size=0,      # 0 = the preset's context
    sparsity=0.75,     # the sparse run; a dense run is always timed beside it
    gradient_accumulation_steps=1,  # micro-batches per optimizer step
    activation_checkpointing=False,  # recompute block activations in backward (less memory)
    steps=10,          # timed steps per run
    warmup=3,          # untimed steps first (compilation, allocator warm-up)
    device="auto",
    compile=False,
    compile_blocks=False,  # with --compile: compile each transformer block on its own (ours and the HF peer alike)
    seed=1337,
    json="",           # also write the figures to this path
    finetune=False,    # instead: fine-tuning tokens/s (real E2E examples) against pre-training tokens/s
    hf_peer=False,     # also time transformers' GPT2LMHeadModel of the same shape, interleaved with ours
    kernel="masked",   # csr: also time a run on sparse_kernels.SparseLinear (the zeros skipped)
    memory=False,      # peak memory of each run, each measured alone in a process of its own
    memory_probe="",   # (internal) run one of dense/masked/csr alone and print its peak memory
)


def compiled(model, blocks, cfg):
    """The module to step: the model as it is, torch.compile'd whole, or (--compile_blocks) with each
    transformer block compiled in place, where one compilation serves every block."""
    if not cfg["compile"]:
        return model
    if cfg["compile_blocks"]:
        for block in blocks:
            block.compile()
        return model
    return torch.compile(model)


def hf_peer_step(mcfg, cfg, device, x, y, accum):
    """A training step of transformers' GPT2LMHeadModel built to mcfg's shape (no GPT-2 weights needed):
    SDPA attention, the same autocast, compile and fused AdamW with the same decay groups, clipping at 1."""
    from hf import GELU_TO_HF, from_transformers
    GPT2Config, GPT2LMHeadModel = from_transformers("GPT2Config", "GPT2LMHeadModel")
    hc = GPT2Config(vocab_size=mcfg.vocab_size, n_positions=mcfg.block_size, n_embd=mcfg.n_embd,
                    n_layer=mcfg.n_layer, n_head=mcfg.n_head, activation_function=GELU_TO_HF[mcfg.activation],
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                    tie_word_embeddings=True, use_cache=False)
    with torch.device(device):
        model = GPT2LMHeadModel._from_config(hc, attn_implementation="sdpa").train()
    optimizer = configure_optimizer(model, dict(ADAMW, learning_rate=1e-3), device)
    step_model = compiled(model, model.transformer.h, cfg)

    def step():
        for _ in range(accum):
            with autocast(device):
                loss = step_model(input_ids=x, labels=y).loss  # HF shifts labels inside: T-1 targets
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step, sum(p.numel() for p in model.parameters())


def build_run(cfg, mcfg, device, kernel):
    """(model, masks, optimizer) of one run, all from the same seed: dense, masked (the default
    path: dense matmuls on masked weights) or csr (SparseLinear: only the kept weights exist)."""
    torch.manual_seed(cfg["seed"])
    home = "cpu" if kernel == "csr" else device  # initialized where it runs (GPT-3 XL: ~25 s on a CPU core);
    with torch.device(home):                     # SparseLinear is made from CPU tensors, then moved
        model = GPT(mcfg)
    model.activation_checkpointing = cfg["activation_checkpointing"]
    masks = {} if kernel == "dense" else sp.masks_to(sp.make_masks(model, cfg["sparsity"], seed=cfg["seed"]), home)
    sp.apply_masks(model, masks)
    if kernel == "csr":
        sparse_kernels.to_sparse_model(model, masks)
        masks = {}  # nothing left to mask
    return model.to(device), masks, configure_optimizer(model, dict(ADAMW, learning_rate=1e-3), device)


def memory_probe(argv, kernel):
    """Peak memory of a few steps of one run, measured in a process of its own (runs interleaved in one
    process would share one peak): CUDA's peak allocation, or on the CPU (Linux) the peak resident set
    above what the process held before building the model."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, f"--memory_probe={kernel}", "--steps=2", "--warmup=1",
           "--json=", "--hf_peer=False"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("peak_memory_gb=")]
    check(proc.returncode == 0 and lines, f"the memory probe of the {kernel} run failed: "
          f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return float(lines[-1].split("=")[1])


def _peak_rss():
    """This process's peak resident set (Linux VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def probe_main(cfg, device):
    """--memory_probe=KERNEL: a few steps of that run alone, then its peak memory on one line."""
    mcfg = preset_config(cfg["model"], cfg["block_size"])
    if not device.startswith("cuda"):
        with open("/proc/self/clear_refs", "w") as f:  # restart the peak from what the process holds now
            f.write("5")
        before = _peak_rss()
    model, masks, optimizer = build_run(cfg, mcfg, device, cfg["memory_probe"])
    x = torch.randint(0, mcfg.vocab_size, (cfg["batch_size"], mcfg.block_size), device=device)
    for _ in range(cfg["warmup"] + cfg["steps"]):
        for _ in range(cfg["gradient_accumulation_steps"]):
            with autocast(device):
                _, loss = model(x, x)
            loss.backward()
        sp.optimizer_step(optimizer, model, masks, 1.0)
    peak = torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else _peak_rss() - before
    print(f"peak_memory_gb={peak / 1e9:.4f}")


def time_runs(cfg, device, argv=()):
    """
    The runs' steps interleaved, so a change in machine load hits them alike: dense and masked on one
    model (a masked model does the dense model's matmuls; the sparse step differs only by the mask
    upkeep, gradient masking and re-masking, which is exactly the overhead to measure) and, with
    --kernel=csr, a model whose six block matrices are SparseLinear, where the zeros are skipped.
    """
    start = time.perf_counter()

    def progress(what):  # a run cut off by a time limit still says how far it got, and how fast
        print(f"  [{time.perf_counter() - start:6.1f} s] {what}", flush=True)
    mcfg = preset_config(cfg["model"], cfg["block_size"])
    model, masks, optimizer = build_run(cfg, mcfg, device, "masked")
    step_model = compiled(model, model.transformer.h, cfg)
    B, T = cfg["batch_size"], mcfg.block_size
    x = torch.randint(0, mcfg.vocab_size, (B, T), device=device)
    y = torch.randint(0, mcfg.vocab_size, (B, T), device=device)

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    accum = cfg["gradient_accumulation_steps"]

    def step(model, step_model, optimizer, masks, phases=None):
        """One optimizer step. With `phases`, also adds each phase's seconds to it, synchronizing
        the device between phases (a little slower, so the timed steps go without)."""
        def phase(name, fn):
            if phases is None:
                return fn()
            sync()
            t0 = time.perf_counter()
            out = fn()
            sync()
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
            return out

        def forward_backward():
            for _ in range(accum):
                with autocast(device):
                    _, loss = step_model(x, y)
                (loss / accum).backward()
        phase("forward+backward", forward_backward)
        sp.optimizer_step(optimizer, model, masks, 1.0, phase=phase)  # pretrain.py's step, phase by phase

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    runs = [dict(name="dense", sparsity=0.0, args=(model, step_model, optimizer, {})),
            dict(name="masked", sparsity=cfg["sparsity"], args=(model, step_model, optimizer, masks))]
    if cfg["kernel"] == "csr":
        csr_model, _, csr_optimizer = build_run(cfg, mcfg, device, "csr")
        runs.append(dict(name="csr", sparsity=cfg["sparsity"], args=(csr_model, csr_model, csr_optimizer, {})))
    steps = [lambda r=r: step(*r["args"]) for r in runs]
    all_times = [[] for _ in runs]
    progress("models, masks and optimizers ready")
    if cfg["hf_peer"]:
        peer, peer_params = hf_peer_step(mcfg, cfg, device, x, y, accum)
        steps.append(peer)
        all_times.append([])
        progress("HF peer ready")
    for i in range(cfg["warmup"] + cfg["steps"]):
        for run_step, times in zip(steps, all_times):
            sync()
            t0 = time.perf_counter()
            run_step()
            sync()
            if i >= cfg["warmup"]:
                times.append(time.perf_counter() - t0)
        if i == 0 or i == cfg["warmup"] + cfg["steps"] - 1:
            progress(f"step {i + 1} of each run done (the first includes compilation)")
    breakdown_steps = min(3, cfg["steps"])
    phases = [{} for _ in runs]
    for _ in range(breakdown_steps):  # then where the time goes, a few steps more
        for r, ph in zip(runs, phases):
            step(*r["args"], phases=ph)
    assert sp.check_masked(model, masks)  # the last step of this model was a masked one
    peak = peak_flops(device)
    dense_flops = 3 * forward_flops(mcfg, T, 0.0, mcfg.vocab_size) * B * accum
    mem = {}
    if cfg["memory"]:  # each run alone, in a process of its own
        for r in runs:
            mem[r["name"]] = memory_probe(argv, r["name"])
            progress(f"peak memory of the {r['name']} run measured")
    elif device.startswith("cuda"):
        mem = {r["name"]: torch.cuda.max_memory_allocated(device) / 1e9 for r in runs}  # of all runs together

    def figures(times, name):
        step_s = sorted(times)[len(times) // 2]  # median: robust to a stray slow step
        return dict(step_ms=1000 * step_s, tokens_per_s=B * T * accum / step_s,
                    mfu=dense_flops / step_s / peak if peak else None, peak_memory_gb=mem.get(name))
    results = [dict(kernel=r["name"], sparsity=r["sparsity"], **figures(times, r["name"]),
                    phases_ms={k: 1000 * v / breakdown_steps for k, v in ph.items()})
               for r, times, ph in zip(runs, all_times, phases)]
    if cfg["hf_peer"]:  # MFU counted with our model's FLOPs: the same shapes, the same work
        results.append(dict(name="transformers GPT2LMHeadModel", params=peer_params, **figures(all_times[-1], None)))
    return results


def time_finetune(cfg, device):
    """
    Fine-tuning steps on real E2E examples beside pre-training steps of the same model, interleaved,
    in tokens/s (fine-tuning counts the real tokens of each example, not padding). Two fine-tuning
    steps are timed: finetune.py's (length-bucketed batches, logits at the completion positions only)
    and the baseline it replaced (random batches, logits at every position, masked afterwards).
    """
    import random

    import torch.nn.functional as F

    import finetune
    from data.sources import get_tokenizer
    from data.tasks import encode_example, flatten, load_groups
    torch.manual_seed(cfg["seed"])
    mcfg = preset_config(cfg["model"], cfg["block_size"])
    model = GPT(mcfg).to(device)
    optimizer = configure_optimizer(model, dict(ADAMW, learning_rate=1e-4), device)
    rng = random.Random(cfg["seed"])
    examples = flatten(load_groups("e2e", "train")[0])
    rng.shuffle(examples)
    enc = get_tokenizer()
    n_steps = cfg["warmup"] + cfg["steps"]
    examples = [encode_example(enc, e["context"], e["completion"], mcfg.block_size)
                for e in examples[:max(50, n_steps) * cfg["batch_size"]]]
    bucketed = finetune.batches(examples, cfg["batch_size"], True, rng)
    plain = (examples[i:i + cfg["batch_size"]] for i in range(0, len(examples), cfg["batch_size"]))
    B, T = cfg["batch_size"], mcfg.block_size
    x = torch.randint(0, mcfg.vocab_size, (B, T), device=device)

    def baseline_loss(x, y, m):  # the fine-tuning loss before: every position through the LM head
        logits, _ = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1), reduction="none",
                               label_smoothing=0.1)
        return (loss * m.view(-1)).sum(), m.sum()

    def finetune_step(batches, loss_fn):
        batch = next(batches)
        bx, by, bm = finetune.collate(batch, device)
        with autocast(device):
            s, n = loss_fn(bx, by, bm)
        (s / n).backward()
        sp.optimizer_step(optimizer, model, {}, 1.0)
        return sum(len(ids) - 1 for ids, _ in batch)

    def pretrain_step():
        with autocast(device):
            _, loss = model(x, x)
        loss.backward()
        sp.optimizer_step(optimizer, model, {}, 1.0)
        return B * T

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    runs = {"pre-training": pretrain_step,
            "fine-tuning": lambda: finetune_step(bucketed, lambda *a: finetune.completion_loss(model, *a, 0.1)),
            "fine-tuning, baseline": lambda: finetune_step(plain, baseline_loss)}
    totals = {name: [0, 0.0] for name in runs}
    for i in range(n_steps):
        for name, step in runs.items():
            sync()
            t0 = time.perf_counter()
            tokens = step()
            sync()
            if i >= cfg["warmup"]:
                totals[name][0] += tokens
                totals[name][1] += time.perf_counter() - t0
    return {name: tokens / seconds for name, (tokens, seconds) in totals.items()}


def main(argv):
    cfg, _ = parse_config(DEFAULTS, argv)
    check(cfg["model"] in PRESETS, f"unknown model {cfg['model']!r} (choose from {', '.join(PRESETS)})")
    check(0.0 < cfg["sparsity"] < 1.0, "--sparsity must be in (0, 1)")
    check(cfg["steps"] >= 1 and cfg["warmup"] >= 0 and cfg["batch_size"] >= 1 and cfg["gradient_accumulation_steps"] >= 1,
          "--steps, --batch_size and --gradient_accumulation_steps must be positive")
    check(cfg["kernel"] in ("masked", "csr"), f"--kernel must be masked or csr, got {cfg['kernel']!r}")
    check(cfg["memory_probe"] in ("", "dense", "masked", "csr"), "--memory_probe must be dense, masked or csr")
    check(cfg["compile"] or not cfg["compile_blocks"], "--compile_blocks=True needs --compile=True")
    check(cfg["block_size"] >= 0, f"--block_size must be non-negative (0 = the preset's), got {cfg['block_size']}")
    if cfg["json"]:
        check_output_file(cfg["json"])
    device = pick_device(cfg["device"])
    check(cfg["kernel"] != "csr" or sparse_kernels.supports(device), f"--kernel=csr has no sparse kernel for {device}")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    how = ("blocks" if cfg["compile_blocks"] else "whole model") if cfg["compile"] else False
    print(f"{cfg['model']}, batch {cfg['batch_size']} x {cfg['block_size'] or PRESETS[cfg['model']].block_size}"
          f" x {cfg['gradient_accumulation_steps']} micro-batches, {name}, compile={how}, "
          f"activation checkpointing={cfg['activation_checkpointing']}")
    if cfg["finetune"]:
        tps = time_finetune(cfg, device)
        for run, value in tps.items():
            print(f"{run:22s} {value:10,.0f} tokens/s  ({value / tps['pre-training']:.2f}x pre-training)")
        if cfg["json"]:
            with open(cfg["json"], "w") as f:
                json.dump(dict(config=cfg, device=name, tokens_per_s=tps), f, indent=1)
        return tps
    if cfg["memory_probe"]:
        return probe_main(cfg, device)
    results = time_runs(cfg, device, argv)
    peer = results[-1] if cfg["hf_peer"] else None
    runs = results[:-1] if peer else results
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (unknown peak)"
        mem = f"{r['peak_memory_gb']:.2f} GB" if r["peak_memory_gb"] is not None else "n/a"
        label = f"{r['kernel']:6s} s={r['sparsity']:4.2f}" if "kernel" in r else "HF peer      "
        print(f"{label}: {r['step_ms']:9.1f} ms/step  {r['tokens_per_s']:12,.0f} tokens/s  "
              f"MFU {mfu}  peak memory {mem}")
    overhead = runs[1]["step_ms"] / runs[0]["step_ms"]
    print(f"masked / dense step time: {overhead:.3f}x ({100 * (overhead - 1):+.1f}%)")
    if len(runs) > 2:
        print(f"csr speed-up over dense: {runs[0]['step_ms'] / runs[2]['step_ms']:.2f}x, over masked: "
              f"{runs[1]['step_ms'] / runs[2]['step_ms']:.2f}x")
    if peer:
        print(f"ours dense / HF peer tokens/s: {runs[0]['tokens_per_s'] / peer['tokens_per_s']:.3f}x")
    print("where the time goes (mean ms per step; phases synchronized, so their sum is a little above the step time):")
    print(f"  {'':18s}" + "".join(f" {r['kernel']:>9s}" for r in runs))
    for phase in runs[0]["phases_ms"]:
        print(f"  {phase:18s}" + "".join(f" {r['phases_ms'][phase]:9.2f}" for r in runs))
    if cfg["json"]:
        with open(cfg["json"], "w") as f:
            json.dump(dict(config=cfg, device=name, dense=runs[0], sparse=runs[1], csr=runs[2] if len(runs) > 2 else None,
                           sparse_over_dense=overhead, hf_peer=peer,
                           dense_over_hf=peer and runs[0]["tokens_per_s"] / peer["tokens_per_s"]), f, indent=1)
    return results


if __name__ == "__main__":
    run_cli(main)

"""
Sample from a trained model, as nanoGPT's sample.py does: a pre-training or fine-tuning checkpoint
(or its out_dir), or OpenAI's GPT-2 through Hugging Face.

  python sample.py --init_from=out                                   # the pre-training out_dir
  python sample.py --init_from=out --kernel=csr --temperature=0      # the same model with the zeros skipped
  python sample.py --init_from=out-finetune --start="name : Blue Spice | Type : coffee shop<|endoftext|>" --temperature=0
  python sample.py --init_from=gpt2 --start=FILE:prompt.txt --max_new_tokens=200 --top_k=40

--kernel=masked runs the six block matrices dense over their zeroed weights (what training runs);
--kernel=csr swaps them for sparse_kernels.SparseLinear built from the checkpoint's pre-training
masks, so each token computes only the kept weights. It is the same math: on the CPU (fp32) both
give the same tokens at --temperature=0; on CUDA the masked kernel's matmuls run in bf16 (autocast)
while the CSR kernel computes in fp32, so a near tie may break differently there.
The prompt and the new tokens must fit in the model's block_size (checked before generating, never
cut short); generation does not stop at <|endoftext|> (as nanoGPT's). The last line is the speed of
generation in tokens/s (loading and conversion excluded). Nothing is written.
"""
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sparse_kernels
import sparsity as sp
from checkpoint import build_model, pretrain_sparsity
from common import UsageError, autocast, check, parse_config, pick_device, run_cli
from data.sources import EOT, get_tokenizer
from hf import is_hf_source, load_source

DEFAULTS = dict(
    init_from="out",     # a checkpoint or out_dir (pre-training or fine-tuning), gpt2[-medium|-large|-xl] or an HF folder
    start="\n",          # the prompt, or FILE:path to read it from a file; "" starts from <|endoftext|>
    num_samples=3,
    max_new_tokens=100,  # per sample; the prompt plus these must fit in the model's block_size
    temperature=0.8,     # 0 = greedy (argmax); below 1 sharper, above 1 more random
    top_k=200,           # sample among the k likeliest tokens only; 0 = among all
    seed=1337,
    device="auto",
    kernel="masked",     # masked: dense matmuls over zeroed weights; csr: SparseLinear, zeros skipped
)
KERNELS = ("masked", "csr")


def read_prompt(start):
    """The prompt's text: --start itself, or the file that FILE:path names (nanoGPT's convention)."""
    if not start.startswith("FILE:"):
        return start
    path = Path(start[len("FILE:"):])
    check(path.is_file(), f"--start={start}: no such file {path}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--start={start}: cannot read {path} ({type(e).__name__})") from e


@torch.no_grad()
def generate(model, prompt, max_new_tokens, temperature, top_k, soft_prompt=None):
    """The max_new_tokens token ids that follow `prompt` (1, T): the prompt goes through the model
    once (filling the KV cache), then one token per step. model.generate does the same but runs one
    forward past the last token, which this loop's timing would count."""
    caches = model.new_kv_caches()
    extra = {} if soft_prompt is None else dict(prefix_embeds=soft_prompt[None])
    logits, _ = model(prompt, kv_caches=caches, **extra)
    pos = prompt.size(1) + (0 if soft_prompt is None else soft_prompt.size(0))  # positions cached so far
    out = []
    for i in range(max_new_tokens):
        logits = logits[:, -1, :].float()
        if temperature == 0:
            token = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            token = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
        out.append(token)
        if i + 1 < max_new_tokens:
            logits, _ = model(token, kv_caches=caches, pos_offset=pos)
            pos += 1
    return torch.cat(out, dim=1)[0].tolist()  # one host sync per sample, not one per token


def main(argv):
    cfg, _ = parse_config(DEFAULTS, argv)
    source, csr = cfg["init_from"], cfg["kernel"] == "csr"
    # every flag is checked before anything heavy is loaded
    check(cfg["kernel"] in KERNELS, f"--kernel must be one of {', '.join(KERNELS)}, got {cfg['kernel']!r}")
    check(cfg["temperature"] >= 0, f"--temperature must be >= 0 (0 = greedy), got {cfg['temperature']}")
    check(cfg["top_k"] >= 0, f"--top_k must be >= 0 (0 = no top-k), got {cfg['top_k']}")
    check(cfg["num_samples"] >= 1, f"--num_samples must be at least 1, got {cfg['num_samples']}")
    check(cfg["max_new_tokens"] >= 1, f"--max_new_tokens must be at least 1, got {cfg['max_new_tokens']}")
    check(not (csr and is_hf_source(source)), f"--kernel=csr needs a sparse checkpoint (pre-training masks): "
          f"{source} is a dense Hugging Face GPT-2; use --kernel=masked")
    device = pick_device(cfg["device"])
    check(not csr or sparse_kernels.supports(device), f"--kernel=csr has no sparse kernel for {device} (cpu; cuda with Triton)")
    text = read_prompt(cfg["start"])
    enc = get_tokenizer()
    prompt = enc.encode(text, allowed_special={"<|endoftext|>"}) or [EOT]  # nothing: GPT-2's unconditional start

    ckpt = load_source(source)  # the checkpoint dict: its masks and block_size are known before the model is built
    masks = ckpt.get("masks") or {}
    if csr and not masks:
        was = pretrain_sparsity(ckpt)
        raise UsageError(f"--kernel=csr needs a sparse checkpoint (pre-training masks): {source} has none ("
                         + (f"dense fine-tuned from a {was:.0%} sparse model; its pruned weights are no longer 0"
                            if was > 0 else "a dense model") + "); use --kernel=masked")
    soft_prompt = ckpt.get("soft_prompt")  # prompt tuning's learned vectors go before every prompt
    n_soft = 0 if soft_prompt is None else soft_prompt.size(0)
    block_size, n_new = ckpt["model_config"]["block_size"], cfg["max_new_tokens"]
    room = block_size - n_soft - len(prompt)
    check(n_new <= room, f"the prompt ({len(prompt)} tokens" + (f" after a {n_soft}-vector soft prompt" if n_soft else "")
          + f") plus --max_new_tokens={n_new} is {block_size - room + n_new} positions, more than {source}'s "
          f"block_size of {block_size}: " + (f"use --max_new_tokens={room} or less, or a shorter prompt"
                                             if room >= 1 else "shorten the prompt"))

    model = build_model(ckpt, source).eval()
    sp.apply_masks(model, masks)  # pruned weights are saved as 0 already; make sure
    params = dict(model.named_parameters())
    blocks = [params[n] for n in sp.sparsifiable(model)]
    sparsity = sum(int((p == 0).sum()) for p in blocks) / sum(p.numel() for p in blocks)
    if csr:
        sparse_kernels.to_sparse_model(model, masks)  # each block matrix keeps its masks' entries only
    model.to(device)
    x = torch.tensor([prompt], device=device)
    soft_prompt = None if soft_prompt is None else soft_prompt.to(device)
    with torch.no_grad(), autocast(device):
        model(x[:, :1])  # warm-up, untimed: the first call builds or loads the C++ (or Triton) kernel

    torch.manual_seed(cfg["seed"])  # here, after the model's init drew its random numbers: the seed alone decides
    samples, texts, seconds = [], [], 0.0
    for _ in range(cfg["num_samples"]):
        t0 = time.perf_counter()
        with autocast(device):
            y = generate(model, x, n_new, cfg["temperature"], cfg["top_k"], soft_prompt)
        seconds += time.perf_counter() - t0  # generate returns a list: the device has finished
        samples.append(y)
        texts.append(enc.decode(prompt + y))
        print(texts[-1])
        print("-" * 15)
    tokens_per_s = len(samples) * n_new / seconds
    print(f"{len(samples) * n_new} tokens in {seconds:.2f} s: {tokens_per_s:,.1f} tokens/s, kernel {cfg['kernel']}, "
          f"sparsity {sparsity:.1%} (zeros in the block matrices), {device}")
    return dict(tokens=samples, texts=texts, prompt=prompt, tokens_per_s=tokens_per_s, seconds=seconds,
                kernel=cfg["kernel"], sparsity=sparsity, device=device)


if __name__ == "__main__":
    run_cli(main)

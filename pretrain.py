"""
Sparse pre-training (SPDF steps 1-2): a GPT whose six block matrices carry static random masks,
trained with exactly the dense schedule. --sparsity=0 is the dense baseline. The lines that make
it SPDF are marked `# SPDF:`; multi-process training (DDP, FSDP) lives in parallel.py.

  python pretrain.py --sparsity=0.75                          # CPU toy run on tinyshakespeare
  python pretrain.py config/pretrain_gpt2_small.py --sparsity=0.75
  torchrun --standalone --nproc_per_node=8 pretrain.py config/pretrain_gpt3_xl.py --sparsity=0.75 --fsdp=True

Related systems (their logic lives in their own modules):
  python -m related.sparsegpt --ckpt=out/ckpt.pt --sparsity=0.5 --out=pruned.pt    SparseGPT one-shot prune, then
  python pretrain.py --init_from=pruned.pt --out_dir=out-sgpt               sparse pre-training with its masks
  --sparsity=0.9 --densify_at=0.87         Variable SPDF: sparse, then dense from 87% of max_iters on
  --init_from=out/ckpt.pt --out_dir=out-sat --omit_rate=0.5   SAT-style neuron omission (related/omission.py)
  --sparsity=0.75 --kernel=csr             the six block matrices as sparse_kernels.SparseLinear (only the kept
                                           weights, gradients, AdamW moments), same mathematics and checkpoints as masked

Arguments: config files (Python assignments) and --key=value (or --key value) overrides of DEFAULTS.
"""
import json
import os
import time

import torch
from tqdm import tqdm

import parallel
import sparse_kernels
import sparsity as sp
from checkpoint import (build_model, check_pretrain_checkpoint, checkpoint_dict, load_checkpoint, pretrain_sparsity,
                        restore_progress, resume_schedule, save_checkpoint, trim_log)
from common import (append_line, autocast, check, check_finite, check_memory, check_scratch_out_dir, check_writable_dir,
                    file_stamp, lock_output, parse_config, peak_flops, pick_device, prepare_run_dir, release_outputs,
                    run_cli)
from data.prepare import DATASETS, ensure_prepared, load_tokens
from flops import densify_iter, forward_flops, train_flops
from hf import HUB_NAMES, load_any
from model import ADAMW, GPT, PRESETS, configure_optimizer, cosine_lr, preset_config
from related import omission

DEFAULTS = dict(
    # model and sparsity
    model="tiny",               # a preset from model.PRESETS
    block_size=0,               # context length; 0 = the preset's
    dropout=0.0,
    sparsity=0.0,               # fraction of zeros in each of the six block matrices; 0 = dense
    mask_method="random",       # how masks are chosen: sparsity.MASK_METHODS
    kernel="masked",            # masked: dense matmuls on masked weights | csr: sparse kernels that skip the zeros
    densify_at=0.0,             # Variable SPDF: go dense at this fraction of max_iters (< 1) or iteration; 0 = never
    omit_rate=0.0,              # SAT-style neuron omission: peak fraction of MLP channels and heads skipped
    omit_schedule="ladder",     # omission rungs: 'ladder' (1, 2/3, 1/3, 0) or comma-separated multipliers ending in 0
    # data
    dataset="shakespeare",      # data/prepare.py DATASETS; prepared on first use
    data_dir="",                # folder with train.bin/val.bin; "" = data/<dataset>
    batch_size=8,               # sequences per micro-step per process
    gradient_accumulation_steps=1,  # micro-steps per optimizer step (summed over processes)
    # optimizer: the paper's AdamW (supplement A.1) with a cosine schedule
    learning_rate=1e-3,
    max_iters=200,
    warmup_iters=20,            # the paper: 375M tokens
    lr_decay_iters=0,           # cosine decay length; 0 = max_iters
    min_lr_ratio=0.1,           # decay to 10% of peak
    **ADAMW,                    # weight_decay, beta1, beta2, eps: the paper's values, in common.py
    grad_clip=1.0,
    # run
    out_dir="out",
    init_from="scratch",        # scratch | resume | a checkpoint: its weights, and its masks if it has any |
                                # gpt2[-medium|-large|-xl] or an HF GPT-2 folder: its weights and architecture
    eval_interval=100,
    eval_iters=10,
    device="auto",
    compile=False,
    fsdp=False,                 # under torchrun: shard weights, grads and AdamW state (FSDP2) instead of DDP
    activation_checkpointing=False,  # recompute each block's activations in backward: less memory, more compute
    seed=1337,
)


def validate(cfg):
    check(cfg["model"] in PRESETS, f"unknown model {cfg['model']!r} (choose from {', '.join(PRESETS)})")
    check(0.0 <= cfg["sparsity"] < 1.0, f"--sparsity must be in [0, 1), got {cfg['sparsity']}")
    check(cfg["mask_method"] != "sparsegpt", "SparseGPT is a step of its own: python -m related.sparsegpt "
          "--ckpt=<dense checkpoint> --sparsity=0.5 --out=pruned.pt, then --init_from=pruned.pt")
    check(cfg["mask_method"] in sp.MASK_METHODS,
          f"unknown mask_method {cfg['mask_method']!r} (choose from {', '.join(sp.MASK_METHODS)})")
    check(cfg["densify_at"] >= 0, "--densify_at must be non-negative")
    check(cfg["kernel"] in ("masked", "csr"), f"--kernel must be masked or csr, got {cfg['kernel']!r}")
    if cfg["kernel"] == "csr":
        check(int(os.environ.get("WORLD_SIZE", "1")) == 1 and not cfg["fsdp"],
              "--kernel=csr trains in one process: DDP and FSDP shard dense-shaped weights (use --kernel=masked)")
        for key, what in (("densify_at", "Variable SPDF"), ("omit_rate", "neuron omission"), ("compile", "torch.compile")):
            check(not cfg[key], f"--kernel=csr does not combine with --{key} ({what}): use --kernel=masked")
    omission.validate(cfg)
    check(cfg["dataset"] in DATASETS, f"unknown dataset {cfg['dataset']!r} (choose from {', '.join(DATASETS)})")
    for key in ("batch_size", "gradient_accumulation_steps", "max_iters", "eval_interval", "eval_iters"):
        check(cfg[key] >= 1, f"--{key} must be at least 1, got {cfg[key]}")
    for key in ("block_size", "warmup_iters", "lr_decay_iters"):
        check(cfg[key] >= 0, f"--{key} must be non-negative, got {cfg[key]}")
    check(cfg["learning_rate"] > 0, "--learning_rate must be positive")
    check(0.0 <= cfg["dropout"] < 1.0, "--dropout must be in [0, 1)")
    check(cfg["init_from"] in ("scratch", "resume", *HUB_NAMES) or os.path.exists(cfg["init_from"]),
          f"--init_from must be scratch, resume, a checkpoint, {', '.join(HUB_NAMES)} or an HF GPT-2 folder, "
          f"got {cfg['init_from']!r}")


def model_config(cfg):
    """The preset of --model with --dropout and --block_size."""
    return preset_config(cfg["model"], cfg["block_size"], cfg["dropout"])


def get_batch(tokens, batch_size, block_size, gen, device):
    """batch_size random windows of a token file: inputs and next-token targets."""
    ix = torch.randint(len(tokens) - block_size - 1, (batch_size,), generator=gen).tolist()
    x = torch.stack([torch.from_numpy(tokens[i:i + block_size].astype("int64")) for i in ix])
    y = torch.stack([torch.from_numpy(tokens[i + 1:i + 1 + block_size].astype("int64")) for i in ix])
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss(model, splits, cfg, block_size, device):
    """Mean loss over eval_iters batches per split, the same batches at every evaluation."""
    model.eval()
    out = {}
    for split, tokens in splits.items():
        gen = torch.Generator().manual_seed(cfg["seed"] + 7)
        losses = []
        for _ in range(cfg["eval_iters"]):
            with autocast(device):
                losses.append(model(*get_batch(tokens, cfg["batch_size"], block_size, gen, device))[1].item())
        out[split] = sum(losses) / len(losses)
    parallel.reshard(model)
    model.train()
    return out


def resolve_config(argv):
    """(cfg, overrides, ckpt, finished, seen): the command line over DEFAULTS, or on --init_from=resume over
    the run's own checkpoint (returned too; None for a new run), whose LR schedule an extended run keeps;
    seen: the checkpoint file's stamp at the start, which must hold when the run takes its folder."""
    cfg, overrides = parse_config(DEFAULTS, argv)
    validate(cfg)
    check_writable_dir(cfg["out_dir"])
    seen = file_stamp(os.path.join(cfg["out_dir"], "ckpt.pt"))  # what this run starts from: none, or the one it resumes
    if cfg["init_from"] != "resume":
        check_scratch_out_dir(cfg["out_dir"])  # a new run never writes over another run's checkpoint
        return cfg, overrides, None, False, seen
    path = os.path.join(cfg["out_dir"], "ckpt.pt")  # config, weights, masks, optimizer, RNGs
    ckpt = load_checkpoint(path)
    check_pretrain_checkpoint(ckpt, path)
    for key in ("model", "sparsity", "block_size", "mask_method"):  # fixed for the run's life
        check(key not in overrides or overrides[key] == ckpt["config"][key],
              f"--{key} cannot change on resume (checkpoint has {ckpt['config'][key]!r})")
    cfg = {**DEFAULTS, **ckpt["config"], **overrides}
    changes, note, finished = resume_schedule(ckpt["config"], overrides, ckpt["iter_num"])
    cfg.update(changes)
    validate(cfg)
    if note and os.environ.get("RANK", "0") == "0":
        print(note)
    return cfg, overrides, ckpt, finished, seen


def init_model(cfg, overrides, ckpt):
    """(model, masks, config changes): resumed from the run's checkpoint, from another checkpoint's weights
    (and its masks, if any: then the run takes their sparsity), or new. Masks are {} unless a source had them."""
    if ckpt is not None:
        return build_model(ckpt, os.path.join(cfg["out_dir"], "ckpt.pt")), ckpt["masks"], {}
    if cfg["init_from"] == "scratch":
        return GPT(model_config(cfg)), {}, {}
    model, source = load_any(cfg["init_from"], dropout=cfg["dropout"],  # a checkpoint, or a Hugging Face GPT-2
                             **({"block_size": cfg["block_size"]} if cfg["block_size"] else {}))
    check(source.get("config", {}).get("hf_source") or model.config == model_config(cfg),  # GPT-2 brings its own
          f"{cfg['init_from']} holds a different architecture than --model={cfg['model']}")
    masks = source.get("masks") or {}
    if not masks:
        return model, {}, {}
    s = pretrain_sparsity(source)  # e.g. related/sparsegpt.py's pruned checkpoint: pre-training continues with its masks
    check("sparsity" not in overrides or overrides["sparsity"] == s,
          f"{cfg['init_from']} holds masks at sparsity {s:g}: leave out --sparsity")
    return model, masks, dict(sparsity=s, masks_from=cfg["init_from"])


def load_splits(cfg, block_size, master):
    """The train and val token files, prepared by rank 0 on first use."""
    data_dir = cfg["data_dir"] or None
    if master:
        ensure_prepared(cfg["dataset"], data_dir)
    parallel.barrier()
    splits = {s: load_tokens(cfg["dataset"], s, data_dir) for s in ("train", "val")}
    for s, toks in splits.items():
        check(len(toks) > block_size + 1, f"{cfg['dataset']} {s} split has {len(toks)} tokens, "
              f"fewer than block_size {block_size}")
    return splits


def main(argv):
    cfg, overrides, ckpt, finished, seen = resolve_config(argv)
    if finished:
        return cfg

    device = pick_device(cfg["device"])
    check(cfg["kernel"] != "csr" or sparse_kernels.supports(device),
          f"--kernel=csr has no sparse kernel for {device} (cpu; cuda with Triton)")
    rank, world, device = parallel.setup(device, cfg["fsdp"])
    master = rank == 0
    accum = cfg["gradient_accumulation_steps"]
    check(accum % world == 0, f"--gradient_accumulation_steps ({accum}) must be a multiple of the "
          f"number of processes ({world})")
    accum //= world
    torch.manual_seed(cfg["seed"])  # same init on every rank
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    model, masks, source_changes = init_model(cfg, overrides, ckpt)
    cfg.update(source_changes)
    if not masks and cfg["sparsity"] > 0:
        masks = sp.make_masks(model, cfg["sparsity"], cfg["mask_method"], cfg["seed"])  # SPDF: fixed for the run
    check(cfg["kernel"] != "csr" or masks, "--kernel=csr needs a sparse model (--sparsity > 0, or --init_from a "
          "checkpoint with masks): a dense one has no zeros to skip")
    mcfg, block_size = model.config, model.config.block_size
    check_memory(model, device, cfg["batch_size"], block_size, show=master,
                 checkpointing=cfg["activation_checkpointing"], shards=world if cfg["fsdp"] else 1,
                 ddp=world > 1 and not cfg["fsdp"], one_pass_head=torch.device(device).type == "cpu",
                 hint="lower --batch_size and raise --gradient_accumulation_steps (the same tokens per step)")
    model.to(device)
    masks = sp.masks_to(masks, device)
    sp.apply_masks(model, masks)  # SPDF: pruned weights are exactly 0 from the start
    sparsity_line = sp.report(model, masks)[1][-1] if masks else None
    csr = cfg["kernel"] == "csr"
    if csr:  # only the kept weights remain, as parameters: nothing is left to mask
        sparse_kernels.to_sparse_model(model, masks)
    model.activation_checkpointing = cfg["activation_checkpointing"]
    if world > 1:
        parallel.check_same(model, masks)
    raw_model = model  # the GPT itself (under FSDP sharded in place, so model and raw_model are one)
    omitter = omission.Omitter(raw_model) if cfg["omit_rate"] else None  # patches the blocks' forwards
    model, step_masks = parallel.wrap(model, {} if csr else masks, cfg["fsdp"], cfg["compile"], device)
    optimizer = configure_optimizer(raw_model, cfg, device)
    if ckpt is not None:  # checkpoints hold dense-shaped moments, whichever kernel wrote them
        state = sparse_kernels.sparse_optimizer_state(ckpt["optimizer"], raw_model, optimizer) if csr else ckpt["optimizer"]
        parallel.load_optimizer(raw_model, optimizer, state)
    sp.mask_optimizer_state(optimizer, raw_model, step_masks)  # SPDF: no stale moment revives a pruned weight

    # data: random windows, drawn from a generator whose state is saved for exact resume
    splits = load_splits(cfg, block_size, master)
    data_gen = torch.Generator().manual_seed(cfg["seed"] + rank)

    # bookkeeping: SPDF's FLOPs accounting for the loss-vs-FLOPs curves, dense FLOPs for MFU
    tokens_per_iter = cfg["batch_size"] * block_size * accum * world
    seqs_per_iter = tokens_per_iter // block_size
    spdf_flops_per_iter = train_flops(mcfg, block_size, cfg["sparsity"], mcfg.vocab_size) * seqs_per_iter
    dense_flops_per_iter = 3 * forward_flops(mcfg, block_size, 0.0, mcfg.vocab_size) * seqs_per_iter
    peak = peak_flops(device)
    iter_num, tokens_seen, flops_spent, best_val = restore_progress(ckpt, rank, device, data_gen)
    decay_iters = cfg["lr_decay_iters"] or cfg["max_iters"]
    dense_from = densify_iter(cfg["densify_at"], cfg["max_iters"])  # Variable SPDF's switch, or None
    if master:
        lock_output(cfg["out_dir"], unchanged=[(os.path.join(cfg["out_dir"], "ckpt.pt"), seen)])  # the run's now
        prepare_run_dir(cfg["out_dir"])
        print(f"{cfg['model']}: {raw_model.num_params():,} parameters{' (kept ones, csr)' if csr else ''}, {world} process(es)"
              f"{' (FSDP)' if cfg['fsdp'] else ''} on {device}, {tokens_per_iter:,} tokens per step")
        if sparsity_line:
            print(sparsity_line)
    log_path = os.path.join(cfg["out_dir"], "log.jsonl")
    if master:  # records past the checkpoint (none for a new run) came from an interrupted or failed run
        trim_log(log_path, iter_num)

    def log(record):
        if master:
            append_line(log_path, json.dumps(record))

    bar = tqdm(total=cfg["max_iters"], initial=iter_num, disable=not master, dynamic_ncols=True)
    t0 = time.time()
    model.train()
    while iter_num < cfg["max_iters"]:
        if masks and dense_from is not None and iter_num >= dense_from:  # Variable SPDF: lift the masks;
            masks, step_masks, cfg["densified_at_iter"] = {}, {}, iter_num  # pruned weights, moments are 0
            if master:
                tqdm.write(f"iter {iter_num}: switching to dense pre-training (Variable SPDF)")
        if omitter:
            omitter.step(iter_num, cfg)
        lr = cosine_lr(iter_num, cfg["learning_rate"], cfg["warmup_iters"], decay_iters, cfg["min_lr_ratio"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(accum):
            x, y = get_batch(splits["train"], cfg["batch_size"], block_size, data_gen, device)
            parallel.set_grad_sync(model, micro == accum - 1)  # sync gradients on the last micro-step only
            with autocast(device):
                _, loss = model(x, y)
            (loss / accum).backward()
            loss_sum += loss.item() / accum
        grad_norm = sp.optimizer_step(optimizer, raw_model, step_masks, cfg["grad_clip"])  # SPDF: masked grads, AdamW, re-mask
        check_finite(grad_norm, "the gradient norm", iter_num + 1)  # first: the same on every rank
        check_finite(loss_sum, "the training loss", iter_num + 1)
        iter_num += 1
        tokens_seen += tokens_per_iter
        flops_spent += spdf_flops_per_iter if masks else dense_flops_per_iter  # dense after a VSPDF switch
        if omitter:
            flops_spent -= omitter.saved_train_flops(block_size, cfg["sparsity"] if masks else 0.0) * seqs_per_iter

        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt, t0 = time.time() - t0, time.time()
        record = dict(iter=iter_num, loss=loss_sum, lr=lr, tokens_seen=tokens_seen,
                      flops_spent=flops_spent, tokens_per_s=tokens_per_iter / dt, step_ms=1000 * dt)
        if omitter:
            record["omit_rate"] = omitter.rate
        if peak:
            record["mfu"] = dense_flops_per_iter / dt / (peak * world)
        if iter_num == cfg["max_iters"] and world > 1:
            record["rank_fingerprints"] = parallel.all_gather(parallel.fingerprint(raw_model, masks))
        if iter_num % cfg["eval_interval"] == 0 or iter_num == cfg["max_iters"]:
            losses = estimate_loss(raw_model, splits, cfg, block_size, device)
            check_finite(losses["val"], "the validation loss", iter_num)
            record.update(train_loss=losses["train"], val_loss=losses["val"])
            best_val = min(best_val, losses["val"])
            log(record)  # before the checkpoint: a saved iteration always has its line
            data_states = parallel.all_gather(data_gen.get_state())
            model_state, optimizer_state = parallel.state_dicts(raw_model, optimizer)  # every rank takes part
            if csr:  # saved as the masked model would be: either kernel resumes it
                model_state = sparse_kernels.dense_state_dict(raw_model)
                optimizer_state = sparse_kernels.dense_optimizer_state(optimizer_state, raw_model, optimizer)
            if master:
                save_checkpoint(checkpoint_dict(
                    model_state, mcfg, cfg, masks, optimizer=optimizer_state, iter_num=iter_num,
                    tokens_seen=tokens_seen, flops_spent=flops_spent, best_val_loss=best_val,
                    rng=dict(torch=torch.get_rng_state(), data=data_states,
                             cuda=torch.cuda.get_rng_state() if device.startswith("cuda") else None),
                ), os.path.join(cfg["out_dir"], "ckpt.pt"))
                tqdm.write(f"iter {iter_num}: train {losses['train']:.4f}, val {losses['val']:.4f}")
            t0 = time.time()  # evaluation time is not training time
        else:
            log(record)
        postfix = dict(loss=f"{loss_sum:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}", flops=f"{flops_spent:.3g}")
        if peak:
            postfix["mfu"] = f"{100 * record['mfu']:.1f}%"
        bar.set_postfix(postfix)
        bar.update(1)
    bar.close()
    if masks:  # every rank: under FSDP each checks its own shards
        assert sp.check_masked(raw_model, step_masks), "a pruned weight is non-zero"
    parallel.teardown()
    release_outputs(cfg["out_dir"])
    return cfg


if __name__ == "__main__":
    run_cli(main)

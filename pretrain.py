"""
Sparse pre-training (SPDF step 1-2): a GPT whose six block matrices carry static random masks,
trained with exactly the dense schedule. --sparsity=0 is the dense baseline.

  python pretrain.py --sparsity=0.75                          # CPU toy run on tinyshakespeare
  python pretrain.py config/pretrain_gpt2_small.py --sparsity=0.75
  torchrun --standalone --nproc_per_node=8 pretrain.py config/pretrain_gpt3_xl.py --sparsity=0.75
  torchrun ... --fsdp=True --activation_checkpointing=True    shard weights, grads and AdamW state (FSDP2);
                                                               recompute block activations in backward

Related systems, as options (their logic lives in their own modules):
  --init_from=out/ckpt.pt --mask_method=sparsegpt --sparsity=0.5   SparseGPT one-shot prune, then sparse
                                                                   continued pre-training (sparsegpt.py)
  --sparsity=0.9 --densify_at=0.87    Variable SPDF: sparse, then dense from 87% of max_iters on
  --init_from=out/ckpt.pt --omit_rate=0.5    SAT-style neuron omission, ladder down to dense (omission.py)

Arguments: config files (Python assignments) and --key=value overrides of DEFAULTS below.
"""
import json
import os
import time
from dataclasses import asdict

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import distribute_tensor
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import hf
import omission
import sparsegpt
import sparsity as sp
from common import (autocast, check, cosine_lr, decay_groups, load_checkpoint, parse_config,
                    peak_flops, pick_device, run_cli, save_checkpoint)
from data.prepare import DATASETS, ensure_prepared, load_tokens
from flops import densify_iter, forward_flops, train_flops
from model import GPT, PRESETS, GPTConfig

DEFAULTS = dict(
    # model and sparsity
    model="tiny",               # a preset from model.PRESETS
    block_size=0,               # context length; 0 = the preset's
    dropout=0.0,
    sparsity=0.0,               # fraction of zeros in each of the six block matrices; 0 = dense
    mask_method="random",       # how masks are chosen (sparsity.MASK_METHODS, or sparsegpt)
    calib_samples=128,          # sparsegpt: calibration sequences from the train split
    prune_n=0,                  # sparsegpt n:m pattern, e.g. 2 and 4 for 2:4 (0 = unstructured)
    prune_m=0,
    densify_at=0.0,             # Variable SPDF: go dense at this fraction of max_iters (< 1) or iteration; 0 = never
    omit_rate=0.0,              # SAT-style neuron omission: peak fraction of MLP channels and heads skipped
    omit_schedule="ladder",     # omission rungs: 'ladder' (1, 2/3, 1/3, 0) or comma-separated multipliers ending in 0
    # data
    dataset="shakespeare",      # data/prepare.py DATASETS; prepared on first use
    data_dir="",                # folder with train.bin/val.bin; "" = data/<dataset>
    batch_size=8,               # sequences per micro-step per process
    gradient_accumulation_steps=1,  # micro-steps per optimizer step (summed over processes)
    # optimizer: the paper's AdamW (supplement A.1)
    learning_rate=1e-3,
    max_iters=200,
    warmup_iters=20,            # the paper: 375M tokens
    lr_decay_iters=0,           # cosine decay length; 0 = max_iters
    min_lr_ratio=0.1,           # decay to 10% of peak
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    grad_clip=1.0,
    # run
    out_dir="out",
    init_from="scratch",        # scratch | resume | a checkpoint (its weights, new masks) | gpt2[-medium|-large|-xl] | HF GPT-2 folder
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
    check(cfg["mask_method"] in (*sp.MASK_METHODS, "sparsegpt"),
          f"unknown mask_method {cfg['mask_method']!r} (choose from {', '.join(sp.MASK_METHODS)}, sparsegpt)")
    check(cfg["mask_method"] != "sparsegpt" or cfg["init_from"] != "scratch",
          "--mask_method=sparsegpt prunes a trained model: give --init_from=<checkpoint>")
    check(cfg["calib_samples"] >= 1, "--calib_samples must be at least 1")
    check(*sparsegpt.validate_pattern(cfg["sparsity"], cfg["prune_n"], cfg["prune_m"]))
    check(not cfg["prune_n"] or cfg["mask_method"] == "sparsegpt", "--prune_n/--prune_m need --mask_method=sparsegpt")
    check(cfg["densify_at"] >= 0, "--densify_at must be non-negative")
    check(0.0 <= cfg["omit_rate"] < 1.0, f"--omit_rate must be in [0, 1), got {cfg['omit_rate']}")
    check(not (cfg["omit_rate"] and cfg["compile"]), "--omit_rate does not work with --compile")
    check(not (cfg["omit_rate"] and cfg["fsdp"]), "--omit_rate does not work with --fsdp")
    check(not (cfg["omit_rate"] and cfg["activation_checkpointing"]),  # the recompute would observe twice
          "--omit_rate does not work with --activation_checkpointing")
    try:
        omission.parse_schedule(cfg["omit_schedule"])
    except ValueError as e:
        check(False, str(e))
    check(cfg["dataset"] in DATASETS, f"unknown dataset {cfg['dataset']!r} (choose from {', '.join(DATASETS)})")
    for key in ("batch_size", "gradient_accumulation_steps", "max_iters", "eval_interval", "eval_iters"):
        check(cfg[key] >= 1, f"--{key} must be at least 1, got {cfg[key]}")
    for key in ("block_size", "warmup_iters", "lr_decay_iters"):
        check(cfg[key] >= 0, f"--{key} must be non-negative, got {cfg[key]}")
    check(cfg["learning_rate"] > 0, "--learning_rate must be positive")
    check(0.0 <= cfg["dropout"] < 1.0, "--dropout must be in [0, 1)")
    check(cfg["init_from"] in ("scratch", "resume") or os.path.exists(cfg["init_from"]) or hf.is_hf_source(cfg["init_from"]),
          f"--init_from must be scratch, resume, an existing checkpoint or {'/'.join(hf.HUB_NAMES)}, got {cfg['init_from']!r}")


def setup_distributed(device):
    """Under torchrun: join the process group; returns (rank, local_rank, world_size, device)."""
    if "RANK" not in os.environ:
        return 0, 0, 1, device
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank, local_rank, world, device


def fingerprint(model, masks):
    """Two numbers that differ if any weight or mask differs; compared across ranks."""
    full = lambda p: p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP: gather one weight at a time
    w = sum(float(full(p.detach()).double().sum()) for p in model.parameters())
    m = sum(float(mask.double().mul(torch.arange(mask.numel(), device=mask.device).view(mask.shape) % 9973).sum())
            for mask in masks.values())
    return [w, m]


def shard(model, masks, device, compile):
    """FSDP2: one all-gather / reduce-scatter group per block, the root (embeddings, final LayerNorm)
    another. Parameters become DTensors sharded on dim 0; returns the masks sharded the same way."""
    mesh = init_device_mesh(device.split(":")[0], (dist.get_world_size(),))
    for block in model.transformer.h:
        if compile:
            block.compile()  # per block and in place (parameter names unchanged), before sharding
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    params = dict(model.named_parameters())
    # every rank holds the same full masks (checked), so each slices its own shard: no communication
    return {n: distribute_tensor(m, params[n].device_mesh, params[n].placements, src_data_rank=None)
            for n, m in masks.items()}


# FSDP state dicts key the optimizer state by parameter name; checkpoints use optimizer.state_dict()'s
# numbering (parameters in param-group order), so runs with and without FSDP can resume each other
def optimizer_state_by_index(state):
    index = {name: i for i, name in enumerate(n for g in state["param_groups"] for n in g["params"])}
    return dict(state={index[n]: s for n, s in state["state"].items()},
                param_groups=[{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]])


def optimizer_state_by_name(state, optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    name = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    return dict(state={name[i]: s for i, s in state["state"].items()},
                param_groups=[{**g, "params": [name[i] for i in g["params"]]} for g in state["param_groups"]])


def configure_optimizer(model, cfg, device):
    """The paper's AdamW; weight decay on matrices only (biases and LayerNorms get none)."""
    return torch.optim.AdamW(decay_groups(model, cfg["weight_decay"]), lr=cfg["learning_rate"], betas=(cfg["beta1"], cfg["beta2"]),
                             eps=cfg["eps"], fused=device.startswith("cuda"))


def main(argv):
    cfg, overrides = parse_config(DEFAULTS, argv)
    validate(cfg)
    ckpt = None
    if cfg["init_from"] == "resume":
        ckpt = load_checkpoint(os.path.join(cfg["out_dir"], "ckpt.pt"))
        for key in ("model", "sparsity", "block_size", "mask_method"):  # fixed for the run's life
            check(key not in overrides or overrides[key] == ckpt["config"][key],
                  f"--{key} cannot change on resume (checkpoint has {ckpt['config'][key]!r})")
        cfg = {**DEFAULTS, **ckpt["config"], **overrides}
        validate(cfg)

    device = pick_device(cfg["device"])
    rank, _, world, device = setup_distributed(device)
    master = rank == 0
    check(not cfg["fsdp"] or dist.is_initialized(), "--fsdp shards over processes: launch with torchrun, "
          "e.g. torchrun --standalone --nproc_per_node=2 pretrain.py --fsdp=True")
    check(not cfg["fsdp"] or device.startswith(("cuda", "cpu")), "--fsdp needs --device=cuda or cpu")
    accum = cfg["gradient_accumulation_steps"]
    check(accum % world == 0, f"--gradient_accumulation_steps ({accum}) must be a multiple of the "
          f"number of processes ({world})")
    accum //= world
    torch.manual_seed(cfg["seed"])  # same init on every rank
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # model and masks
    if ckpt is not None:
        mcfg = GPTConfig(**ckpt["model_config"])
    else:
        # the preset, or a Hugging Face GPT-2's own architecture (hf.py)
        mcfg = hf.resolve_model_config(cfg["init_from"], PRESETS[cfg["model"]], cfg["dropout"], cfg["block_size"])
    block_size = mcfg.block_size
    model = GPT(mcfg)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        masks = ckpt["masks"]
    else:
        if cfg["init_from"] != "scratch":  # continue from another run's weights, e.g. a dense one
            source = hf.load_source(cfg["init_from"], block_size=mcfg.block_size)  # or an HF GPT-2
            check(source["model_config"] == asdict(mcfg) | {"dropout": source["model_config"]["dropout"]},
                  f"{cfg['init_from']} holds a different architecture than --model={cfg['model']}")
            model.load_state_dict(source["model"])
        if cfg["mask_method"] == "sparsegpt" and cfg["sparsity"] > 0:  # one-shot OBS prune: changes weights
            ensure_prepared(cfg["dataset"], cfg["data_dir"] or None)
            calib = sparsegpt.calibration_batches(load_tokens(cfg["dataset"], "train", cfg["data_dir"] or None),
                                                  cfg["calib_samples"], block_size, cfg["seed"])
            masks = sparsegpt.prune(model.to(device), calib, cfg["sparsity"], cfg["prune_n"], cfg["prune_m"])
        else:
            masks = sp.make_masks(model, cfg["sparsity"], cfg["mask_method"], cfg["seed"]) if cfg["sparsity"] > 0 else {}
    model.to(device)
    masks = sp.masks_to(masks, device)
    sp.apply_masks(model, masks)
    model.activation_checkpointing = cfg["activation_checkpointing"]
    if dist.is_initialized():  # before DDP's broadcast or FSDP's sharding could hide a difference
        prints = [None] * world
        dist.all_gather_object(prints, fingerprint(model, masks))
        check(all(p == prints[0] for p in prints), "ranks disagree on initial weights or masks")

    raw_model = model  # the GPT itself (under FSDP sharded in place, so model and raw_model are one)
    # SAT-style omission patches the blocks' forwards to compute only the kept units
    omitter = omission.Omitter(raw_model) if cfg["omit_rate"] > 0 else None
    step_masks = masks  # the masks laid out like the parameters: sharded DTensors under FSDP
    if cfg["fsdp"]:
        step_masks = shard(model, masks, device, cfg["compile"])
    else:
        if cfg["compile"]:
            model = torch.compile(model)
        if world > 1:
            model = DDP(model, device_ids=[int(device.split(":")[1])] if device.startswith("cuda") else None)
    optimizer = configure_optimizer(raw_model, cfg, device)
    if ckpt is not None and cfg["fsdp"]:  # every rank read the full state; each keeps its shards
        set_optimizer_state_dict(model, optimizer, optimizer_state_by_name(ckpt["optimizer"], optimizer, model),
                                 options=StateDictOptions(full_state_dict=True))
    elif ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    sp.mask_optimizer_state(optimizer, raw_model, step_masks)

    # data: random windows, drawn from a generator whose state is saved for exact resume
    data_dir = cfg["data_dir"] or None
    if master:
        ensure_prepared(cfg["dataset"], data_dir)
    if world > 1:
        dist.barrier()
    splits = {s: load_tokens(cfg["dataset"], s, data_dir) for s in ("train", "val")}
    for s, toks in splits.items():
        check(len(toks) > block_size + 1, f"{cfg['dataset']} {s} split has {len(toks)} tokens, "
              f"fewer than block_size {block_size}")
    data_gen = torch.Generator().manual_seed(cfg["seed"] + rank)

    def get_batch(split, gen):
        toks = splits[split]
        ix = torch.randint(len(toks) - block_size - 1, (cfg["batch_size"],), generator=gen).tolist()
        x = torch.stack([torch.from_numpy(toks[i:i + block_size].astype("int64")) for i in ix])
        y = torch.stack([torch.from_numpy(toks[i + 1:i + 1 + block_size].astype("int64")) for i in ix])
        return x.to(device), y.to(device)

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {}
        for split in ("train", "val"):
            gen = torch.Generator().manual_seed(cfg["seed"] + 7)  # the same batches at every eval
            losses = []
            for _ in range(cfg["eval_iters"]):
                with autocast(device):
                    losses.append(raw_model(*get_batch(split, gen))[1].item())
            out[split] = sum(losses) / len(losses)
        if cfg["fsdp"]:  # no backward follows to free the root's gathered weights; go back to the shards
            model.reshard()
        model.train()
        return out

    # bookkeeping: SPDF's FLOPs accounting for the loss-vs-FLOPs curves, dense FLOPs for MFU
    tokens_per_iter = cfg["batch_size"] * block_size * accum * world
    seqs_per_iter = tokens_per_iter // block_size
    spdf_flops_per_iter = train_flops(mcfg, block_size, cfg["sparsity"], mcfg.vocab_size) * seqs_per_iter
    dense_flops_per_iter = 3 * forward_flops(mcfg, block_size, 0.0, mcfg.vocab_size) * seqs_per_iter
    peak = peak_flops(device)
    iter_num, tokens_seen, flops_spent = 0, 0, 0.0
    best_val = float("inf")
    if ckpt is not None:
        iter_num, tokens_seen, flops_spent = ckpt["iter_num"], ckpt["tokens_seen"], ckpt["flops_spent"]
        best_val = ckpt.get("best_val_loss", best_val)
        torch.set_rng_state(ckpt["rng"]["torch"])
        data_gen.set_state(ckpt["rng"]["data"][rank] if rank < len(ckpt["rng"]["data"]) else data_gen.get_state())
        if device.startswith("cuda") and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
    decay_iters = cfg["lr_decay_iters"] or cfg["max_iters"]
    dense_from = densify_iter(cfg["densify_at"], cfg["max_iters"])  # Variable SPDF's switch, or None

    if master:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        print(f"{cfg['model']}: {raw_model.num_params():,} parameters, {world} process(es)"
              f"{' (FSDP)' if cfg['fsdp'] else ''} on {device}, {tokens_per_iter:,} tokens per step")
        if masks:
            summary, lines = sp.report(raw_model, masks)
            print(lines[-1])
    log_path = os.path.join(cfg["out_dir"], "log.jsonl")

    def log(record):
        if master:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def save():
        data_states = [data_gen.get_state()]
        if world > 1:
            data_states = [None] * world
            dist.all_gather_object(data_states, data_gen.get_state())
        if cfg["fsdp"]:  # collectives on every rank; rank 0 gets the full tensors, on the CPU
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_state = get_model_state_dict(model, options=options)
            optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
            if master:  # the gather copies the tied head; share one tensor again, as state_dict() does
                model_state["lm_head.weight"] = model_state["transformer.wte.weight"]
                optimizer_state = optimizer_state_by_index(optimizer_state)
        else:
            model_state, optimizer_state = raw_model.state_dict(), optimizer.state_dict()
        if master:
            save_checkpoint(dict(
                model=model_state, masks={n: m.cpu() for n, m in masks.items()},
                optimizer=optimizer_state, config=cfg, model_config=asdict(mcfg),
                iter_num=iter_num, tokens_seen=tokens_seen, flops_spent=flops_spent, best_val_loss=best_val,
                rng=dict(torch=torch.get_rng_state(), data=data_states,
                         cuda=torch.cuda.get_rng_state() if device.startswith("cuda") else None),
            ), os.path.join(cfg["out_dir"], "ckpt.pt"))

    bar = tqdm(total=cfg["max_iters"], initial=iter_num, disable=not master, dynamic_ncols=True)
    t0 = time.time()
    model.train()
    while iter_num < cfg["max_iters"]:
        if masks and dense_from is not None and iter_num >= dense_from:  # Variable SPDF: lift the masks;
            masks, step_masks, cfg["densified_at_iter"] = {}, {}, iter_num  # pruned weights, moments are 0
            if master:
                tqdm.write(f"iter {iter_num}: switching to dense pre-training (Variable SPDF)")
        if omitter:
            omitter.set_rate(omission.rate_at(iter_num, cfg["max_iters"], cfg["omit_rate"],
                                              omission.parse_schedule(cfg["omit_schedule"])))
        lr = cosine_lr(iter_num, cfg["learning_rate"], cfg["warmup_iters"], decay_iters, cfg["min_lr_ratio"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(accum):
            x, y = get_batch("train", data_gen)
            if cfg["fsdp"]:  # sync gradients (FSDP: reduce-scatter, DDP: all-reduce) only on the last micro-step
                model.set_requires_gradient_sync(micro == accum - 1)
            elif world > 1:
                model.require_backward_grad_sync = micro == accum - 1
            with autocast(device):
                _, loss = model(x, y)
            (loss / accum).backward()
            loss_sum += loss.item() / accum
        sp.mask_grads(raw_model, step_masks)
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg["grad_clip"])
        optimizer.step()
        sp.apply_masks(raw_model, step_masks)  # AdamW's decoupled decay touches every entry
        optimizer.zero_grad(set_to_none=True)
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
        if iter_num % cfg["eval_interval"] == 0 or iter_num == cfg["max_iters"]:
            losses = estimate_loss()
            record.update(train_loss=losses["train"], val_loss=losses["val"])
            best_val = min(best_val, losses["val"])
            save()
            if master:
                tqdm.write(f"iter {iter_num}: train {losses['train']:.4f}, val {losses['val']:.4f}")
            t0 = time.time()  # evaluation time is not training time
        if iter_num == cfg["max_iters"] and world > 1:
            prints = [None] * world
            dist.all_gather_object(prints, fingerprint(raw_model, masks))
            record["rank_fingerprints"] = prints
        log(record)
        postfix = dict(loss=f"{loss_sum:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}", flops=f"{flops_spent:.3g}")
        if peak:
            postfix["mfu"] = f"{100 * record['mfu']:.1f}%"
        bar.set_postfix(postfix)
        bar.update(1)
    bar.close()
    if masks:  # every rank: under FSDP each checks its own shards
        assert sp.check_masked(raw_model, step_masks), "a pruned weight is non-zero"
    if dist.is_initialized():
        dist.destroy_process_group()
    return cfg


if __name__ == "__main__":
    run_cli(main)

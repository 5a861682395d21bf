"""
Dense fine-tuning and evaluation (SPDF step 3): start from a (sparse) pre-trained checkpoint,
lift the masks (pruned weights start at 0 and learn) and train every parameter on a downstream
task; then decode the test set with beam search and score it with the task's official metrics.
--sparse=True keeps the masks instead (the paper's sparse fine-tuning baseline); with --kernel=csr its
block matrices are sparse_kernels.SparseLinear, which skip the zeros (same mathematics, same checkpoint).
--soft_prompt=N prepends N learned input vectors (MediSwift's soft prompting, Lester et al. 2021
prompt tuning); --freeze_model=True trains those alone.

  python finetune.py --task=e2e --init_from=out                    # a pre-training out_dir
  python finetune.py --task=webnlg --init_from=out/ckpt.pt --sparse=True
  python finetune.py --task=curation --data=curation-corpus.csv --init_from=out
  python finetune.py --task=e2e --init_from=out-finetune --eval_only=True --beam_size=1
  python finetune.py --task=e2e --init_from=out --soft_prompt=20 --freeze_model=True

Writes <out_dir>/ckpt.pt (best validation loss), predictions.txt, references.txt, metrics.json.
"""
import json
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import checkpoint
import sparse_kernels
import sparsity as sp
from checkpoint import checkpoint_dict, save_checkpoint
from common import (autocast, check, check_finite, check_memory, check_writable_dir, completion_rows, lock_output,
                    parse_config, pick_device, prepare_run_dir, release_outputs, run_cli, write_output)
from data.sources import EOT, get_tokenizer
from data.tasks import NLG_TASKS, TASKS, encode_example, load_examples, load_groups
from decode import decode_groups
from flops import train_flops
from hf import load_any
from model import decay_groups, fused_adamw, linear_lr
from related.softprompt import setup_soft_prompt

DEFAULTS = dict(
    recipe="toy",               # a label for the screen and metrics.json (config/finetune_paper.py: "paper")
    task="e2e",                 # e2e | webnlg | dart | curation | summarization
    data="",                    # curation/summarization: CSV or JSON lines with article, summary
    init_from="",               # a pre-training checkpoint or out_dir (or a fine-tuned one), gpt2 or an HF GPT-2 folder
    sparse=False,               # keep the pre-training masks (sparse fine-tuning baseline)
    kernel="masked",            # with --sparse=True: masked (dense matmuls on masked weights) | csr (zeros skipped)
    out_dir="out-finetune",
    eval_only=False,            # score init_from as it is, no training
    # optimization: a CPU toy recipe (minutes); the paper's (LoRA's GPT-2 recipe, grid-searched
    # batch and LR per task) is config/finetune_paper.py
    max_epochs=1,
    patience=1,                 # early stopping: epochs without a better validation loss
    batch_size=8,
    learning_rate=1e-3,
    warmup_iters=50,            # capped at 10% of all steps, so short runs still decay
    weight_decay=0.01,
    grad_clip=1.0,
    label_smoothing=-1.0,       # -1 = per task (LoRA: 0.1 E2E/WebNLG, 0 DART/summarization)
    dropout=-1.0,               # -1 = per task (LoRA: 0.1 E2E/WebNLG, 0 DART/summarization)
    max_examples=6000,          # >0: train on a random subset this large; 0 = the whole split
    val_examples=300,           # >0: validate on a fixed random subset (the same for every run); 0 = all
    # soft prompt (MediSwift): N vectors before every input, initialized from the embeddings of N
    # distinct tokens sampled from ids < 5000 (Lester et al.'s "sampled vocabulary" init)
    soft_prompt=0,
    soft_prompt_lr=-1.0,        # -1 = learning_rate (prompt tuning alone often wants a larger one)
    freeze_model=False,         # train the soft prompt only: model weights stay as loaded
    # decoding: LoRA's Table 11 settings are beam 10 over every test input (config/finetune_paper.py)
    beam_size=4,
    length_penalty=-1.0,        # -1 = per task: 0.9 E2E, 0.8 WebNLG/DART
    no_repeat_ngram=4,
    max_new_tokens=64,
    eval_examples=100,          # >0: decode a fixed random subset of N test inputs (seen and unseen alike); 0 = all
    decode_batch=16,            # test inputs decoded together (each with beam_size beams)
    device="auto",
    seed=1337,
)
PER_TASK = {  # label_smoothing, dropout, length_penalty
    "e2e": (0.1, 0.1, 0.9), "webnlg": (0.1, 0.1, 0.8), "dart": (0.0, 0.0, 0.8),
    "curation": (0.0, 0.0, 1.0), "summarization": (0.0, 0.0, 1.0),
}


def validate(cfg):
    check(cfg["task"] in TASKS, f"unknown task {cfg['task']!r} (choose from {', '.join(TASKS)})")
    check(bool(cfg["init_from"]), "--init_from=<checkpoint or pre-training out_dir> is required")
    for key in ("max_epochs", "batch_size", "beam_size", "max_new_tokens", "decode_batch"):
        check(cfg[key] >= 1, f"--{key} must be at least 1, got {cfg[key]}")
    for key in ("max_examples", "val_examples", "eval_examples", "warmup_iters", "no_repeat_ngram", "patience"):
        check(cfg[key] >= 0, f"--{key} must be non-negative, got {cfg[key]}")
    check(cfg["learning_rate"] > 0, "--learning_rate must be positive")
    check(cfg["kernel"] in ("masked", "csr"), f"--kernel must be masked or csr, got {cfg['kernel']!r}")
    check(cfg["kernel"] != "csr" or cfg["sparse"], "--kernel=csr needs --sparse=True: dense fine-tuning trains "
          "every weight, so there are no zeros to skip")
    check(cfg["soft_prompt"] >= 0, f"--soft_prompt must be non-negative, got {cfg['soft_prompt']}")
    check(cfg["soft_prompt_lr"] == -1 or cfg["soft_prompt_lr"] > 0, "--soft_prompt_lr must be positive (or -1)")
    check(not cfg["freeze_model"] or cfg["soft_prompt"] > 0 or cfg["eval_only"],
          "--freeze_model=True leaves nothing to train without --soft_prompt=N")
    check(cfg["label_smoothing"] == -1 or 0 <= cfg["label_smoothing"] < 1, "--label_smoothing must be in [0, 1)")
    check(cfg["dropout"] == -1 or 0 <= cfg["dropout"] < 1, "--dropout must be in [0, 1)")
    check(cfg["length_penalty"] == -1 or cfg["length_penalty"] >= 0, "--length_penalty must be >= 0")
    if cfg["task"] in ("curation", "summarization"):
        check(bool(cfg["data"]), f"--task={cfg['task']} needs --data=<file>")
    else:
        check(not cfg["data"], f"--task={cfg['task']} reads its own data: --data is only for curation/summarization")
    ls, do, lp = PER_TASK[cfg["task"]]
    cfg["label_smoothing"] = ls if cfg["label_smoothing"] == -1 else cfg["label_smoothing"]
    cfg["dropout"] = do if cfg["dropout"] == -1 else cfg["dropout"]
    cfg["length_penalty"] = lp if cfg["length_penalty"] == -1 else cfg["length_penalty"]


def batches(examples, batch_size, shuffle, rng):
    """Batches of examples. Shuffled: random order, but each batch drawn from a window of 50
    batches sorted by length, so a batch pads little (E2E: 28 % padding at random, ~2 % so)."""
    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)
    window = 50 * batch_size
    order = [i for w in range(0, len(order), window)
             for i in sorted(order[w:w + window], key=lambda j: len(examples[j][0]))]
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        rng.shuffle(chunks)
    for chunk in chunks:
        yield [examples[j] for j in chunk]


def collate(batch, device):
    """Right-pad (ids, mask) pairs: x = ids[:-1], y = ids[1:], loss only on completion targets."""
    T = max(len(ids) for ids, _ in batch) - 1
    x = torch.full((len(batch), T), EOT, dtype=torch.long)
    y = torch.full((len(batch), T), EOT, dtype=torch.long)
    m = torch.zeros((len(batch), T), dtype=torch.bool)
    for i, (ids, mask) in enumerate(batch):
        n = len(ids) - 1
        x[i, :n], y[i, :n] = torch.tensor(ids[:-1]), torch.tensor(ids[1:])
        m[i, :n] = torch.tensor(mask)
    return x.to(device), y.to(device), m.to(device)


def completion_loss(model, x, y, m, label_smoothing=0.0, prompt=None):
    """Cross-entropy over completion tokens (sum, count), optionally label-smoothed.
    prompt (N, d): soft prompt before every sequence (the model returns logits for x only).
    Logits are computed at the completion positions alone: the LM head is skipped where no loss is taken."""
    logits, _ = model(x, prefix_embeds=None if prompt is None else prompt[None], positions=m)
    loss = F.cross_entropy(logits.float(), y[m], reduction="sum", label_smoothing=label_smoothing)
    return loss, m.sum().float()


@torch.no_grad()
def evaluate_loss(model, examples, batch_size, device, prompt=None):
    """Mean completion-token NLL (no label smoothing) over all examples."""
    model.eval()
    total, count = 0.0, 0.0
    for batch in batches(examples, 4 * batch_size, False, None):  # no gradients: larger batches
        x, y, m = collate(batch, device)
        with autocast(device):
            s, n = completion_loss(model, x, y, m, prompt=prompt)
        total, count = total + s.item(), count + n.item()
    model.train()
    return total / max(count, 1.0)


def init_model(cfg, device):
    """Model, masks to keep (empty for dense FT), the pre-training sparsity, checkpoint."""
    model, ckpt = load_any(cfg["init_from"], dropout=cfg["dropout"])
    pretrain_sparsity = checkpoint.pretrain_sparsity(ckpt)
    masks = ckpt.get("masks") or {}
    if masks:
        sp.apply_masks(model, masks)  # pruned entries are 0 already; make sure
    if not cfg["sparse"]:
        masks = {}  # SPDF: lift the masks, pruned weights start at 0 and train
    elif not masks and pretrain_sparsity > 0 and not cfg["eval_only"]:
        check(False, f"--sparse=True but {cfg['init_from']} holds no masks")
    check(cfg["kernel"] != "csr" or masks, f"--kernel=csr needs a sparse checkpoint: {cfg['init_from']} holds no masks")
    if cfg["kernel"] == "csr":  # only the kept weights remain, as parameters
        sparse_kernels.to_sparse_model(model, masks)
    return model.to(device), sp.masks_to(masks, device), pretrain_sparsity, ckpt


def finetune(cfg, model, masks, train, val, device, pretrain_sparsity, prompt=None):
    """Train with early stopping on validation loss; returns (best state, best prompt, log dict)."""
    if cfg["freeze_model"]:
        model.requires_grad_(False)  # prompt tuning: only the soft prompt learns
    groups = [dict(g, base_lr=cfg["learning_rate"]) for g in decay_groups(model, cfg["weight_decay"])]
    if prompt is not None:  # no weight decay: it would pull the vectors away from the embedding scale
        prompt_lr = cfg["learning_rate"] if cfg["soft_prompt_lr"] == -1 else cfg["soft_prompt_lr"]
        groups.append(dict(params=[prompt], weight_decay=0.0, base_lr=prompt_lr))
    groups = [g for g in groups if g["params"]]
    trainable = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg["learning_rate"], fused=fused_adamw(device))
    step_masks = {} if cfg["kernel"] == "csr" else masks  # csr: nothing left to mask
    sp.mask_optimizer_state(optimizer, model, step_masks)
    n_prompt = 0 if prompt is None else prompt.size(0)
    steps_per_epoch = math.ceil(len(train) / cfg["batch_size"])
    total_steps = steps_per_epoch * cfg["max_epochs"]
    warmup = min(cfg["warmup_iters"], total_steps // 10)
    flops_sparsity = pretrain_sparsity if masks else 0.0
    rng = random.Random(cfg["seed"])
    step, flops, best_val, best_state, bad_epochs, history = 0, 0.0, float("inf"), None, 0, []
    best_prompt = None
    t0 = time.time()
    model.train()
    for epoch in range(cfg["max_epochs"]):
        bar = tqdm(batches(train, cfg["batch_size"], True, rng), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{cfg['max_epochs']}", dynamic_ncols=True)
        for batch in bar:
            lr = linear_lr(step, cfg["learning_rate"], warmup, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["base_lr"] / cfg["learning_rate"]
            x, y, m = collate(batch, device)
            with autocast(device):
                s, n = completion_loss(model, x, y, m, cfg["label_smoothing"], prompt)
            loss = s / n.clamp(min=1)
            loss.backward()
            grad_norm = sp.optimizer_step(optimizer, model, step_masks, cfg["grad_clip"], trainable)  # empty: dense FT
            check_finite(loss.item(), "the training loss", step + 1)
            check_finite(grad_norm, "the gradient norm", step + 1)
            # FLOPs of this step: every sequence at the padded length the model actually ran
            step_flops = train_flops(model.config, n_prompt + x.size(1), flops_sparsity,
                                     model.config.vocab_size) * x.size(0)
            # a frozen model still back-propagates to its inputs but computes no weight gradients
            flops += step_flops * (2 / 3 if cfg["freeze_model"] else 1)
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            if step == 20 and total_steps > 100:  # a long run says early how long it will take
                est = (time.time() - t0) / step * total_steps
                bar.write(f"{cfg['recipe']} recipe: {total_steps:,} steps, about {est / 60:.0f} min of training"
                          f" at this pace (then validation each epoch and the beam-{cfg['beam_size']} decode)")
        bar.close()
        val_loss = evaluate_loss(model, val, cfg["batch_size"], device, prompt)
        check_finite(val_loss, "the validation loss", step)
        history.append(dict(epoch=epoch + 1, step=step, val_loss=val_loss, flops=flops))
        print(f"epoch {epoch + 1}: val loss {val_loss:.4f} (ppl {math.exp(min(val_loss, 50)):.2f})")
        if val_loss < best_val:
            best_val, bad_epochs = val_loss, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in sparse_kernels.dense_state_dict(model).items()}
            best_prompt = None if prompt is None else prompt.detach().to("cpu", copy=True)
        else:
            bad_epochs += 1
            if cfg["patience"] and bad_epochs >= cfg["patience"]:
                print(f"early stopping: validation loss has not improved for {bad_epochs} epoch(s)")
                break
    log = dict(steps=step, epochs=len(history), best_val_loss=best_val, history=history,
               flops=flops, train_seconds=time.time() - t0, warmup_iters=warmup)
    return best_state, best_prompt, log


def main(argv):
    cfg, overrides = parse_config(DEFAULTS, argv)
    validate(cfg)
    device = pick_device(cfg["device"])
    check(cfg["kernel"] != "csr" or sparse_kernels.supports(device), f"--kernel=csr has no sparse kernel for {device}")
    torch.manual_seed(cfg["seed"])
    out_dir = Path(cfg["out_dir"] if "out_dir" in overrides or not cfg["eval_only"]
                   else (cfg["init_from"] if os.path.isdir(cfg["init_from"]) else os.path.dirname(cfg["init_from"])))
    check(cfg["eval_only"] or not (out_dir / "ckpt.pt").exists(),
          f"{out_dir / 'ckpt.pt'} exists: choose another --out_dir (saved work is never overwritten)")
    check_writable_dir(out_dir)
    model, masks, pretrain_sparsity, ckpt = init_model(cfg, device)
    prompt = setup_soft_prompt(cfg, model, ckpt)
    n_prompt = 0 if prompt is None else prompt.size(0)
    enc = get_tokenizer()
    task, block = cfg["task"], model.config.block_size - n_prompt  # the soft prompt takes the first positions
    print(f"recipe: {cfg['recipe']}" + (" (a CPU toy: a subset, 1 epoch; the paper's is config/finetune_paper.py)"
                                         if cfg["recipe"] == "toy" else ""))
    print(f"{task}: {model.num_params():,} parameters from {cfg['init_from']} (pre-trained at sparsity "
          f"{pretrain_sparsity:.0%}), {'sparse' if masks else 'dense'} fine-tuning on {device}")
    if prompt is not None:
        print(f"soft prompt: {n_prompt} vectors ({prompt.numel():,} parameters)"
              + (", model frozen" if cfg["freeze_model"] else ""))

    run_log = dict(ckpt.get("finetune", {})) if cfg["eval_only"] else {}
    if not cfg["eval_only"]:
        train, val, note = load_examples(task, cfg["data"], cfg["seed"], enc, block, cfg["max_examples"],
                                         cfg["val_examples"])
        if note:
            print(f"note: {note}")
            run_log["data_note"] = note
        print(f"{len(train):,} training and {len(val):,} validation examples")
        check_memory(model, device, min(cfg["batch_size"], len(train)),
                     n_prompt + max(len(ids) - 1 for ids, _ in train + val), "lower --batch_size",
                     logit_rows=completion_rows(train, val, cfg["batch_size"]),
                     n_trainable=0 if cfg["freeze_model"] else model.num_params())  # + the prompt: negligible
        lock_output(out_dir, unchanged=[(out_dir / "ckpt.pt", None)])  # the folder is this run's
        prepare_run_dir(out_dir)
        best_state, best_prompt, log = finetune(cfg, model, masks, train, val, device, pretrain_sparsity, prompt)
        sparse_kernels.to_dense_model(model)  # --kernel=csr: back to the masked model, which the state is of
        model.load_state_dict(best_state)
        if prompt is not None:
            with torch.no_grad():
                prompt.copy_(best_prompt)
        if masks:
            assert sp.check_masked(model, masks), "a pruned weight is non-zero after sparse fine-tuning"
        run_log.update(log)
        save_checkpoint(checkpoint_dict(best_state, model.config, cfg, masks, pretrain_sparsity=pretrain_sparsity,
                                        pretrain_config=ckpt.get("config", {}), finetune=run_log,
                                        iter_num=log["steps"], best_val_loss=log["best_val_loss"],
                                        **({} if prompt is None else dict(soft_prompt=best_prompt))),
                        out_dir / "ckpt.pt")
        print(f"saved the best model (val loss {log['best_val_loss']:.4f}) to {out_dir / 'ckpt.pt'}")

    # evaluation on the test split
    lock_output(out_dir)  # (already ours after training)
    out_dir.mkdir(parents=True, exist_ok=True)
    test_groups, note = load_groups(task, "test", cfg["data"], cfg["seed"])
    if cfg["eval_examples"] and cfg["eval_examples"] < len(test_groups):  # the same subset for every run
        keep = sorted(random.Random(0).sample(range(len(test_groups)), cfg["eval_examples"]))
        test_groups = [test_groups[i] for i in keep]
    check(test_groups, f"{task}: empty test split")
    trained = ckpt.get("config", {}) if cfg["eval_only"] else cfg  # the fine-tuning run's settings
    metrics = dict(task=task, recipe=trained.get("recipe", cfg["recipe"]), n_examples=len(test_groups), sparse_finetune=bool(cfg["sparse"]),
                   pretrain_sparsity=pretrain_sparsity, init_from=str(cfg["init_from"]),
                   soft_prompt=n_prompt, freeze_model=bool(trained.get("freeze_model", False)))
    soft = None if prompt is None else prompt.detach()
    if task in NLG_TASKS:
        t0 = time.time()
        hyps = decode_groups(cfg, model, enc, test_groups, device, soft)
        metrics["decode_seconds"] = time.time() - t0
        refs = [g["refs"] for g in test_groups]
        write_output(out_dir / "predictions.txt", "".join(h + "\n" for h in hyps))
        write_output(out_dir / "references.txt", "\n".join("".join(r + "\n" for r in rs) for rs in refs))
        from metrics import nlg_metrics
        metrics.update(nlg_metrics(task, hyps, refs, [g["seen"] for g in test_groups]))
        metrics.update(beam_size=cfg["beam_size"], length_penalty=cfg["length_penalty"],
                       no_repeat_ngram=cfg["no_repeat_ngram"])
    else:  # summarization: perplexity of the summary given the article
        test = [encode_example(enc, g["context"], g["refs"][0], block) for g in test_groups]
        metrics["test_loss"] = evaluate_loss(model, test, cfg["batch_size"], device, soft)
        metrics["perplexity"] = math.exp(metrics["test_loss"])
    if "flops" in run_log:
        metrics.update(flops=run_log["flops"], train_steps=run_log["steps"], epochs=run_log["epochs"],
                       best_val_loss=run_log["best_val_loss"])
    if run_log.get("data_note"):
        metrics["data_note"] = run_log["data_note"]
    write_output(out_dir / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    for key in sorted(k for k in metrics if k.endswith("_missing")):
        print(f"warning: no {key[:-len('_missing')]}: {metrics[key]}")
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()
             if k in ("bleu", "nist", "meteor", "rouge_l", "cider", "ter", "perplexity", "flops")}
    print(f"{task} test ({len(test_groups)} inputs): {shown}")
    print(f"wrote {out_dir}/metrics.json" + (", predictions.txt, references.txt" if task in NLG_TASKS else ""))
    release_outputs(out_dir)
    return metrics


if __name__ == "__main__":
    run_cli(main)

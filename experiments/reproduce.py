"""
SPDF's question at a scale a laptop runs: does dense fine-tuning of a sparse pre-trained GPT keep the
benefit of pre-training? One command runs the controlled grid and writes the answer.

For each seed: pre-train dense, 50 % and 75 % sparse on the same tokens and schedule; fine-tune each
densely on E2E (and WebNLG, DART), plus sparse fine-tuning at 75 % and a no-pre-training control (the
same model fine-tuned from its random initialization). Then write, under results/<scale>/: table.md
(the paper's Table 1 layout plus the control row, fine-tuning validation loss and the benefit
retained), summary.json and plots (report.py).

  python -m experiments.reproduce --scale=cpu          # 2-core CPU, about 3 hours: E2E x 3 seeds, WebNLG/DART x 1
  python -m experiments.reproduce --scale=mini         # one GPU, hours
  python -m experiments.reproduce --scale=gpu --tasks=e2e --seeds=1 --jobs=3   # one GPU, minutes: gpu_check.py runs it
  python -m experiments.reproduce --scale=cpu --seeds=1,2,3,4 --other_seeds=1,2

Every cell writes its outputs under results/<scale>/runs/ (not committed); a cell whose outputs
exist is skipped, so an interrupted grid resumes where it stopped. --jobs=N runs N pre-trainings, then N
fine-tunings, at once, each in its own process: a GPU trains several of these small models side by side.
"""
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import finetune
import pretrain
from checkpoint import checkpoint_dict, save_checkpoint
from common import ROOT, check, check_writable_dir, parse_config, run_cli
from experiments import report
from experiments.report import NONE, cell_name
from model import GPT, preset_config

TASKS = ("e2e", "webnlg", "dart")
# per scale: pre-training flags, fine-tuning flags (shared by every task and pre-training)
SCALES = {
    "cpu": dict(  # 2-core CPU: a 4-block GPT, 1.02M Wikipedia tokens in 1,000 steps each (a pilot
        # with 150 steps of 2,048 tokens left it at unigram level, val loss 7.32, and fine-tuning from
        # it was worse than from random init); a fine-tuning budget of 2,000 examples x 1 epoch,
        # small enough that what pre-training taught still shows
        pretrain=["--model=cpu", "--dataset=enwiki", "--max_iters=1000", "--batch_size=8",
                  "--block_size=128", "--learning_rate=1e-3", "--warmup_iters=50", "--eval_interval=250",
                  "--eval_iters=20"],
        finetune=["--max_examples=2000", "--max_epochs=1", "--val_examples=300", "--eval_examples=100",
                  "--beam_size=2", "--batch_size=8", "--learning_rate=1e-3", "--warmup_iters=25",
                  "--decode_batch=25"],
    ),
    "mini": dict(  # one GPU: ~30M parameters, ~0.6B Wikipedia tokens (~20 per parameter)
        pretrain=["--model=mini", "--dataset=enwiki", "--max_iters=4500", "--batch_size=64",
                  "--block_size=256", "--gradient_accumulation_steps=8", "--learning_rate=1e-3",
                  "--warmup_iters=200", "--eval_interval=500", "--eval_iters=50", "--compile=True"],
        finetune=["--max_examples=8000", "--max_epochs=2", "--val_examples=1000", "--eval_examples=200",
                  "--beam_size=5", "--batch_size=16", "--learning_rate=3e-4", "--warmup_iters=100"],
    ),
    "gpu": dict(  # one H100/H200 in minutes, a step of gpu_check.py: the mini GPT on 19.7M Wikipedia tokens
        # (1,200 steps of 16k; gpu_check --pack carries the first 20M), then 12,000 E2E examples x 1 epoch
        # per cell. Sized by estimate (1.9e8 training FLOPs a token, 0.6-1M tokens/s), not yet on a GPU
        pretrain=["--model=mini", "--dataset=enwiki", "--max_iters=1200", "--batch_size=64", "--block_size=256",
                  "--learning_rate=1.5e-3", "--warmup_iters=100", "--eval_interval=300", "--eval_iters=20"],
        finetune=["--max_examples=12000", "--max_epochs=1", "--val_examples=500", "--eval_examples=200",
                  "--beam_size=4", "--batch_size=32", "--learning_rate=5e-4", "--warmup_iters=40",
                  "--decode_batch=50"],
    ),
    "smoke": dict(  # for the tests: seconds
        pretrain=["--model=tiny", "--dataset=shakespeare", "--max_iters=2", "--batch_size=2",
                  "--block_size=64", "--eval_interval=2", "--eval_iters=1"],
        finetune=["--max_examples=8", "--max_epochs=1", "--val_examples=8", "--eval_examples=2",
                  "--beam_size=1", "--batch_size=4", "--max_new_tokens=8"],
    ),
}
DEFAULTS = dict(scale="cpu", seeds="1,2,3", other_seeds="1", sparsities="0,0.5,0.75", tasks="e2e,webnlg,dart",
                control=True, sparse_ft=True, device="auto", results="",
                jobs=1,    # runs at once, each its own process (one GPU trains several small models side by side)
                run=True)  # False: only write the tables and plots from the cells already finished


def _ints(text):
    return [int(s) for s in text.split(",") if s]


def cells(cfg):
    """Every (seed, pre-training sparsity or NONE, task, sparse_ft) fine-tuning cell, in run order:
    the first task over all seeds first (it carries the seed spread), then the others."""
    sparsities = [float(s) for s in cfg["sparsities"].split(",")]
    tasks = cfg["tasks"].split(",")
    for i, task in enumerate(tasks):
        for seed in _ints(cfg["seeds"] if i == 0 or not cfg["other_seeds"] else cfg["other_seeds"]):
            if cfg["control"]:
                yield seed, NONE, task, False
            for s in sparsities:
                yield seed, s, task, False
                if cfg["sparse_ft"] and s == max(sparsities) and s > 0:
                    yield seed, s, task, True


def pre_dir(root, seed, s):
    return root / "runs" / f"seed{seed}" / f"pretrain_{cell_name(s)}"


def ft_dir(root, seed, s, task, sparse_ft):
    return root / "runs" / f"seed{seed}" / f"{task}_{cell_name(s)}_{'sparse' if sparse_ft else 'dense'}"


def _flag(flags, key):
    return next(a for a in flags if a.startswith(f"--{key}=")).split("=", 1)[1]


def finished_log(pdir, scale):
    """The pre-training run's log records if it reached the scale's last step and evaluated, else None."""
    log = pdir / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = records and "val_loss" in records[-1] and records[-1]["iter"] == int(_flag(scale["pretrain"], "max_iters"))
    return records if done else None


def write_control(scale, seed, path):
    """The control: the pre-training model at its random initialization, saved like a checkpoint."""
    mcfg = preset_config(_flag(scale["pretrain"], "model"), int(_flag(scale["pretrain"], "block_size")))
    torch.manual_seed(seed)
    model = GPT(mcfg)
    config = dict(sparsity=0.0, seed=seed, init="random, no pre-training")
    save_checkpoint(checkpoint_dict(model.state_dict(), mcfg, config, iter_num=0, pretrain_sparsity=0.0), path / "ckpt.pt")


def run_grid(cfg, root):
    """Pre-trains every model the grid needs, then fine-tunes every cell; what finished before is skipped.
    jobs > 1: that many runs at once, each a subprocess logging to its folder's stdout.log."""
    scale, device = SCALES[cfg["scale"]], [f"--device={cfg['device']}"]
    pre, ft = {}, []  # pretrain.py and finetune.py argument lists
    for seed, s, task, sparse_ft in cells(cfg):
        pdir = pre_dir(root, seed, s)
        if s is NONE and not (pdir / "ckpt.pt").exists():
            write_control(scale, seed, pdir)
        elif s is not NONE and pdir not in pre and finished_log(pdir, scale) is None:
            resume = ["--init_from=resume"] if (pdir / "ckpt.pt").exists() else []  # an interrupted run
            pre[pdir] = [*scale["pretrain"], *device, f"--sparsity={s}", f"--seed={seed}", f"--out_dir={pdir}", *resume]
        fdir = ft_dir(root, seed, s, task, sparse_ft)
        if (fdir / "metrics.json").exists():
            print(f"== skip {fdir.name} (seed {seed}): done")
            continue
        (fdir / "ckpt.pt").unlink(missing_ok=True)  # a cell interrupted after training starts over
        ft.append([*scale["finetune"], *device, f"--task={task}", f"--init_from={pdir}", f"--out_dir={fdir}",
                   f"--sparse={sparse_ft}", f"--seed={seed}"])
    for module, runs in ((pretrain, list(pre.values())), (finetune, ft)):
        if cfg["jobs"] == 1:
            for argv in runs:
                print(f"== {module.__name__} {' '.join(argv[-5:])}")
                module.main(argv)
            continue
        failed = run_parallel(f"{module.__name__}.py", runs, cfg["jobs"])
        check(not failed, f"{len(failed)} of {len(runs)} {module.__name__} runs failed: see " +
              ", ".join(str(d / "stdout.log") for d in failed))


def run_parallel(script, runs, jobs):
    """Each argument list as `python script ...`, at most `jobs` at once; returns the out_dirs that failed."""
    def one(argv):
        out = Path(_flag(argv, "out_dir"))
        out.mkdir(parents=True, exist_ok=True)
        print(f"== {script} {' '.join(argv[-5:])}", flush=True)
        with open(out / "stdout.log", "w") as log:
            return out, subprocess.run([sys.executable, str(ROOT / script), *argv], stdout=log,
                                       stderr=subprocess.STDOUT).returncode
    with ThreadPoolExecutor(jobs) as pool:
        return [out for out, code in pool.map(one, runs) if code != 0]


def collect(cfg, root):
    """Pre-training logs by (seed, s) and fine-tuning metrics by cell, for every finished cell."""
    pre, ft = {}, {}
    for seed, s, task, sparse_ft in cells(cfg):
        if s is not NONE and (seed, s) not in pre:  # each log once, though several cells share it
            if (records := finished_log(pre_dir(root, seed, s), SCALES[cfg["scale"]])) is not None:
                pre[(seed, s)] = records  # finished runs only
        path = ft_dir(root, seed, s, task, sparse_ft) / "metrics.json"
        if path.exists():
            ft[(seed, s, task, sparse_ft)] = json.loads(path.read_text())
    return pre, ft


def main(argv):
    cfg, overrides = parse_config(DEFAULTS, argv)
    check(cfg["scale"] in SCALES, f"unknown scale {cfg['scale']!r} (choose from {', '.join(SCALES)})")
    try:
        _ints(cfg["seeds"]), _ints(cfg["other_seeds"]), [float(s) for s in cfg["sparsities"].split(",")]
    except ValueError:
        check(False, "--seeds, --other_seeds and --sparsities are comma-separated numbers, e.g. --seeds=1,2")
    check(bool(_ints(cfg["seeds"])), "--seeds must name at least one seed")
    check(all(0 <= float(s) < 1 for s in cfg["sparsities"].split(",")), "--sparsities must be in [0, 1)")
    check(all(t in TASKS for t in cfg["tasks"].split(",")), f"--tasks must be among {', '.join(TASKS)}")
    check(cfg["jobs"] >= 1, "--jobs must be at least 1")
    check_writable_dir(cfg["results"] or ROOT / "results" / cfg["scale"], "--results")
    check("results" not in overrides or cfg["results"], "--results is empty")
    root = Path(cfg["results"] or ROOT / "results" / cfg["scale"])
    root.mkdir(parents=True, exist_ok=True)
    if cfg["run"]:
        run_grid(cfg, root)
    pre, ft = collect(cfg, root)
    report.write_all(cfg, root, pre, ft)
    print((root / "table.md").read_text())
    print(f"wrote {root}/table.md, summary.json, pretrain_loss.png, finetune_vs_sparsity.png")
    return root


if __name__ == "__main__":
    run_cli(main)

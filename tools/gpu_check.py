"""
The whole GPU check as one command, sized for one sitting on one H100/H200 (a time budget for the
whole command, 550 s by default, that no step may overrun), writing JSON, logs and a README.md table
under --out:

    python -m tools.gpu_check --pack=True                      # here, on the CPU machine: fills .gpu/
    python -m tools.gpu_check                                  # on the GPU machine: writes results/gpu/
    python -m tools.gpu_check --dry_run=True --out=/tmp/gpu    # the same steps at toy size on the CPU

Steps (each a subprocess; a failure is recorded and the next step still runs):
  kernel_tests   tests/test_triton.py and the GPU test of tests/test_kernels.py: on CUDA, the compiled Triton
                 SpMM, SDDMM and SparseLinear forward/backward against masked dense nn.Linear (on a CPU: the
                 same under Triton's interpreter, and the kernels compiled for sm_90)
  pretrain       pretrain.py, gpt2-small at 75 %, bf16 autocast, --compile=True; then the saved masks
                 are checked: exactly round(0.75 * numel) zeros per matrix, and the weights zero there
  finetune       finetune.py on E2E from that checkpoint, a short smoke run with decoding and BLEU
  fsdp           torchrun --standalone --nproc_per_node=1 pretrain.py --fsdp=True (NCCL on CUDA)
  bench_small    bench.py gpt2-small B16 x T1024, compile on, dense and 75 % interleaved
  bench_xl       bench.py gpt3-xl B8 x T2048, the same
  kernels        python -m tools.kernel_bench at 8192 tokens: ours vs cuSPARSE vs dense fp32/bf16
  reproduce      reproduce.py --scale=gpu --seeds=1 --tasks=e2e: control, dense, 50 % and 75 % pre-training,
                 each fine-tuned densely on E2E, plus sparse fine-tuning at 75 %. It runs last, in what is
                 left of the budget; its cells live in /tmp/spdf_reproduce and resume, so a second command
                 on the same machine (--steps=reproduce) finishes an interrupted grid. Its tables, plots
                 and small run files (no checkpoints) go to <out>/reproduce/.

For a GPU machine without internet or data: --pack=True writes what it lacks into .gpu/ (git-ignored:
the first 20M Wikipedia tokens and Shakespeare, xz-compressed, E2E, nltk and two pycocoevalcap scorers,
the tokenizer's files: 38.7 MiB) and prints the command to run there with .gpu copied along;
gpu_check.py unpacks it first, and the command tars the results into one file to bring back and unpack
into results/gpu/. The machine needs torch, Triton, pytest, sacrebleu, matplotlib and tiktoken;
.gpu/python.zip brings nltk and pycocoevalcap's ROUGE-L and CIDEr. METEOR needs Java, which the GPU
image lacks: it is reported missing, and ROUGE-L and CIDEr, computed on mteval tokens instead of the PTB
tokenizer's, are reported as rouge_l_approx and cider_approx (metrics.coco_scores).
"""
import importlib.metadata
import importlib.util
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from checkpoint import load_checkpoint, pretrain_sparsity
from common import UsageError, check, parse_config, run_cli
from data.sources import get_tokenizer

DEFAULTS = dict(
    out="results/gpu",   # JSON, logs and README.md go here
    dry_run=False,       # toy sizes on the CPU: checks that every step runs, measures nothing
    steps="",            # a comma-separated subset of the steps, e.g. reproduce; "" = all
    budget_s=550,        # seconds for the steps: none is given more than what is left (a 600 s command limit)
    pack=False,          # on the CPU machine: write .gpu/ for the GPU machine and print its command
)
PACK = Path(".gpu")
REPRODUCE = Path(tempfile.gettempdir()) / "spdf_reproduce"  # fixed, so a second command resumes it
PACK_DATASETS = (("enwiki", 20_000_000), ("shakespeare", None))  # (name, train tokens kept): reproduce.py
# --scale=gpu reads 1,200 x 64 x 256 = 19.7M Wikipedia tokens; gpu_check's pretrain step, Shakespeare
PACK_PYTHON = ("nltk", "pycocoevalcap.rouge", "pycocoevalcap.cider")  # pure Python the GPU image lacks: TER's
# tokenizer (WebNLG, DART), E2E's ROUGE-L and CIDEr (not METEOR: that needs Java, which it lacks too)

DRY_SLOWER = 5  # the dry run scales its step limits and budget by this: a CPU runs even the toy sizes slowly

# nanoGPT's training step on the same kind of H100, torch 2.11 (issue 15): tokens/s to compare with
ANCHOR_TOKENS_PER_S = {"gpt2-small": 447e3, "gpt3-xl": 58.2e3}


def steps(out, work, repro, dry):
    """(name, command, time limit in s) in running order; checkpoints go to work (the reproduction's
    to repro), never to out. The limits are guesses until the first GPU run; the budget caps them all.
    dry: the CPU toy version of each."""
    py = sys.executable
    pre = os.path.join(work, "pretrain")
    if dry:
        model = ["--model=tiny", "--batch_size=2", "--block_size=32", "--device=cpu", "--eval_iters=2"]
        train = [*model, "--max_iters=4", "--eval_interval=4", "--compile=False"]
        ft = ["--device=cpu", "--max_examples=16", "--val_examples=8", "--eval_examples=4", "--max_new_tokens=8",
              "--beam_size=2", "--batch_size=4"]
        small, xl = ["--model=tiny", "--batch_size=2", "--steps=2", "--warmup=1", "--device=cpu"], None
        kern = ["--quick=True", "--devices=cpu", "--tokens=256", "--repeats=1", "--no_gen=True"]
    else:
        model = ["--model=gpt2-small", "--batch_size=16", "--block_size=1024", "--eval_iters=5"]
        train = [*model, "--max_iters=60", "--eval_interval=60", "--compile=True"]
        ft = ["--max_examples=2000", "--val_examples=200", "--eval_examples=100", "--batch_size=16"]
        small = ["--model=gpt2-small", "--batch_size=16", "--block_size=1024", "--compile=True"]
        # each block compiled on its own: the first H200 got no gpt3-xl step in 210 s with whole-model compiles
        xl = ["--model=gpt3-xl", "--batch_size=8", "--block_size=2048", "--compile=True", "--compile_blocks=True"]
        kern = ["--devices=cuda", "--tokens=8192", "--sparsity=0.5,0.75,0.9,0.95", "--repeats=5", "--no_gen=True"]
    # the GPU's kernels only: the C++ CPU kernel's tests are CI's, and building it would take most of the step
    tests = [py, "-m", "pytest", "-q", "-rs", "tests/test_triton.py", "tests/test_kernels.py::test_triton_kernel_on_gpu"]
    run = [  # in order of value: a command cut short still brings back the most important figures
        ("kernel_tests", tests, 60),
        ("pretrain", [py, "pretrain.py", *train, "--sparsity=0.75", f"--out_dir={pre}"], 110),
        ("fsdp", [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "pretrain.py",
                  *model, "--max_iters=10", "--eval_interval=10",
                  "--sparsity=0.75", "--fsdp=True", f"--out_dir={os.path.join(work, 'fsdp')}"], 60),
        ("bench_small", [py, "bench.py", *small, "--hf_peer=True", f"--json={os.path.join(out, 'bench_small.json')}"], 90),
        ("finetune", [py, "finetune.py", "--task=e2e", f"--init_from={pre}", *ft,
                      f"--out_dir={os.path.join(work, 'finetune')}"], 60),
        ("kernels", [py, "-m", "tools.kernel_bench", *kern, f"--json={os.path.join(out, 'kernels.json')}"], 60),
        # 150 s produced no step on the first H200 (two 1.3B models built and compiled): last before the grid
        ("bench_xl", xl and [py, "bench.py", *xl, "--hf_peer=True", f"--json={os.path.join(out, 'bench_xl.json')}"], 240),
        ("reproduce", [py, "-m", "experiments.reproduce", f"--scale={'smoke' if dry else 'gpu'}", "--seeds=1", "--tasks=e2e",
                       f"--jobs={2 if dry else 3}", f"--results={repro}"], 400),
    ]
    return [(name, cmd, limit * (DRY_SLOWER if dry else 1)) for name, cmd, limit in run if cmd]


def masks_exact(out_dir):
    """'' if every saved mask zeroes exactly round(s * numel) entries and the weights are 0 there."""
    ckpt = load_checkpoint(os.path.join(out_dir, "ckpt.pt"))
    s, problems = pretrain_sparsity(ckpt), []
    if not ckpt["masks"]:
        return "no masks saved"
    for name, mask in ckpt["masks"].items():
        w = ckpt["model"][name]
        if int((~mask).sum()) != round(s * mask.numel()):
            problems.append(f"{name}: {int((~mask).sum())} zeros, not {round(s * mask.numel())}")
        if w[~mask].abs().max().item() != 0:
            problems.append(f"{name}: nonzero weights off the mask")
    return "; ".join(problems)


def run_step(name, cmd, limit, out):
    """Runs one step; its output goes to out/<name>.log. Returns its record."""
    t = time.time()
    # its own process group, so that a timeout also stops what it started (reproduce.py --jobs: runs on the GPU)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        text = proc.communicate(timeout=limit)[0]
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, status = proc.communicate()[0], f"timed out after {limit} s"
    with open(os.path.join(out, f"{name}.log"), "w") as f:
        f.write(" ".join(cmd) + "\n\n" + text)
    return dict(step=name, status=status, seconds=round(time.time() - t, 1), command=" ".join(cmd[1:]))


def figures(out):
    """The measured numbers worth a table row, from the steps' JSON files."""
    rows = []
    for name in ("bench_small", "bench_xl"):
        path = os.path.join(out, f"{name}.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            b = json.load(f)
        anchor = ANCHOR_TOKENS_PER_S.get(b["config"]["model"])
        for run in ("dense", "sparse"):
            r = b[run]
            vs = f"{r['tokens_per_s'] / anchor:.2f}x nanoGPT" if anchor else ""
            mfu = f"MFU {100 * r['mfu']:.1f} %" if r.get("mfu") is not None else ""
            rows.append(f"| {b['config']['model']} {run} (s={r['sparsity']}) | {r['tokens_per_s']:,.0f} tokens/s, "
                        f"{r['step_ms']:.1f} ms/step {mfu} | {vs} |")
        rows.append(f"| {b['config']['model']} sparse / dense step | {b['sparse_over_dense']:.3f}x | goal <= 1.02x |")
        if r := b.get("hf_peer"):
            mfu = f"MFU {100 * r['mfu']:.1f} %" if r.get("mfu") is not None else ""
            rows.append(f"| {b['config']['model']} HF GPT2LMHeadModel (peer) | {r['tokens_per_s']:,.0f} tokens/s, "
                        f"{r['step_ms']:.1f} ms/step {mfu} | ours dense {b['dense_over_hf']:.3f}x it (goal >= 1.05x) |")
    path = os.path.join(out, "kernels.json")
    if os.path.exists(path):
        with open(path) as f:
            k = json.load(f)
        for r in k["layers"]:
            ms = ", ".join(f"{n} {v:.2f} ms" for n, v in r["ms"].items())
            rows.append(f"| {r['device']} {r['model']} {r['layer']} {r['out']}x{r['in']}, {r['tokens']} tokens, "
                        f"s={r['sparsity']} | {ms} | ours {r['speedup_vs_dense']:.2f}x dense fp32 |")
    return rows


def keep_reproduction(repro, out, cmd, finished):
    """The reproduction's tables, plots and small run files (no checkpoints) into out/reproduce/; after a
    timeout or failure, the tables of the cells that did finish."""
    if not finished:
        try:  # reads JSON and draws two plots: seconds
            subprocess.run([*cmd, "--run=False"], capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            pass  # the tables of the last finished run, if any, still go along
    dest = os.path.join(out, "reproduce")
    os.makedirs(dest, exist_ok=True)
    for name in ("table.md", "summary.json", "pretrain_loss.png", "finetune_vs_sparsity.png"):
        if os.path.exists(os.path.join(repro, name)):
            shutil.copy(os.path.join(repro, name), dest)
    if os.path.isdir(os.path.join(repro, "runs")):  # logs and metrics: with them a later command adds seeds
        with tarfile.open(os.path.join(dest, "runs.tar.gz"), "w:gz") as tar:
            tar.add(os.path.join(repro, "runs"), "runs", filter=lambda t: None if t.name.endswith(".pt") else t)


def pack(dest=PACK, datasets=PACK_DATASETS):
    """On the CPU machine: what the GPU machine lacks, into dest/: token files xz-compressed (uint16
    tokens shrink 1.7x at preset 3), E2E laid out like the mirror, the PACK_PYTHON packages as one zip,
    the tokenizer's cache files. Returns the command to run there and dest's size."""
    import numpy as np

    from data.prepare import ensure_prepared, load_tokens
    from data.sources import get_tokenizer
    from data.tasks import SOURCES, source_file
    for name, limit in datasets:
        ensure_prepared(name)
        (dest / "data" / name).mkdir(parents=True, exist_ok=True)
        for split in ("train", "val"):
            tokens = np.asarray(load_tokens(name, split)[:limit if split == "train" else None])
            with lzma.open(dest / "data" / name / f"{split}.bin.xz", "wb", preset=3) as f:
                f.write(tokens.tobytes())
    for split, (_, rel) in SOURCES["e2e"].items():
        (dest / "mirror" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_file("e2e", split), dest / "mirror" / rel)
    with zipfile.ZipFile(dest / "python.zip", "w", zipfile.ZIP_DEFLATED) as z:  # importable as it is
        for name in PACK_PYTHON:
            root = Path(list(importlib.util.find_spec(name).submodule_search_locations)[0])
            for f in sorted(root.rglob("*.py")):
                z.write(f, f.relative_to(root.parents[name.count(".")]))
            parts = name.split(".")  # pycocoevalcap's folders have no __init__.py: given one, the zip's copy wins
            for init in ("/".join(parts[:i]) + "/__init__.py" for i in range(1, len(parts) + 1)):
                if init not in z.namelist():
                    z.writestr(init, "")
    get_tokenizer()  # fills tiktoken's cache if it was empty
    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or Path(tempfile.gettempdir()) / "data-gym-cache")
    (dest / "tiktoken").mkdir(exist_ok=True)
    for f in cache.iterdir():
        shutil.copyfile(f, dest / "tiktoken" / f.name)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    check(size < 56 * 2**20, f"{dest} holds {size / 2**20:.0f} MiB; with the code it must stay under the 64 MiB carried")
    return "python3 -m tools.gpu_check --out=/tmp/gpu; tar czf ${OUT:-.}/gpu.tgz -C /tmp gpu", size


def unpack(src=PACK, data_dir=None):
    """On the GPU machine: src's token files into data/<name>/ where none are there yet, and its
    mirror, tokenizer and Python packages into the environment the steps inherit. Returns what it wrote."""
    from data.prepare import DATA_DIR
    wrote = []
    for xz in sorted((src / "data").glob("*/*.bin.xz")):
        dest = Path(data_dir or DATA_DIR) / xz.parent.name / xz.name[:-len(".xz")]
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            with lzma.open(xz) as f, open(dest.with_suffix(".tmp"), "wb") as g:
                shutil.copyfileobj(f, g)
            dest.with_suffix(".tmp").rename(dest)
            wrote.append(str(dest))
    for var, sub in (("SPDF_DATA_MIRROR", "mirror"), ("TIKTOKEN_CACHE_DIR", "tiktoken")):
        if (src / sub).is_dir():  # the pack's copies win over a value already set: with setdefault here, the
            os.environ[var] = str((src / sub).resolve())  # first H200 run's fine-tuning could not load the tokenizer
    zipped, path = str((src / "python.zip").resolve()), os.environ.get("PYTHONPATH", "")
    if os.path.exists(zipped) and zipped not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [path, zipped]))
    return wrote


def write_summary(out, records, device, started, argv):
    """gpu_check.json and README.md for the steps done so far."""
    versions = {}
    for dist in ("triton", "transformers"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    summary = dict(date=started, device=device, torch=torch.__version__, **versions, command="python -m tools.gpu_check " + " ".join(argv),
                   steps=records)
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(summary, f, indent=1)
    lines = [f"# GPU check: {device}", "", f"{started}, torch {torch.__version__}, triton {versions['triton']}, transformers "
             f"{versions['transformers']}, `{summary['command']}`"
             f" ({sum(r['seconds'] for r in records):.0f} s in all). Logs: `<step>.log`; numbers: `*.json`.", "",
             "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['step']} | {r['status']}{' (masks ' + r['masks'] + ')' if 'masks' in r else ''} | {r['seconds']} |"
              for r in records]
    if rows := figures(out):
        lines += ["", "| measured | figures | against |", "|---|---|---|", *rows]
    if os.path.exists(os.path.join(out, "reproduce", "table.md")):
        lines += ["", "The reproduction (`reproduce.py --scale=gpu`): `reproduce/table.md` and its plots."]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv):
    cfg, _ = parse_config(DEFAULTS, argv)
    if cfg["pack"]:
        command, size = pack()
        print(f"wrote {PACK}/ ({size / 2**20:.1f} MiB). On the GPU machine, carrying {PACK}:\n\n{command}")
        return command
    check(cfg["dry_run"] or torch.cuda.is_available(), "no CUDA device here: run with --dry_run=True on a CPU")
    if not cfg["dry_run"] and PACK.is_dir():
        for path in unpack():
            print(f"unpacked {path}")
        try:  # a missing tokenizer fails every fine-tuning step: say so once, up front, with where it looked
            get_tokenizer()
            print(f"tokenizer: ok (TIKTOKEN_CACHE_DIR={os.environ.get('TIKTOKEN_CACHE_DIR')})", flush=True)
        except UsageError as e:
            print(f"tokenizer: {e} (TIKTOKEN_CACHE_DIR={os.environ.get('TIKTOKEN_CACHE_DIR')!r})", flush=True)
    out = cfg["out"]
    names = [name for name, _, _ in steps(out, "", "", cfg["dry_run"])]
    chosen = [n for n in cfg["steps"].split(",") if n] or names
    unknown = set(chosen) - set(names)
    check("finetune" not in chosen or "pretrain" in chosen, "--steps: finetune starts from the pretrain step's checkpoint")
    check(not unknown, f"unknown step {', '.join(sorted(unknown))} (choose from {', '.join(names)})")
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gpu_check_")  # checkpoints: GBs, not results
    repro = os.path.join(work, "reproduce") if cfg["dry_run"] else str(REPRODUCE)
    plan = steps(out, work, repro, cfg["dry_run"])
    device = "cpu (dry run)" if cfg["dry_run"] else torch.cuda.get_device_name()
    started, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.time()
    budget = cfg["budget_s"] * (DRY_SLOWER if cfg["dry_run"] else 1)
    records = []
    for name, cmd, limit in plan:
        if name not in chosen:
            continue
        left = int(budget - (time.time() - t0))
        if left < 10:
            records.append(dict(step=name, status="skipped (budget spent)", seconds=0.0, command=" ".join(cmd[1:])))
            continue
        rec = run_step(name, cmd, min(limit, left), out)
        if name == "pretrain" and rec["status"] == "ok":
            problem = masks_exact(os.path.join(work, "pretrain"))
            rec["masks"] = problem or "exact"
            if problem:
                rec["status"] = "failed (masks)"
        if name == "reproduce":
            keep_reproduction(repro, out, cmd, rec["status"] == "ok")
        print(f"{name:13s} {rec['status']:24s} {rec['seconds']:7.1f} s", flush=True)
        records.append(rec)
        write_summary(out, records, device, started, argv)  # after every step: a command killed later keeps it
    shutil.rmtree(work, ignore_errors=True)
    write_summary(out, records, device, started, argv)
    print(f"wrote {out}/README.md and gpu_check.json")
    return records


if __name__ == "__main__":
    run_cli(main)

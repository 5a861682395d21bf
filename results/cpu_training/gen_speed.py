"""Generation speed of sample.py, masked against csr, on GPT-2 Small with random weights and random masks
(the speed of a token does not depend on what the weights learned).

  python results/cpu_training/gen_speed.py --sparsity=0.75,0.9 --rounds=3

For each sparsity: one checkpoint (as pre-training writes it: masked weights plus masks) in a temporary
folder, then sample.py --temperature=0 with --kernel=masked and --kernel=csr, interleaved, `rounds` times
each; the best tokens/s of each, their ratio, and whether the greedy tokens are the same.
"""
import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import sparsity as sp  # noqa: E402
from checkpoint import checkpoint_dict, save_checkpoint  # noqa: E402
from model import GPT, PRESETS  # noqa: E402

SAMPLE = ["--temperature=0", "--num_samples=2", "--max_new_tokens=64", "--start=The meaning of life is", "--device=cpu"]


def make_checkpoint(path, sparsity):
    torch.manual_seed(0)
    model = GPT(PRESETS["gpt2-small"])
    masks = sp.make_masks(model, sparsity)
    sp.apply_masks(model, masks)
    save_checkpoint(checkpoint_dict(model.state_dict(), model.config, dict(sparsity=sparsity), masks), path)


def sample(path, kernel):
    run = subprocess.run([sys.executable, str(ROOT / "sample.py"), f"--init_from={path}", *SAMPLE, f"--kernel={kernel}"],
                         capture_output=True, text=True, cwd=ROOT)
    if run.returncode:
        last = (run.stderr.strip() or run.stdout.strip() or "no output").splitlines()[-1]
        sys.exit(f"error: sample.py --kernel={kernel}: {last.removeprefix('error: ')}")
    out = run.stdout
    speed = float(re.search(r"([\d,.]+) tokens/s", out).group(1).replace(",", ""))
    return speed, out.rsplit("\n", 2)[0]  # the samples without the speed line


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sparsity", default="0.75,0.9")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"# {' '.join(SAMPLE)}; {args.rounds} rounds, interleaved; best tokens/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for s in (float(x) for x in args.sparsity.split(",")):
            path = Path(tmp) / f"s{s}.pt"
            make_checkpoint(path, s)
            best, text = {"masked": 0.0, "csr": 0.0}, {}
            for _ in range(args.rounds):
                for kernel in best:
                    speed, text[kernel] = sample(path, kernel)
                    best[kernel] = max(best[kernel], speed)
            print(f"s={s}: masked {best['masked']:.1f} tok/s, csr {best['csr']:.1f} tok/s, "
                  f"speed-up {best['csr'] / best['masked']:.2f}x, same greedy tokens: {text['masked'] == text['csr']}",
                  flush=True)


if __name__ == "__main__":
    main()

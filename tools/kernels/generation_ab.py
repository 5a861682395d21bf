"""
Greedy generation with gpt2-small converted by to_sparse_model, the CPU kernel at an older commit
against the working tree's, alternating in one process, best of --repeats: ms per generated token,
and of that the time inside the C++ product (ext.spmm). Run from the repository root:

    python -m tools.kernels.generation_ab OLD_COMMIT [--sparsity 0.75,0.9] [--threads 2]
"""
import argparse
import copy
import os
import subprocess
import tempfile
import time

import torch
from torch.utils.cpp_extension import load

import sparse_kernels.cpu as kernel_cpu  # noqa: E402
from model import GPT, PRESETS  # noqa: E402
from sparse_kernels import to_sparse_model  # noqa: E402
from sparsity import apply_masks, make_masks  # noqa: E402
from tools.kernel_bench import cpu_model  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("old")
ap.add_argument("--sparsity", default="0.75,0.9")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeats", type=int, default=4)
ap.add_argument("--new_tokens", type=int, default=24)
args = ap.parse_args()

old_src = os.path.join(tempfile.mkdtemp(), "old.cpp")
with open(old_src, "w") as f:
    f.write(subprocess.run(["git", "show", f"{args.old}:sparse_kernels/csr_cpu.cpp"], capture_output=True, text=True, check=True).stdout)
flags = dict(extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"])
exts = {"old": load(name="gen_ab_old", sources=[old_src], **flags),
        "new": load(name="gen_ab_new", sources=["sparse_kernels/csr_cpu.cpp"], **flags)}
torch.set_num_threads(args.threads)
print(f"{cpu_model()}; {args.threads} threads; old = {args.old}; load average {os.getloadavg()[0]:.1f}; "
      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


class Timed:
    """The extension, with the time spent in spmm added up."""
    def __init__(self, ext):
        self.ext, self.seconds = ext, 0.0

    def __getattr__(self, name):
        return getattr(self.ext, name)

    def spmm(self, *a):
        t = time.perf_counter()
        y = self.ext.spmm(*a)
        self.seconds += time.perf_counter() - t
        return y


for sparsity in (float(s) for s in args.sparsity.split(",")):
    torch.manual_seed(0)
    model = GPT(PRESETS["gpt2-small"]).eval()
    masks = make_masks(model, sparsity, "random", 0)
    apply_masks(model, masks)
    sparse = to_sparse_model(copy.deepcopy(model), masks)
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    best, tokens = {}, {}
    for _ in range(args.repeats):
        for name, ext in exts.items():
            kernel_cpu._ext, kernel_cpu._tried = Timed(ext), True
            t = time.perf_counter()
            tokens[name] = sparse.generate(prompt, args.new_tokens, temperature=0)
            ms = (time.perf_counter() - t) / args.new_tokens * 1e3
            best[name] = min(best.get(name, (float("inf"),)), (ms, kernel_cpu._ext.seconds / args.new_tokens * 1e3))
    same = torch.equal(tokens["old"], tokens["new"])
    print(f"s={sparsity}: ms per token (of it in ext.spmm): old {best['old'][0]:.1f} ({best['old'][1]:.1f}), "
          f"new {best['new'][0]:.1f} ({best['new'][1]:.1f}); same tokens: {same}", flush=True)

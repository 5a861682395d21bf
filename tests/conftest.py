"""Shared fixtures. Tests run offline: the data mirror and tokenizer cache default to ../shared."""
import os
import signal
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
_shared = ROOT.parent / "shared"
if "SPDF_DATA_MIRROR" not in os.environ and (_shared / "data").is_dir():
    os.environ["SPDF_DATA_MIRROR"] = str(_shared / "data")
if "TIKTOKEN_CACHE_DIR" not in os.environ and (_shared / "tiktoken" / "cache").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_shared / "tiktoken" / "cache")

SKIP = {".git", ".pytest_cache", "__pycache__", ".gpu"}  # git, pytest's and Python's caches, gpu_check's pack


def checkout_files(root=ROOT):
    """Every file of the checkout with its size and mtime, virtual environments and caches aside."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP and not d.startswith(".venv")]
        for name in filenames:
            st = os.stat(os.path.join(dirpath, name))
            files[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
    return files


@pytest.fixture(scope="session", autouse=True)
def hermetic():
    """Tests write under tmp_path only: the suite fails if it added, changed or removed a file of the
    checkout (its out/, data/, results/), so nothing a user's runs left there can matter either."""
    before = checkout_files()
    yield
    after = checkout_files()
    changed = sorted(set(before) ^ set(after) | {f for f in before.keys() & after.keys() if before[f] != after[f]})
    assert not changed, f"the tests wrote into the checkout: {', '.join(changed[:10])}"


# prepared corpora (data/<name>/ by default) go to a folder of the session's own, subprocesses included
os.environ["SPDF_DATA_DIR"] = tempfile.mkdtemp(prefix="spdf_data_")

# a pre-training run small enough for a test: 64 tokens per step
TINY_RUN = ["--model=tiny", "--batch_size=2", "--block_size=32", "--eval_iters=2", "--device=cpu"]


@pytest.fixture(scope="session")
def shakespeare_dir(tmp_path_factory):
    """tinyshakespeare tokenized once per test session, outside the repository."""
    from data.prepare import prepare
    out = tmp_path_factory.mktemp("shakespeare")
    prepare("shakespeare", out_dir=out)
    return out


@pytest.fixture
def one_thread():
    """Tiny matmuls: thread hand-offs cost more than they save on a busy 2-core machine."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_pretrain(out_dir, data_dir, *args):
    import pretrain
    return pretrain.main([*TINY_RUN, f"--data_dir={data_dir}", f"--out_dir={out_dir}", *args])


def children(pid):
    """Process ids whose parent is `pid` (Linux /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            pass  # the process ended while we looked
    return kids


def torchrun_pretrain(out_dir, data_dir, *args, timeout=240):
    """pretrain.py under torchrun: 2 CPU processes (gloo), one thread each; fails the test on error.
    A hang fails it with every process's Python stack: SIGABRT makes faulthandler print them."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "pretrain.py",
           *TINY_RUN, f"--data_dir={data_dir}", f"--out_dir={out_dir}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pids in (children(proc.pid), [proc.pid]):  # the workers together (torchrun stops the others
            for pid in pids:                            # once one dies), then torchrun itself
                try:
                    os.kill(pid, signal.SIGABRT)
                except ProcessLookupError:
                    pass
            time.sleep(2)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        out = "\n".join(line for line in out.splitlines() if "<frozen " not in line)  # import machinery
        pytest.fail(f"torchrun hung for {timeout} s; its output and stacks:\n{out[-12000:]}")
    assert proc.returncode == 0, out[-2000:]


# the 2-process run that DDP and FSDP both make: 5 steps of 2 micro-steps (one per process), 75% sparse
TWO_PROCESS_RUN = ["--sparsity=0.75", "--max_iters=5", "--eval_interval=5", "--gradient_accumulation_steps=2"]


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory, shakespeare_dir):
    """TWO_PROCESS_RUN with DDP; returns its out_dir."""
    out = tmp_path_factory.mktemp("ddp")
    torchrun_pretrain(out, shakespeare_dir, *TWO_PROCESS_RUN)
    return out


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, shakespeare_dir):
    """A 2-step pre-training run of the tiny model at 75% sparsity, block_size 64 (room for an
    E2E example); returns its out_dir, which holds ckpt.pt with masks."""
    out = tmp_path_factory.mktemp("tiny_ckpt")
    run_pretrain(out, shakespeare_dir, "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
                 "--block_size=64", "--sparsity=0.75")
    return out


def masked_linear(n_in, n_out, empty_row):
    """An nn.Linear whose weight keeps ~30 % of its entries (row `empty_row` none), its mask, and the
    SparseLinear made from it."""
    import sparse_kernels
    import torch
    torch.manual_seed(0)
    lin = torch.nn.Linear(n_in, n_out)
    mask = torch.rand(n_out, n_in) > 0.7
    mask[empty_row] = False
    with torch.no_grad():
        lin.weight.mul_(mask)
    return lin, mask, sparse_kernels.SparseLinear.from_linear(lin, mask)

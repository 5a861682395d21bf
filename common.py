"""
What every script shares, each in one place: the configurator and command-line errors, device choice,
autocast and the MFU peak table, and the guards on output paths and training. Checkpoints live in
checkpoint.py, the tokenizer and data sources in data/sources.py, the optimizer next to the model.
"""
import ast
import errno
import math
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from model import HeadCrossEntropy

ROOT = Path(__file__).resolve().parent


class UsageError(ValueError):
    """Bad input from the user: reported as one line, never as a traceback."""
    exit_code = 2


class TrainingDiverged(UsageError):
    """A non-finite loss or gradient norm: the run stops before it can save bad weights (exit code 3)."""
    exit_code = 3


def run_cli(main, argv=None):
    """Run main(argv or sys.argv[1:]); a UsageError becomes one 'error: ...' line on stderr and exit
    code 2 (3 for a diverged run). The tests call it with argv to run a script in-process."""
    try:
        main(sys.argv[1:] if argv is None else list(argv))
    except UsageError as e:
        close_progress_bars()
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        release_outputs()  # a run called in-process (the tests) frees its folders as a process exit would


# -----------------------------------------------------------------------------
# configurator: nanoGPT's ergonomics (config files + --key=value) without exec'ing into globals


def _coerce(key, raw, default):
    """Parse `raw` as a Python literal and check it against the type of `default`."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare word is a string
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise UsageError(f"--{key} must be True or False, got {raw!r}")
        return value
    if default is None:  # optional keys take whatever literal was given
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{key} must be a finite number, got {raw!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(default, str) and not isinstance(value, str):
        value = raw
    if type(value) is not type(default):
        raise UsageError(f"--{key} must be {type(default).__name__}, got {raw!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"--{key} must be a finite number, got {raw!r}")
    return value


def parse_config(defaults, argv, positional=()):
    """
    Returns (config, overrides). argv holds --key=value (or --key value) overrides, every key in
    `defaults`; a bool key alone (--compile) means True. Bare arguments fill the `positional` keys in
    order if the script names any, else they are config files (plain Python assignments), applied in
    their place in argv. `overrides` names the keys the user set, so a resumed run can take the rest
    from its checkpoint.
    """
    config, overrides = dict(defaults), {}
    args, bare = list(argv), []
    while args:
        arg = args.pop(0)
        if arg.startswith("--"):
            key, eq, raw = arg[2:].partition("=")
            if key not in defaults:
                raise UsageError(f"unknown config key {key!r}")
            if not eq:  # --key value, or a bool flag alone
                if isinstance(defaults[key], bool) and not (args and args[0].lower() in ("true", "false")):
                    raw = "True"
                elif args and not args[0].startswith("--"):
                    raw = args.pop(0)
                else:
                    raise UsageError(f"--{key} needs a value: --{key}=VALUE or --{key} VALUE")
            overrides[key] = _coerce(key, raw, defaults[key])
        elif positional:
            check(len(bare) < len(positional), f"unexpected argument {arg!r}")
            key = positional[len(bare)]
            bare.append(arg)
            overrides[key] = _coerce(key, arg, defaults[key])
        else:
            overrides.update(_config_file(arg, defaults))
    config.update(overrides)
    return config, overrides


def _config_file(arg, defaults):
    """The assignments of a config file, type-checked like --key=value."""
    path = Path(arg)
    if not path.is_file():
        raise UsageError(f"config file not found: {arg}")
    scope = {}
    try:
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), {}, scope)
    except SyntaxError as e:
        raise UsageError(f"config file {arg}, line {e.lineno}: syntax error ({e.msg})") from e
    except Exception as e:  # a config file is plain assignments; anything else is the user's error
        raise UsageError(f"config file {arg} failed: {type(e).__name__}: {e}") from e
    out = {}
    for key, value in scope.items():
        if key.startswith("_"):
            continue
        if key not in defaults:
            raise UsageError(f"unknown config key {key!r} in {arg}")
        out[key] = _coerce(key, repr(value), defaults[key])
    return out


def check(condition, message):
    if not condition:
        raise UsageError(message)


# -----------------------------------------------------------------------------
# devices, precision and the peak-FLOPs table for MFU


def pick_device(name="auto"):
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    check(name.split(":")[0] in ("cpu", "cuda", "mps"), f"unknown device {name!r} (auto, cpu, cuda, mps)")
    if name.startswith("cuda"):
        check(torch.cuda.is_available(), "--device=cuda but no CUDA device is available")
    return name


def autocast(device):
    """bf16 autocast on CUDA; full fp32 elsewhere (CPU bf16 matmuls are slow without AMX)."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# dense bf16 tensor-core peaks, FLOP/s, by a substring of torch.cuda.get_device_name()
PEAK_FLOPS = [
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12),
    ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12), ("RTX 4090", 165e12),
    ("RTX 3090", 71e12), ("V100", 125e12),
]


def peak_flops(device):
    """The device's peak, or None when unknown (then MFU is omitted rather than guessed)."""
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_FLOPS:
        if key in name:
            return peak
    return None


# -----------------------------------------------------------------------------
# guards: training that diverges, output paths checked before work starts, run folders and logs


def check_finite(value, what, it):
    """Stop the run (TrainingDiverged, exit code 3) when `value` is NaN or infinite."""
    if hasattr(value, "full_tensor"):  # FSDP: a DTensor gradient norm
        value = value.full_tensor()
    value = float(value)
    if not math.isfinite(value):
        raise TrainingDiverged(f"{what} is {value} at iteration {it}: training diverged (try a lower "
                               "--learning_rate); the last checkpoint was left as it was")


def _nearest_existing(path):
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    return path


def check_writable_dir(path, flag="--out_dir"):
    """`path` is, or can be created as, a folder this process may write into. Creates nothing."""
    check(str(path).strip() != "", f"{flag} is empty")
    path = Path(path)
    check(not path.exists() or path.is_dir(), f"{flag} {path} exists and is not a folder")
    base = _nearest_existing(path)
    check(base.is_dir(), f"{flag} {path}: {base} is a file, not a folder")
    check(os.access(base, os.W_OK | os.X_OK), f"{flag} {path}: {base} is not writable")


def check_output_file(path, flag="--json"):
    """`path` can be written as a file (its folder exists or can be created). Creates nothing."""
    check(str(path).strip() != "", f"{flag} is empty")
    path = Path(path)
    check(not path.is_dir(), f"{flag} {path} is a folder, not a file")
    check(not path.exists() or os.access(path, os.W_OK), f"{flag} {path} is not writable")
    check_writable_dir(path.parent, flag=f"{flag} {path}: its folder")


def check_scratch_out_dir(out_dir):
    """A new pre-training run never writes over another run's checkpoint."""
    ckpt = Path(out_dir) / "ckpt.pt"
    check(not ckpt.exists(), f"{ckpt} exists: continue that run with --init_from=resume, or start over "
          f"with another --out_dir (or delete {out_dir} first)")


def prepare_run_dir(out_dir):
    """Create out_dir and remove a ckpt.pt.tmp left by a run killed while saving."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = out_dir / "ckpt.pt.tmp"
    if stale.exists():
        print(f"removing {stale}, left by an interrupted save")
        stale.unlink()


# -----------------------------------------------------------------------------
# output guards: a run owns its output folder while it runs; a write that fails for an OS reason
# is one line naming the file; a batch that cannot fit in memory is refused before the first step

_OWNED = {}  # lock file -> its open descriptor: the outputs this process owns until it ends

# failures of the machine, not of the program: reported as one line instead of a traceback
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def close_progress_bars():
    """End the lines of open tqdm bars, so that an error after them starts a line of its own (and no
    bar redraws itself below it at exit)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def file_stamp(path):
    """(size, inode, mtime) of a file, or None when there is none: whether another process wrote it
    between two looks."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_ino, st.st_mtime_ns


def lock_output(folder, name=".lock", what=None, unchanged=()):
    """
    Make this process the owner of `folder` (created if missing): an exclusive flock on folder/name,
    which the OS drops when the process ends however it ends, so a killed run never blocks the next.
    Another owner is a UsageError naming its pid. `unchanged`: (path, file_stamp seen at start)
    pairs that must still hold now that the folder is ours: a run that started alongside another
    and lost the race must not write over what the winner wrote. Taking it again is a no-op.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs there are not guarded against each other
        return
    lock = Path(os.path.abspath(folder)) / name
    if lock not in _OWNED:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = _flock(fcntl, lock, what or folder)
        except OSError as e:  # a full or read-only disk already at the lock file
            raise_write_error(e, lock)
            raise
        if fd is None:
            return
        _OWNED[lock] = fd
    for path, seen in unchanged:
        if file_stamp(path) != seen:
            release_outputs(folder, name)
            raise UsageError(f"{path} was written by another run while this one was starting: continue "
                             "that run (--init_from=resume) or choose another output")


def _flock(fcntl, lock, what):
    """The descriptor of `lock`, exclusively flocked, this pid written in it; None where the
    filesystem cannot lock (some network mounts: then runs there are not guarded)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UsageError(f"{what} is in use by another run (pid {pid}); wait for it to finish or choose "
                             "another output") from None
        except OSError as e:
            os.close(fd)
            if e.errno in WRITE_ERRNOS:
                raise
            print(f"warning: cannot lock {lock} ({os.strerror(e.errno)}); concurrent runs are not detected")
            return None
        if file_stamp(lock) is not None and os.fstat(fd).st_ino == os.stat(lock).st_ino:
            break
        os.close(fd)  # its owner removed this file as it finished: lock the one now there
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        lock.unlink(missing_ok=True)
        os.close(fd)
        raise
    return fd


def lock_output_file(path, flag="--out"):
    """lock_output for one output file: a lock file beside it, .<name>.lock, and the file must not
    appear meanwhile. Returns what release_outputs takes to give it up: (folder, lock name)."""
    path = Path(os.path.abspath(path))
    lock_output(path.parent, f".{path.name}.lock", f"{flag} {path}", unchanged=[(path, None)])
    return path.parent, f".{path.name}.lock"


def release_outputs(folder=None, name=".lock"):
    """Give up this process's lock on `folder` (all of them when None); the lock file goes too,
    removed before it is unlocked so that no other run can lock a file about to vanish."""
    for lock in [k for k in _OWNED if folder is None or k == Path(os.path.abspath(folder)) / name]:
        fd = _OWNED.pop(lock)
        Path(lock).unlink(missing_ok=True)
        os.close(fd)


def raise_write_error(e, path, what=None):
    """Raise a one-line UsageError from `e` if it (or what it arose from: torch.save reports a full
    disk as a RuntimeError raised while the OSError was handled) is an OS failure of the machine
    while writing `path`; otherwise return, and the caller re-raises `e`."""
    while e is not None and not (isinstance(e, OSError) and e.errno in WRITE_ERRNOS):
        e = e.__cause__ or e.__context__
    if e is None:
        return
    path = Path(path)
    if what:
        kept = f"the last {what} is unchanged" if path.exists() else f"no {what} was written"
    else:
        kept = f"{path.name} is unchanged" if path.exists() else "nothing was written"
    raise UsageError(f"{os.strerror(e.errno).lower()} while writing {path}; {kept}") from e


def append_line(path, line):
    """Append one line to a log; a failed write is cut back off, so the log holds whole lines only."""
    size = os.path.getsize(path) if os.path.exists(path) else 0
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except BaseException as e:
        if os.path.exists(path):
            os.truncate(path, size)
        raise_write_error(e, path)
        raise


def write_output(path, text):
    """Write a text file whole or not at all (a temp file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        raise_write_error(e, path)
        raise


def _gb(n):
    return f"{n / 1e6:.0f} MB" if n < 1e9 else f"{n / 1e9:.1f} GB" if n < 1e12 else f"{n / 1e12:.1f} TB"


def train_memory(config, batch_size, seq_len, n_params, n_trainable=None, logit_rows=None,
                 one_pass_head=False, act_bytes=4, checkpointing=False, shards=1, ddp=False):
    """
    Peak bytes of one training step, by part (a simple count, not a measurement):
      state        weights (4 B), and per trainable parameter its gradient (4 B) and AdamW's two
                   moments (8 B); FSDP splits all of it over `shards`; DDP adds a gradient bucket copy
      activations  what each block keeps for backward, ~17 values per token and channel (LayerNorm
                   outputs, q/k/v, attention output, the residual stream, the MLP's 4x hidden twice),
                   plus the attention matrix when dropout forces the explicit kernel; with
                   activation checkpointing, each block's input plus one block recomputed
      logits       logit_rows x vocab (default every position) held four times at the loss's backward:
                   the logits, their log-softmax, and the two gradients, in fp32; with one_pass_head (the
                   model's loss on a CPU, model.HeadCrossEntropy) one fp32 chunk of at most CHUNK rows
    """
    n_trainable = n_params if n_trainable is None else n_trainable
    state = (4 * n_params + 12 * n_trainable + (4 * n_trainable if ddp else 0)) / shards
    tokens = batch_size * seq_len
    per_block = 17 * tokens * config.n_embd
    if config.dropout > 0:  # the explicit attention: scores, probabilities and the dropout mask
        per_block += 3 * batch_size * config.n_head * seq_len * seq_len
    blocks = (config.n_layer + 17) * tokens * config.n_embd if checkpointing else config.n_layer * per_block
    activations = (blocks + 3 * tokens * config.n_embd) * act_bytes  # + embeddings and the final LayerNorm
    rows = tokens if logit_rows is None else logit_rows
    logits = (4 * min(rows, HeadCrossEntropy.CHUNK) if one_pass_head else 16 * rows) * config.vocab_size
    return dict(state=state, activations=activations, logits=logits)


def available_memory(device):
    """Bytes a run can still take: free device memory on CUDA, MemAvailable on a Linux CPU; None
    when unknown (then nothing is refused)."""
    if str(device).startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    if str(device) != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(model, device, batch_size, seq_len, hint, show=True, **estimate):
    """Estimate a training step's peak (train_memory, `estimate` its options), print it (a user wants
    to know it anyway) and refuse a run that clearly cannot fit: over 90 % of what is available.
    Under torchrun the processes of a CPU machine share its memory; weights already on the device
    are no longer part of what is available. Returns the estimate, in bytes."""
    cuda = str(device).startswith("cuda")
    parts = train_memory(model.config, batch_size, seq_len, model.num_params(), act_bytes=2 if cuda else 4, **estimate)
    need = sum(parts.values())
    loaded = 4 * model.num_params() if next(model.parameters()).device.type == torch.device(device).type else 0
    shared = 1 if cuda else int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    detail = (f"weights, gradients and AdamW state {_gb(parts['state'])}, activations "
              f"{_gb(parts['activations'])}, logits {_gb(parts['logits'])}")
    avail = available_memory(device)
    if show:
        print(f"memory: about {_gb(need)} at peak per process ({detail})"
              + ("" if avail is None else f"; {_gb(avail)} available on {device}"))
    if avail is not None:
        check(shared * need - loaded <= 0.9 * avail,
              f"batches of {batch_size} x {seq_len} tokens need about {_gb(shared * need)} of memory at the peak "
              f"of a step ({detail}"
              + (f"; x{shared} processes" if shared > 1 else "")
              + f"), more than the {_gb(avail)} available on {device}: {hint}")
    return need


def completion_rows(train, val, batch_size):
    """Fine-tuning's logits (computed at completion tokens only) at their largest, as train_memory's
    logit_rows (four fp32 copies): the batch_size most completion tokens of a training batch, or half
    of a validation batch's (4 x batch_size examples without gradients: logits and log-softmax)."""
    def most(examples, n):
        return sum(sorted(sum(mask) for _, mask in examples)[-n:])
    return max(most(train, batch_size), most(val, 4 * batch_size) // 2)

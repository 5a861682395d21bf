"""
What every script shares, each in one place: the configurator and command-line errors, device choice,
autocast and the MFU peak table, and the guards on output paths and training. Checkpoints live in
checkpoint.py, the tokenizer and data sources in data/sources.py, the optimizer next to the model.
"""
import ast
import math
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

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
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


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

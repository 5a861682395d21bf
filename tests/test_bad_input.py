"""Bad input and faults, as a new user would meet them: every script answers a bad input with one
'error: ...' line and exit code 2, before any work and without changing a file; checkpoints are
loaded with weights_only=True; a diverging run stops without overwriting its last checkpoint;
a user's --data_dir is never written; a run owns its output folder while it runs; a full disk and a batch
that cannot fit are one line. Resuming is tests/test_resume.py."""
import errno
import fcntl
import hashlib
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoint
import common
from checkpoint import load_checkpoint, save_checkpoint
from common import UsageError, append_line, file_stamp, lock_output, release_outputs, run_cli
from tests.conftest import ROOT, TINY_RUN, run_pretrain

pytestmark = pytest.mark.usefixtures("one_thread")


class Evil:
    """A pickle that runs a shell command when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_ckpt, shakespeare_dir):
    """A folder of bad (and a few good) inputs; every case must leave it exactly as it was."""
    ws = tmp_path_factory.mktemp("bad_input")
    (ws / "pre").mkdir()
    shutil.copy(tiny_ckpt / "ckpt.pt", ws / "pre" / "ckpt.pt")
    ckpt = torch.load(ws / "pre" / "ckpt.pt", weights_only=True)
    finetuned = dict(model=ckpt["model"], masks={}, config=dict(task="e2e", init_from=str(tiny_ckpt)),
                     model_config=ckpt["model_config"], pretrain_sparsity=0.75, pretrain_config=ckpt["config"],
                     finetune=dict(steps=1), iter_num=1, best_val_loss=3.0)
    save_checkpoint(finetuned, ws / "ft.pt")
    save_checkpoint(finetuned, ws / "ftrun" / "ckpt.pt")
    save_checkpoint(dict(ckpt, model_config={**ckpt["model_config"], "n_embd": 64}), ws / "mismatch" / "ckpt.pt")
    evil = dict(model={}, model_config={}, payload=Evil(ws / "pwned"))
    torch.save(evil, ws / "evil.pt")
    (ws / "evil").mkdir()
    shutil.copy(ws / "evil.pt", ws / "evil" / "ckpt.pt")
    (ws / "empty_dir").mkdir()
    (ws / "a_file").write_text("not a folder\n")
    (ws / "only_train").mkdir()
    shutil.copy(shakespeare_dir / "train.bin", ws / "only_train" / "train.bin")
    for name, content in (("empty_bin", b""), ("odd_bin", b"\x01\x02\x03")):
        (ws / name).mkdir()
        for split in ("train", "val"):
            (ws / name / f"{split}.bin").write_bytes(content)
    (ws / "nonutf8.txt").write_bytes(b"caf\xe9 \xff\xfe not utf-8\n" * 20)
    (ws / "nonutf8.csv").write_bytes(b"article,summary\ncaf\xe9 \xff,x\n")
    (ws / "notstr.jsonl").write_text('{"article": 5, "summary": ["x"]}\n')
    (ws / "list.jsonl").write_text('["article", "summary"]\n')
    (ws / "textnum.jsonl").write_text('{"text": 12345}\n')
    (ws / "e2e.csv").write_text("article,summary\na b c,d\n")
    (ws / "syntax.py").write_text("max_iters = = 3\n")
    return ws


def snapshot(folder):
    """Every file under `folder` by content hash (folders that stay empty do not count); checkpoints,
    too large to hash for every case, by size, inode and modification time (a rewrite changes them)."""
    def key(p):
        st = p.stat()
        return (st.st_size, st.st_ino, st.st_mtime_ns) if st.st_size > 1 << 20 else hashlib.sha256(p.read_bytes()).hexdigest()
    return {str(p.relative_to(folder)): key(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def repo_data():
    return {str(p): p.stat().st_mtime_ns for p in (ROOT / "data").rglob("*") if p.is_file() and "__pycache__" not in str(p)}


PRE = "--model=tiny --batch_size=2 --eval_iters=1 --device=cpu"
FT = "--init_from={ws}/pre --device=cpu --max_examples=4 --eval_examples=1 --beam_size=1"
CASES = [  # (script, arguments with {ws} for the folder of inputs, a word the message must hold)
    ("pretrain", "--learning_rate=1e400", "finite"),
    ("pretrain", "--dropout=-1e999", "finite"),
    ("pretrain", f"{PRE} --out_dir={{ws}}/pre", "--init_from=resume"),
    ("pretrain", f"{PRE} --out_dir={{ws}}/a_file", "not a folder"),
    ("pretrain", f"{PRE} --out_dir=", "empty"),
    ("pretrain", f"{PRE} --out_dir={{ws}}/a_file/run", "is a file"),
    ("pretrain", f"{PRE} --out_dir={{ws}}/new --data_dir={{ws}}/only_train", "val.bin"),
    ("pretrain", f"{PRE} --out_dir={{ws}}/new --data_dir={{ws}}/missing", "does not exist"),
    ("pretrain", f"{PRE} --out_dir={{ws}}/new --data_dir={{ws}}/empty_bin", "is empty"),
    ("pretrain", f"{PRE} --out_dir={{ws}}/new --data_dir={{ws}}/odd_bin", "odd size"),
    ("pretrain", "--init_from=resume --out_dir={ws}/ftrun", "not a pre-training checkpoint"),
    ("pretrain", "--init_from=resume --out_dir={ws}/mismatch --max_iters=4", "do not match"),
    ("pretrain", "--init_from=resume --out_dir={ws}/evil", "refusing to load"),
    ("pretrain", "--init_from=resume --out_dir={ws}/empty_dir", "checkpoint not found"),
    ("pretrain", "--init_from=resume --out_dir={ws}/pre --max_iters=1", "below"),
    ("pretrain", f"{PRE} --init_from={{ws}}/evil.pt --out_dir={{ws}}/new", "refusing to load"),
    ("pretrain", "{ws}/syntax.py", "syntax error"),
    ("pretrain", "{ws}/missing.py", "not found"),
    ("finetune", f"{FT} --task=e2e --data={{ws}}/e2e.csv --out_dir={{ws}}/new", "only for curation"),
    ("finetune", f"{FT} --learning_rate=1e400 --out_dir={{ws}}/new", "finite"),
    ("finetune", f"{FT} --soft_prompt_lr=1e999 --out_dir={{ws}}/new", "finite"),
    ("finetune", "--init_from={ws}/evil.pt --out_dir={ws}/new", "refusing to load"),
    ("finetune", "--init_from={ws}/a_file --out_dir={ws}/new", "cannot read checkpoint"),
    ("finetune", f"{FT} --out_dir={{ws}}/a_file", "not a folder"),
    ("finetune", f"{FT} --out_dir={{ws}}/ftrun", "exists"),
    ("finetune", f"{FT} --task=curation --data={{ws}}/nonutf8.csv --out_dir={{ws}}/new", "UTF-8"),
    ("finetune", f"{FT} --task=curation --data={{ws}}/notstr.jsonl --out_dir={{ws}}/new", "must be strings"),
    ("finetune", f"{FT} --task=curation --data={{ws}}/list.jsonl --out_dir={{ws}}/new", "not a JSON object"),
    ("bench", "--block_size=-5", "block_size"),
    ("bench", "--json={ws}/a_file/x.json", "not a folder"),
    ("bench", "--json={ws}", "is a folder"),
    ("bench", "--device=tpu", "unknown device"),
    ("bench", "--sparsity=1e400", "finite"),
    ("experiments.reproduce", "--results={ws}/a_file", "not a folder"),
    ("experiments.reproduce", "--results=", "empty"),
    ("experiments.reproduce", "--scale=nope", "scale"),
    ("experiments.reproduce", "--sparsities=0.5,1.5", "sparsities"),
    ("related.sparsegpt", "--ckpt={ws}/pre --device=tpu", "unknown device"),
    ("related.sparsegpt", "--ckpt={ws}/pre --calib_samples=0", "calib_samples"),
    ("related.sparsegpt", "--ckpt={ws}/pre --eval_batches=0", "eval_batches"),
    ("related.sparsegpt", "--ckpt={ws}/evil.pt", "refusing to load"),
    ("related.sparsegpt", "--ckpt={ws}/pre --out={ws}/a_file", "exists"),
    ("related.sparsegpt", "--ckpt={ws}/pre --out={ws}", "is a folder"),
    ("pretrain", f"{PRE} --mask_method=sparsegpt --out_dir={{ws}}/new", "related.sparsegpt"),
    ("related.sparsegpt", "--ckpt={ws}/ft.pt --data_dir={ws}/only_train", "val.bin"),
    ("related.sparsegpt", "--ckpt={ws}/pre --data_dir={ws}/missing", "does not exist"),
    ("related.subspace", "{ws}/pre {ws}/evil.pt", "refusing to load"),
    ("related.subspace", "{ws}/pre {ws}/pre --png={ws}/a_file/x.png", "not a folder"),
    ("related.subspace", "{ws}/pre {ws}/pre --json={ws}", "is a folder"),
    ("related.subspace", "", "usage"),  # parse_config, not argparse (issue 11)
    ("related.subspace", "{ws}/pre {ws}/pre --bogus", "unknown config key"),
    ("data.prepare", "shakespeare --files={ws}/nonutf8.txt --out_dir={ws}/prep", "UTF-8"),
    ("data.prepare", "pile --files={ws}/textnum.jsonl --out_dir={ws}/prep", "not a string"),
    ("data.prepare", "pile --files={ws}/list.jsonl --out_dir={ws}/prep", "not a JSON object"),
    ("data.prepare", "shakespeare --out_dir={ws}/a_file", "not a folder"),
    ("data.prepare", "shakespeare --out_dir=", "empty"),
    ("data.prepare", "nope", "unknown dataset"),
    ("tools.kernel_bench", "--devices tpu", "--devices"),
    ("tools.kernel_bench", "--gen_model nope", "gen_model"),
    ("tools.kernel_bench", "--json {ws}/a_file/x.json", "not a folder"),
    ("tools.kernel_bench", "--sparsity 1.5", "sparsity"),
    ("tools.kernel_bench", "--json=", "empty"),
]


@pytest.mark.parametrize("script, args, word", CASES, ids=[f"{s}:{a}" for s, a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(ws, capsys, script, args, word):
    before, data_before = snapshot(ws), repo_data()
    argv = [a.replace("{ws}", str(ws)) for a in args.split(" ") if a]
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:  # any other exception is a traceback: the test fails
        run_cli(module.main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), err
    assert word in errors[0], errors[0]
    assert "Traceback" not in err
    assert snapshot(ws) == before and repo_data() == data_before
    assert not (ws / "pwned").exists()


def test_malicious_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(dict(model={}, model_config={}, payload=Evil(marker)), tmp_path / "evil.pt")
    with pytest.raises(UsageError, match="refusing to load .*evil.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_project_checkpoints_load_with_weights_only(tiny_ckpt):
    ckpt = torch.load(tiny_ckpt / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == 2 and ckpt["masks"]


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_ckpt, shakespeare_dir, capsys):
    shutil.copytree(tiny_ckpt, tmp_path, dirs_exist_ok=True)
    good = (tmp_path / "ckpt.pt").read_bytes()
    import pretrain
    args = ["--model=tiny", "--batch_size=2", "--eval_iters=1", "--device=cpu", f"--data_dir={shakespeare_dir}",
            f"--out_dir={tmp_path}", "--init_from=resume", "--learning_rate=1e6", "--max_iters=40",
            "--eval_interval=30"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(pretrain.main, args)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert exit_info.value.code == 3
    assert len(errors) == 1 and "at iteration" in errors[0] and ("is nan" in errors[0] or "is inf" in errors[0])
    assert (tmp_path / "ckpt.pt").read_bytes() == good  # byte-identical
    assert not (tmp_path / "ckpt.pt.tmp").exists()


def test_user_data_dir_is_never_written(tmp_path, shakespeare_dir):
    user = tmp_path / "mydata"
    user.mkdir()
    (user / "train.bin").write_bytes(bytes(range(256)) * 64)
    (user / "notes.txt").write_text("mine\n")
    before = snapshot(user)
    with pytest.raises(UsageError, match="no val.bin"):
        run_pretrain(tmp_path / "run", user, "--max_iters=1")
    assert snapshot(user) == before
    assert not (tmp_path / "run").exists()


def test_finetune_divergence_stops_without_saving(tmp_path, tiny_ckpt, capsys):
    import finetune
    args = [f"--init_from={tiny_ckpt}", f"--out_dir={tmp_path / 'ft'}", "--device=cpu", "--max_examples=16",
            "--batch_size=4", "--learning_rate=1e6", "--warmup_iters=0", "--max_epochs=3"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(finetune.main, args)
    assert exit_info.value.code == 3
    assert "at iteration" in capsys.readouterr().err
    assert not (tmp_path / "ft" / "ckpt.pt").exists()


# -----------------------------------------------------------------------------
# issue 28: two runs into one folder, a full disk, an impossible batch


def one_error_line(err):
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in err, err
    return errors[0]


def iters(log):
    return [json.loads(line)["iter"] for line in log.read_text().splitlines()]


def test_two_scratch_runs_into_one_folder_one_refuses_and_the_log_holds_each_iteration_once(
        tmp_path, shakespeare_dir, capsys):
    out = tmp_path / "run"
    args = [*TINY_RUN, f"--data_dir={shakespeare_dir}", f"--out_dir={out}", "--max_iters=3", "--eval_interval=3"]
    first = subprocess.Popen([sys.executable, "pretrain.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not ((out / ".lock").exists() and (out / ".lock").read_text().strip()):  # the pid: the lock is held
            assert first.poll() is None and time.time() < deadline, first.stderr and first.stderr.read()
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)  # frozen while holding its folder: the second run surely overlaps it
        import pretrain
        with pytest.raises(SystemExit) as exit_info:
            run_cli(pretrain.main, args)
    finally:
        first.send_signal(signal.SIGCONT)
    assert exit_info.value.code == 2
    assert f"{out} is in use by another run (pid {first.pid})" in one_error_line(capsys.readouterr().err)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert iters(out / "log.jsonl") == [1, 2, 3]
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 3
    assert not (out / ".lock").exists()  # removed by its owner at the end


def hold_lock(folder, name=".lock"):
    """Another process's lock, as flock sees it: a second open file description, pid 4242 inside."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242\n")
    return fd


@pytest.mark.parametrize("script", ["data.prepare", "finetune", "related.sparsegpt"])
def test_an_output_in_use_is_refused_before_anything_is_written(tmp_path, tiny_ckpt, shakespeare_dir, capsys,
                                                                script):
    out = tmp_path / "out"
    argv, held = {
        "data.prepare": (["shakespeare", f"--out_dir={out}"], (out, ".lock")),
        "finetune": ([f"--init_from={tiny_ckpt}", f"--out_dir={out}", "--device=cpu", "--max_examples=4",
                      "--val_examples=4", "--eval_examples=1", "--beam_size=1"], (out, ".lock")),
        "related.sparsegpt": ([f"--ckpt={tiny_ckpt}", f"--data_dir={shakespeare_dir}", f"--out={out}/pruned.pt"],
                      (out, ".pruned.pt.lock")),
    }[script]
    fd = hold_lock(*held)
    try:
        before = snapshot(out)
        with pytest.raises(SystemExit) as exit_info:
            run_cli(importlib.import_module(script).main, argv)
        assert exit_info.value.code == 2
        assert "is in use by another run (pid 4242)" in one_error_line(capsys.readouterr().err)
        assert snapshot(out) == before
    finally:
        os.close(fd)


def test_a_checkpoint_written_while_a_run_started_is_never_overwritten(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    seen = file_stamp(ckpt)  # a scratch run looked: no checkpoint yet
    ckpt.write_bytes(b"the other run's")  # ... and another run, faster, wrote one
    with pytest.raises(UsageError, match="written by another run while this one was starting"):
        lock_output(tmp_path, unchanged=[(ckpt, seen)])
    assert not (tmp_path / ".lock").exists()  # the loser let the folder go
    lock_output(tmp_path, unchanged=[(ckpt, file_stamp(ckpt))])
    release_outputs(tmp_path)


class FullDisk(io.FileIO):
    """A file on a disk that fills after `room` bytes: write raises OSError(ENOSPC), as the OS does."""
    room = 1000

    def write(self, data):
        if self.tell() + len(memoryview(data).cast("B")) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(tmp_path, tiny_ckpt, shakespeare_dir,
                                                                            monkeypatch, capsys):
    shutil.copytree(tiny_ckpt, tmp_path, dirs_exist_ok=True)
    good = (tmp_path / "ckpt.pt").read_bytes()
    real_open = open
    monkeypatch.setattr(checkpoint, "open", lambda path, mode="r", *a, **k: FullDisk(path, mode.replace("b", ""))
                        if str(path).endswith("ckpt.pt.tmp") else real_open(path, mode, *a, **k), raising=False)
    import pretrain
    with pytest.raises(SystemExit) as exit_info:
        run_cli(pretrain.main, [f"--out_dir={tmp_path}", "--init_from=resume", "--max_iters=3", "--eval_interval=3"])
    assert exit_info.value.code == 2
    assert one_error_line(capsys.readouterr().err) == \
        f"error: no space left on device while writing {tmp_path / 'ckpt.pt'}; the last checkpoint is unchanged"
    assert (tmp_path / "ckpt.pt").read_bytes() == good  # byte-identical
    assert not (tmp_path / "ckpt.pt.tmp").exists() and not (tmp_path / ".lock").exists()


def test_a_log_line_that_does_not_fit_is_cut_back_off(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    log.write_text('{"iter": 1}\n')

    class Torn(FullDisk):  # half the line reaches the disk, then it is full
        def write(self, data):
            super().write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(common, "open", lambda path, mode="r", *a, **k:
                        io.TextIOWrapper(io.BufferedWriter(Torn(path, "a")), encoding="utf-8"), raising=False)
    with pytest.raises(UsageError, match=f"no space left on device while writing {log}; log.jsonl is unchanged"):
        append_line(log, '{"iter": 2, "loss": 3.0}')
    assert log.read_text() == '{"iter": 1}\n'


def test_a_batch_that_cannot_fit_is_refused_before_training(tmp_path, shakespeare_dir, capsys):
    import pretrain
    with pytest.raises(SystemExit) as exit_info:
        run_cli(pretrain.main, [*TINY_RUN, f"--data_dir={shakespeare_dir}", f"--out_dir={tmp_path / 'run'}",
                                "--batch_size=100000"])
    assert exit_info.value.code == 2
    error = one_error_line(capsys.readouterr().err)
    assert "batches of 100000 x 32 tokens need about" in error and "--gradient_accumulation_steps" in error
    assert not (tmp_path / "run").exists()


PEAK = """
import torch
from common import train_memory
from model import ADAMW, GPT, configure_optimizer, preset_config
torch.set_num_threads(1)

def peak():  # this process's peak RSS (ru_maxrss would include the parent's: it survives exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

start, model = peak(), GPT(preset_config("mini", 128))
optimizer, peaks, estimates = configure_optimizer(model, dict(learning_rate=1e-3, **ADAMW), "cpu"), [], []
for batch_size, steps in ((1, 2), (6, 1)):  # from the second step on, AdamW's moments exist
    for _ in range(steps):
        x = torch.randint(50257, (batch_size, 128))
        model(x, x)[1].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peaks.append(peak() - start)
    estimates.append(sum(train_memory(model.config, batch_size, 128, model.num_params(), one_pass_head=True).values()))
print(*peaks, *estimates)
"""


@pytest.mark.slow  # a subprocess
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmHWM: Linux")
def test_the_memory_estimate_is_within_a_factor_of_the_measured_peak():
    proc = subprocess.run([sys.executable, "-c", PEAK], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    peak1, peak6, est1, est6 = map(float, proc.stdout.split())
    # what a larger batch adds (activations, logits) is counted within 2.5x either way: the allocator reuses
    # freed blocks differently from run to run (measured/estimated 0.57-0.61 on an AMD EPYC Zen 4 with the
    # one-pass LM head); leaving out the logits, the largest term here, would put it near 10
    assert 1 / 2.5 < (peak6 - peak1) / (est6 - est1) < 2.5
    # and the whole: never over the measured peak by more than 1.5x (no run that fits is refused), never
    # under it by more than 2x (the CPU's own code pages, ~0.15 GB here, are not counted; 0.83x on Zen 4)
    assert peak6 / 2 < est6 < 1.5 * peak6

"""Resuming pre-training (--init_from=resume): bit-identical to an uninterrupted run, the sparsity
cannot change, a killed and resumed run logs every iteration exactly once, and extending a run keeps
its LR schedule."""
import json

import pytest
import torch

from checkpoint import save_checkpoint
from common import UsageError
from model import cosine_lr
from tests.conftest import run_pretrain

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_resume_after_interruption_is_bit_identical(tmp_path, shakespeare_dir):
    common = ["--sparsity=0.5", "--lr_decay_iters=12", "--eval_interval=6", "--dropout=0.1"]
    run_pretrain(tmp_path / "full", shakespeare_dir, *common, "--max_iters=12")
    run_pretrain(tmp_path / "cut", shakespeare_dir, *common, "--max_iters=6")  # stopped half way
    run_pretrain(tmp_path / "cut", shakespeare_dir, "--init_from=resume", "--max_iters=12")
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)
    assert b["iter_num"] == 12 and b["tokens_seen"] == a["tokens_seen"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert all(torch.equal(a["masks"][n], b["masks"][n]) for n in a["masks"])


def test_resume_refuses_to_change_sparsity(tmp_path, shakespeare_dir):
    run_pretrain(tmp_path, shakespeare_dir, "--sparsity=0.5", "--max_iters=1", "--eval_interval=1")
    with pytest.raises(UsageError, match="sparsity cannot change"):
        run_pretrain(tmp_path, shakespeare_dir, "--init_from=resume", "--sparsity=0.75", "--max_iters=2")


def iters(log):
    return [json.loads(line)["iter"] for line in log.read_text().splitlines()]


def test_log_after_kill_and_resume_holds_each_iteration_once(tmp_path, shakespeare_dir, monkeypatch):
    import pretrain
    common = ["--max_iters=8", "--eval_interval=3"]

    class Killed(BaseException):
        pass

    saves = []

    def save_then_die(obj, path):  # a kill right after the second checkpoint was written
        save_checkpoint(obj, path)
        saves.append(obj["iter_num"])
        if len(saves) == 2:
            raise Killed
    monkeypatch.setattr(pretrain, "save_checkpoint", save_then_die)
    (tmp_path / "log.jsonl").write_text(json.dumps(dict(iter=1, loss=99.0)) + "\n")  # a failed run, no checkpoint
    with pytest.raises(Killed):
        run_pretrain(tmp_path, shakespeare_dir, *common)
    monkeypatch.undo()
    assert iters(tmp_path / "log.jsonl") == list(range(1, 7))  # the saved iteration 6 has its line
    # a kill later on: lines past the checkpoint, a torn last line and a half-written checkpoint
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write(json.dumps(dict(iter=7, loss=1.0)) + "\n" + '{"iter": 8, "lo')
    (tmp_path / "ckpt.pt.tmp").write_bytes(b"partial")
    run_pretrain(tmp_path, shakespeare_dir, "--init_from=resume")
    assert iters(tmp_path / "log.jsonl") == list(range(1, 9))
    assert not (tmp_path / "ckpt.pt.tmp").exists()


def test_resume_keeps_the_schedule_when_extending_and_says_when_finished(tmp_path, shakespeare_dir, capsys):
    run_pretrain(tmp_path, shakespeare_dir, "--max_iters=4", "--eval_interval=4", "--warmup_iters=1")
    run_pretrain(tmp_path, shakespeare_dir, "--init_from=resume", "--max_iters=6")
    assert "extending the run from 4 to 6 iterations" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    floor = cosine_lr(4, 1e-3, 1, 4)  # the original schedule: decayed to its floor at iteration 4
    assert [r["iter"] for r in records] == list(range(1, 7))
    assert records[4]["lr"] == records[5]["lr"] == pytest.approx(floor)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["config"]["lr_decay_iters"] == 4
    log = (tmp_path / "log.jsonl").read_bytes()
    run_pretrain(tmp_path, shakespeare_dir, "--init_from=resume")
    assert "finished at iteration 6" in capsys.readouterr().out
    assert (tmp_path / "log.jsonl").read_bytes() == log

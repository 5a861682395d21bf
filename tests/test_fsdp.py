"""--fsdp (FSDP2 fully_shard) on 2 CPU processes with gloo: the masks hold on sharded parameters, the
checkpoint is the ordinary one, the numbers match DDP's, and resume is exact."""
import json

import pytest
import torch

import pretrain
from common import UsageError
from checkpoint import load_checkpoint
from model import GPT, GPTConfig
from tests.conftest import TWO_PROCESS_RUN, torchrun_pretrain


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, shakespeare_dir):
    out = tmp_path_factory.mktemp("fsdp")
    torchrun_pretrain(out, shakespeare_dir, *TWO_PROCESS_RUN, "--fsdp=True")
    return out


def log(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fsdp_run_ends_with_the_same_masks_on_both_ranks(fsdp_run):
    fingerprints = log(fsdp_run)[-1]["rank_fingerprints"]  # [weights, masks] as each rank sees them
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]


@pytest.mark.slow
def test_fsdp_checkpoint_loads_unsharded_with_exact_masks_and_masked_adam_state(fsdp_run):
    ckpt = load_checkpoint(fsdp_run)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])  # strict: every name, full shapes
    optimizer = pretrain.configure_optimizer(model, pretrain.DEFAULTS, "cpu")
    optimizer.load_state_dict(ckpt["optimizer"])  # optimizer.state_dict()'s format, not the sharded one
    params = dict(model.named_parameters())
    assert len(ckpt["masks"]) == 6 * ckpt["model_config"]["n_layer"]
    for name, mask in ckpt["masks"].items():
        assert mask.shape == params[name].shape
        assert int((~mask).sum()) == round(0.75 * mask.numel())
        assert not params[name][~mask].any(), name  # pruned weights exactly 0
        state = optimizer.state[params[name]]
        assert not state["exp_avg"][~mask].any() and not state["exp_avg_sq"][~mask].any(), name
    assert ckpt["iter_num"] == 5 and ckpt["config"]["fsdp"]


@pytest.mark.slow
def test_fsdp_matches_ddp_loss_weights_and_optimizer_state(fsdp_run, ddp_run):
    fsdp, ddp = load_checkpoint(fsdp_run), load_checkpoint(ddp_run)
    assert [r["loss"] for r in log(fsdp_run)] == pytest.approx([r["loss"] for r in log(ddp_run)], abs=1e-6)
    assert fsdp["model"].keys() == ddp["model"].keys()
    for name in ddp["model"]:
        torch.testing.assert_close(fsdp["model"][name], ddp["model"][name], atol=1e-5, rtol=0, msg=name)
    assert all(torch.equal(fsdp["masks"][n], ddp["masks"][n]) for n in ddp["masks"])
    assert fsdp["optimizer"]["param_groups"] == ddp["optimizer"]["param_groups"]
    for i, state in ddp["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(fsdp["optimizer"]["state"][i][key], value, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_fsdp_resume_after_interruption_is_bit_identical(fsdp_run, tmp_path, shakespeare_dir):
    cut = [a for a in TWO_PROCESS_RUN if not a.startswith("--max_iters")]
    torchrun_pretrain(tmp_path, shakespeare_dir, *cut, "--fsdp=True", "--max_iters=3", "--lr_decay_iters=5")
    torchrun_pretrain(tmp_path, shakespeare_dir, "--init_from=resume", "--max_iters=5")
    a, b = load_checkpoint(fsdp_run), load_checkpoint(tmp_path)
    assert b["iter_num"] == 5 and b["config"]["fsdp"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for i, state in a["optimizer"]["state"].items():
        assert all(torch.equal(value, b["optimizer"]["state"][i][key]) for key, value in state.items()), i


def test_fsdp_rejects_neuron_omission():
    with pytest.raises(UsageError, match="--omit_rate does not work with --fsdp"):
        pretrain.validate({**pretrain.DEFAULTS, "fsdp": True, "omit_rate": 0.5})


@pytest.mark.slow
def test_fsdp_resumes_a_ddp_checkpoint(ddp_run, tmp_path, shakespeare_dir):
    cut = [a for a in TWO_PROCESS_RUN if not a.startswith("--max_iters")]
    torchrun_pretrain(tmp_path, shakespeare_dir, *cut, "--max_iters=3", "--lr_decay_iters=5")  # DDP
    torchrun_pretrain(tmp_path, shakespeare_dir, "--init_from=resume", "--max_iters=5", "--fsdp=True")
    a, b = load_checkpoint(ddp_run), load_checkpoint(tmp_path)
    assert b["iter_num"] == 5 and b["config"]["fsdp"]
    for name in a["model"]:
        torch.testing.assert_close(b["model"][name], a["model"][name], atol=1e-5, rtol=0, msg=name)

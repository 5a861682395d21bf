"""SAT-style omission: dense at rate 0, fewer FLOPs when omitting, zero grads, ladder schedule, pretrain flags."""
import copy
import json

import pytest
import torch

from related import omission
from common import UsageError
from checkpoint import load_checkpoint
from conftest import run_pretrain
from model import GPT, PRESETS


@pytest.fixture
def pair():
    torch.manual_seed(0)
    dense = GPT(PRESETS["tiny"])
    model = copy.deepcopy(dense)
    return dense.train(), model.train(), omission.Omitter(model)


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(50257, (2, 32), generator=g), torch.randint(50257, (2, 32), generator=g)


def test_rate_zero_equals_dense(pair):
    dense, model, omitter = pair
    x, y = batch()
    for rate in (0.5, 0.0, 0.0):  # 0.5 on the very first step: nothing observed yet, so still dense
        omitter.set_rate(rate)
        l1, l2 = dense(x, y)[1], model(x, y)[1]
        assert torch.equal(l1, l2)
        l1.backward()
        l2.backward()
        for (n, p1), p2 in zip(dense.named_parameters(), model.parameters()):
            assert torch.equal(p1.grad, p2.grad), n
        dense.zero_grad()
        model.zero_grad()


def test_omission_is_cheaper_in_flops(pair):
    _, model, omitter = pair
    x, y = batch()
    h = torch.randn(2, 32, 128)
    model(x, y)  # observe importance once
    dense_model = omission.train_step_flops(model, x, y)
    dense_blocks = omission.train_step_flops(model, h, None, blocks_only=True)
    omitter.set_rate(0.5)
    assert omitter.kept_fraction() == (0.5, 0.5)
    blocks = omission.train_step_flops(model, h, None, blocks_only=True)
    whole = omission.train_step_flops(model, x, y)
    assert blocks < 0.55 * dense_blocks  # every block matmul halves
    assert whole < dense_model
    # our FLOPs accounting agrees with torch's count of what was skipped (2 sequences)
    predicted = 2 * omitter.saved_train_flops(32)
    assert abs((dense_model - whole) - predicted) < 0.1 * predicted


def test_omitted_units_get_zero_grad_and_eval_is_dense(pair):
    dense, model, omitter = pair
    x, y = batch()
    model(x, y)
    omitter.set_rate(0.75)
    keep = omitter.mlp_keep[0]
    assert keep.numel() == 128
    model(x, y)[1].backward()
    g = model.transformer.h[0].mlp.c_fc.weight.grad
    dropped = torch.ones(512, dtype=torch.bool)
    dropped[keep] = False
    assert not g[dropped].any() and g[keep].abs().sum(1).gt(0).all()
    heads = omitter.head_keep[0]
    assert heads.numel() == 1  # ceil(0.25 * 4)
    gq = model.transformer.h[0].attn.q_proj.weight.grad.view(4, 32, 128)
    assert [bool(gq[h].any()) for h in range(4)] == [h in heads.tolist() for h in range(4)]
    model.eval()
    dense.eval()
    assert torch.equal(model(x)[0], dense(x)[0])
    assert torch.equal(model.generate(x[:, :4], 3, temperature=0), dense.generate(x[:, :4], 3, temperature=0))


def test_ladder_schedule():
    rungs = omission.parse_schedule("ladder")
    rates = [omission.rate_at(it, 100, 0.6, rungs) for it in range(100)]
    assert rates[0] == 0.6 and rates[-1] == 0.0 and rates[74] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # stepping down
    assert len(set(rates)) == 4
    assert omission.parse_schedule("1,0.5,0") == (1.0, 0.5, 0.0)
    with pytest.raises(ValueError):
        omission.parse_schedule("1,0.5")  # must end dense


@pytest.mark.slow  # trains end to end
def test_pretrain_with_omission(tmp_path, shakespeare_dir):
    run_pretrain(tmp_path / "d", shakespeare_dir, "--max_iters=4", "--eval_interval=4")
    run_pretrain(tmp_path / "o", shakespeare_dir, "--max_iters=4", "--eval_interval=4", "--omit_rate=0.5",
                 "--omit_schedule=1,0")
    log = [json.loads(line) for line in open(tmp_path / "o" / "log.jsonl")]
    assert [r["omit_rate"] for r in log] == [0.5, 0.5, 0.0, 0.0]
    dense_flops = load_checkpoint(tmp_path / "d")["flops_spent"]
    # step 1 is dense (importance not yet observed), step 2 omits, steps 3-4 are dense again
    assert log[0]["flops_spent"] == dense_flops / 4
    assert log[1]["flops_spent"] - log[0]["flops_spent"] < 0.99 * dense_flops / 4  # the LM head dominates tiny
    assert log[3]["flops_spent"] - log[2]["flops_spent"] == dense_flops / 4
    with pytest.raises(UsageError, match="end in 0"):
        run_pretrain(tmp_path / "x", shakespeare_dir, "--omit_rate=0.5", "--omit_schedule=1,0.5")

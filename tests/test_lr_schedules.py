"""The two LR schedules at their boundaries: model.cosine_lr (linear warm-up, cosine decay to
10 % of the peak) and model.linear_lr (linear warm-up, linear decay to 0)."""
import math

import pytest

from model import cosine_lr, linear_lr


def test_cosine_lr_warms_up_to_the_peak_then_decays_to_its_floor_and_stays():
    lr = lambda it, **kw: cosine_lr(it, 6e-4, 10, 110, **kw)
    assert lr(0) == pytest.approx(6e-5)            # warm-up starts at peak / warmup_iters, not 0
    assert lr(4) == pytest.approx(3e-4)
    assert lr(9) == pytest.approx(6e-4)            # the last warm-up step reaches the peak
    assert lr(10) == pytest.approx(6e-4)           # the decay starts at the peak
    assert lr(60) == pytest.approx(6e-4 * 0.55)    # half way: (floor + peak) / 2
    assert lr(109) == pytest.approx(6e-4 * (0.1 + 0.45 * (1 + math.cos(math.pi * 0.99))))
    assert lr(110) == lr(111) == lr(10 ** 6) == pytest.approx(6e-5)  # the floor, 10 % of the peak, from decay_iters on
    assert lr(110, min_lr_ratio=0.0) == 0.0 and lr(60, min_lr_ratio=0.0) == pytest.approx(3e-4)
    lrs = [lr(it) for it in range(200)]
    assert lrs[:10] == sorted(lrs[:10]) and lrs[10:] == sorted(lrs[10:], reverse=True)


def test_cosine_lr_without_warmup_starts_at_the_peak():
    assert cosine_lr(0, 1.0, 0, 100) == 1.0
    assert cosine_lr(50, 1.0, 0, 100) == pytest.approx(0.55)
    assert cosine_lr(100, 1.0, 0, 100) == pytest.approx(0.1)


def test_linear_lr_warms_up_to_the_peak_then_decays_to_zero_and_never_below():
    lr = lambda it: linear_lr(it, 1e-3, 10, 110)
    assert lr(0) == pytest.approx(1e-4)
    assert lr(9) == pytest.approx(1e-3) and lr(10) == pytest.approx(1e-3)
    assert lr(60) == pytest.approx(5e-4)
    assert lr(109) == pytest.approx(1e-5)          # the last step still learns
    assert lr(110) == 0.0 and lr(111) == 0.0 and lr(10 ** 6) == 0.0
    lrs = [lr(it) for it in range(200)]
    assert lrs[:10] == sorted(lrs[:10]) and lrs[10:] == sorted(lrs[10:], reverse=True)


def test_linear_lr_without_warmup_decays_from_the_peak_in_equal_steps():
    assert [linear_lr(it, 1.0, 0, 4) for it in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]

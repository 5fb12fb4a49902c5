"""The adaptive grid (an approximation, opt-in): its points are the full grid's exactly, it
measures fewer of them, its allocations meet the budget and stay within the stated tolerance of
the full grid's optimum on the DP's own objective."""
import pytest
import torch

import rdprune as rp
from rdprune.core import adaptive
from rdprune.core import masks as M
from rdprune.lab import data as D

TARGETS = [0.5, 0.7, 0.9]


@pytest.fixture(scope="module")
def resnet():
    return rp.train.pretrained("resnet20", "fashion_mnist", "smoke", seed=0, progress=False,
                               verbose=False)


@pytest.mark.parametrize("which,grid", [("lenet", 51), ("resnet", 26)])
def test_adaptive_grid_against_the_full_grid(which, grid, lenet, resnet):
    net = {"lenet": lenet, "resnet": resnet}[which]
    calib = D.calibration("fashion_mnist", n=16, seed=1)
    full = rp.rd.curves(net, calib, grid=grid, cache=False, progress=False)
    fewer = rp.rd.adaptive_curves(net, calib, TARGETS, grid=grid, start=6)
    assert fewer.attrs["approximate"] == "adaptive grid"
    assert 0 < fewer.attrs["evaluations"] < fewer.attrs["full_evaluations"]
    both = fewer.merge(full, on=["layer", "amount"], suffixes=("", "_full"))
    assert len(both) == len(fewer)  # every point measured lies on the full grid
    assert (both.distortion == both.distortion_full).all()  # and has the full grid's value
    for t in TARGETS:
        best = rp.rd.predicted(full, rp.allocate("rd", net, t, curves=full))
        got = rp.allocate("rd", net, t, curves=fewer)
        assert rp.rd.predicted(full, got) <= best * (1 + adaptive.TOLERANCE) + 1e-12, t
        pruned = M.apply(M.clone(net), got)
        total = sum(m.weight.numel() for m in M.prunable(net).values())
        assert sum(int(m.weight_mask.sum()) for m in M.prunable(pruned).values()) \
            <= (1 - t) * total + 1e-9


def test_adaptive_grid_refuses_bad_input(lenet):
    calib = D.calibration("fashion_mnist", n=4, seed=0)
    with pytest.raises(ValueError, match="target"):
        rp.rd.adaptive_curves(lenet, calib, [1.2])
    with pytest.raises(ValueError, match="start"):
        rp.rd.adaptive_curves(lenet, calib, [0.5], grid=11, start=12)


def test_sampled_curves_stop_by_their_precision_and_equal_curves_on_what_they_used(lenet):
    calib = D.calibration("fashion_mnist", n=24, seed=2)
    every = rp.rd.sampled_curves(lenet, calib, grid=6, tol=0.0, group=8, cache=False,
                                 progress=False)
    assert every.attrs["samples"] == 24 and every.attrs["approximate"] == "fewer samples"
    whole = rp.rd.curves(lenet, calib, grid=6, cache=False, progress=False)
    torch.testing.assert_close(torch.tensor(every.distortion.to_numpy()),
                               torch.tensor(whole.distortion.to_numpy()), rtol=1e-6, atol=1e-12)
    loose = rp.rd.sampled_curves(lenet, calib, grid=6, tol=1e9, group=8, cache=False,
                                 progress=False)
    assert loose.attrs["samples"] == 16 and loose.attrs["max_rel_se"] <= 1e9
    first = rp.rd.curves(lenet, calib[:16], grid=6, cache=False, progress=False)
    torch.testing.assert_close(torch.tensor(loose.distortion.to_numpy()),
                               torch.tensor(first.distortion.to_numpy()), rtol=1e-6, atol=1e-12)
    mid = rp.rd.sampled_curves(lenet, calib, grid=6, tol=0.3, group=4, cache=False,
                               progress=False)
    assert mid.attrs["samples"] == 24 or mid.attrs["max_rel_se"] <= 0.3
    with pytest.raises(ValueError, match="averaged over samples"):
        rp.rd.sampled_curves(lenet, calib, distortion="worst_case")

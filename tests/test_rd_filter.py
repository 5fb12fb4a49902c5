"""RD at filter granularity (rdprune.rd_filter): curves equal the distortion of physically pruned
networks, allocation meets FLOPs/params targets on the real pruned network, bad input raises.
Random-init ResNet-20 with perturbed BN statistics (so a BN shift would show), 16 images."""
import copy

import numpy as np
import pytest
import torch

from rdprune import models, rd, structured
from rdprune import rd_filter as RF


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = models.build("resnet20", 10, 1, image_size=28)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.bias.data.uniform_(-0.5, 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def data():
    return torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def curves(net, data):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield RF.curves(net, data, grid=5, progress=False)
    torch.set_num_threads(before)


def test_curves_shape_zero_at_zero_and_equal_to_physical_pruning(net, data, curves):
    groups = structured.groups(net)
    assert list(curves["layer"].unique()) == list(groups)
    assert list(curves.columns) == RF.COLUMNS and len(curves) == 5 * len(groups)
    assert (curves.loc[curves.amount == 0, "distortion"] == 0).all()
    assert (curves.loc[curves.amount > 0, "distortion"] > 0).all()
    assert (curves.removed == [RF.removed(a, n) for a, n in zip(curves.amount, curves.filters)]).all()
    full = structured.count(net)
    # stem/stage-1 group, a stage group with a conv shortcut, an inner conv
    for g, amount in [("conv1", 0.5), ("layer3.0.conv2", 0.75), ("layer2.1.conv1", 0.25)]:
        row = curves[(curves.layer == g) & (curves.amount == amount)].iloc[0]
        small = RF.apply(net, {g: amount})
        assert rd.distortion(net, small, data) == pytest.approx(row.distortion, rel=1e-4)
        # one group alone: the saving is exactly linear in the channels removed
        got = structured.count(small)
        assert full["flops"] - got["flops"] == pytest.approx(row.flops * row.removed / row.filters)
        assert full["params"] - got["params"] == \
            pytest.approx(row.n_weights * row.removed / row.filters)
    ref = RF.curves(net, data, grid=5, groups=["layer1.1.conv1", "layer3.0.conv2"],
                    method="reference", progress=False)
    fast = curves[curves.layer.isin(ref.layer.unique())].reset_index(drop=True)
    np.testing.assert_allclose(ref.distortion, fast.distortion, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("budget", ["flops", "params"])
def test_allocation_meets_the_target_on_the_real_network(net, data, curves, budget):
    full = structured.count(net)[budget]
    for target in (0.0, 0.3, 0.5, 0.7):
        amounts = RF.allocate(net, target, curves, budget=budget)
        small = RF.apply(net, amounts)
        kept = structured.count(small)[budget]
        assert kept <= (1 - target) * full  # never above the kept budget
        assert kept >= (1 - target) * full - 0.15 * full  # and not absurdly far under it
        if target == 0:
            assert all(a == 0 for a in amounts.values())
        # the pruned network runs and has the chosen channel counts in every member
        out = small(data[:2])
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        convs = {n: m for n, m in small.named_modules() if isinstance(m, torch.nn.Conv2d)}
        for root, members in structured.groups(net).items():
            n = dict(net.named_modules())[root].out_channels
            for member in members:
                assert convs[member].out_channels == n - RF.removed(amounts[root], n)


def test_subset_of_groups_keeps_the_others_whole(net, curves):
    sub = curves[curves.layer.str.endswith("conv1") & (curves.layer != "conv1")]
    amounts = RF.allocate(net, 0.2, sub)
    assert set(amounts) == set(sub.layer)
    small = RF.apply(net, amounts)
    assert small.conv1.out_channels == net.conv1.out_channels
    assert structured.count(small)["flops"] <= 0.8 * structured.count(net)["flops"]


def test_bad_input_raises(net, data, curves):
    with pytest.raises(ValueError, match="calib"):
        RF.curves(net, [1, 2, 3])
    with pytest.raises(ValueError, match="grid"):
        RF.curves(net, data, grid=1)
    with pytest.raises(ValueError, match="distortion"):
        RF.curves(net, data, distortion="l1")
    with pytest.raises(ValueError, match="unknown groups"):
        RF.curves(net, data, groups=["fc"])
    for target in (1.0, -0.1, True, float("nan"), "0.5"):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            RF.allocate(net, target, curves)
    with pytest.raises(ValueError, match="budget"):
        RF.allocate(net, 0.5, curves, budget="latency")
    with pytest.raises(ValueError, match="columns"):
        RF.allocate(net, 0.5, curves.drop(columns="filters"))
    unstructured = rd.curves(net, data, grid=3, cache=False, progress=False)
    with pytest.raises(ValueError, match="columns"):
        RF.allocate(net, 0.5, unstructured)
    other = copy.deepcopy(net)
    other.conv1.weight.data.mul_(2)
    with pytest.raises(ValueError, match="different weights"):
        RF.allocate(other, 0.5, curves)
    with pytest.raises(ValueError, match="out of reach"):
        RF.allocate(net, 0.999, curves)  # one channel per group keeps 0.2 %
    with pytest.raises(ValueError, match="unknown group"):
        RF.apply(net, {"layer1.0.conv2": 0.5})  # a member, not the root of its group
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        RF.apply(net, {"conv1": 1.5})


def test_allocate_front_door(net, curves):
    """``rdprune.allocate("rd_filter", ...)`` is the same allocation; ``exclude`` keeps groups
    whole; the unstructured front door's errors still apply."""
    import rdprune as rp
    assert rp.allocate("rd_filter", net, 0.5, "flops", curves=curves) == \
        RF.allocate(net, 0.5, curves, budget="flops")
    amounts = rp.allocate("rd_filter", net, 0.3, "flops", curves=curves, exclude=["layer3.*"])
    assert amounts and not any(g.startswith("layer3.") for g in amounts)
    assert structured.count(RF.apply(net, amounts))["flops"] <= 0.7 * structured.count(net)["flops"]
    with pytest.raises(ValueError, match="needs curves"):
        rp.allocate("rd_filter", net, 0.5, "flops")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        rp.allocate("rd_filter", net, 1.0, "flops", curves=curves)

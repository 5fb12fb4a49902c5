"""Physical filter removal with Torch-Pruning (rdprune.structured): coupled channels (residual
additions, concatenations), exact channel counts, real cost counting, width baselines at a target.
Random-init models, one input each: seconds on one thread."""

import pytest
import torch

import rdprune as rp
from rdprune import structured as S

pytestmark = pytest.mark.usefixtures("env_threads")


def build(name, seed=0):
    torch.manual_seed(seed)
    return rp.models.build(name, 10, 1).eval()


@pytest.fixture(scope="module")
def resnet():
    return build("resnet20")


def test_count_is_real_network(resnet):
    c = S.count(resnet)
    assert c["params"] == sum(p.numel() for p in resnet.parameters())
    assert c["flops"] == sum(rp.masks.layer_flops(resnet).values())  # convs + linear only
    lenet = build("lenet5")  # conv1: 6·1·25 MACs at 28×28; conv2: 16·6·25 at 10×10; fcs
    assert S.count(lenet)["flops"] == 6 * 25 * 784 + 16 * 150 * 100 + 400 * 120 + 120 * 84 + 840


def test_count_masked_kept_weights_and_latency(resnet):
    """A mask-pruned network counts its masked weights as gone and FLOPs × density (the RD
    authors' count); kept_weights maps what is left back to the original layers."""
    lenet = build("lenet5")
    masked = rp.masks.apply(build("lenet5"), {"fc1": 0.5, "conv2": 0.25})
    full, c = S.count(lenet), S.count(masked)
    assert c["params"] == full["params"] - 24_000 - 600
    assert c["flops"] == round(rp.masks.flops(masked))
    assert c["flops"] == full["flops"] - 400 * 120 // 2 - 16 * 150 * 100 // 4
    kept = S.kept_weights(masked, lenet)
    assert kept["fc1"] == 24_000 and kept["conv2"] == 1800 and kept["conv1"] == 150
    small = S.uniform_width(resnet, 0.5)
    kept = S.kept_weights(small, resnet)
    assert set(kept) == set(rp.masks.prunable(resnet))
    assert sum(kept.values()) < sum(m.weight.numel() for m in rp.masks.prunable(resnet).values())
    ms, ref_ms = S.latency_ms(small, resnet, batch=8, repeats=2)
    assert ms > 0 and ref_ms > 0


def test_groups_follow_residual_couplings(resnet):
    g = S.groups(resnet)
    assert g["conv1"] == ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    assert set(g["layer2.0.conv2"]) == {"layer2.0.conv2", "layer2.0.shortcut.0",
                                        "layer2.1.conv2", "layer2.2.conv2"}
    assert g["layer2.1.conv1"] == ["layer2.1.conv1"]  # a block's inner conv is free
    assert len(g) == 3 + 9


def test_remove_filters_exact_counts_and_coupling(resnet):
    x = torch.randn(2, 1, 28, 28)
    pruned = S.remove_filters(resnet, {"layer1.0.conv1": [0, 3], "layer2.0.shortcut.0": [1, 5, 7]})
    w = S.widths(pruned)
    assert w["layer1.0.conv1"] == 14 and pruned.layer1[0].bn1.num_features == 14
    assert pruned.layer1[0].conv2.in_channels == 14
    for name in ("layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2"):
        assert w[name] == 29
    assert pruned.layer3[0].conv1.in_channels == 29 and pruned.layer3[0].shortcut[0].in_channels == 29
    assert S.widths(resnet)["layer1.0.conv1"] == 16  # the input model is untouched
    keep = [i for i in range(16) if i not in (0, 3)]
    assert torch.equal(pruned.layer1[0].conv1.weight, resnet.layer1[0].conv1.weight[keep])
    assert pruned(x).shape == (2, 10)
    c0, c1 = S.count(resnet), S.count(pruned)
    assert c1["params"] < c0["params"] and c1["flops"] < c0["flops"]


def test_remove_filters_concatenation():
    net = build("densenet121")
    name = "features.0.0.conv2"  # its 12 outputs are concatenated into every later layer's input
    later = net.features[0][1].conv1.in_channels
    pruned = S.remove_filters(net, {name: range(5)})
    assert S.widths(pruned)[name] == 7
    assert pruned.features[0][1].conv1.in_channels == later - 5
    assert pruned(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_remove_filters_rejects_bad_requests(resnet):
    with pytest.raises(ValueError, match="not a Conv2d"):
        S.remove_filters(resnet, {"fc": [0]})
    with pytest.raises(ValueError, match="keep at least one"):
        S.remove_filters(resnet, {"layer1.0.conv1": range(16)})
    with pytest.raises(ValueError, match="lie in"):
        S.remove_filters(resnet, {"layer1.0.conv1": [16]})
    with pytest.raises(ValueError, match="share output channels"):
        S.remove_filters(resnet, {"conv1": [0], "layer1.1.conv2": [1]})


@pytest.mark.parametrize("method", ["uniform", "l1_global", "l1_layer"])
@pytest.mark.parametrize("budget", ["flops", "params"])
def test_baselines_meet_target(resnet, method, budget):
    fn = {"uniform": S.uniform_width, "l1_global": lambda m, t, b: S.l1_filters(m, t, b),
          "l1_layer": lambda m, t, b: S.l1_filters(m, t, b, scope="layer")}[method]
    pruned = fn(resnet, 0.4, budget)
    red = 1 - S.count(pruned)[budget] / S.count(resnet)[budget]
    assert 0.4 <= red < 0.5
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_uniform_width_same_fraction_leading_channels(resnet):
    pruned = S.uniform_width(resnet, 0.3)
    w0, w1 = S.widths(resnet), S.widths(pruned)
    removed = {n: (w0[n] - w1[n], w0[n]) for n in S.groups(resnet)}
    # one f with floor(f·n) = removed for every group: max(r/n) <= f < min((r+1)/n)
    assert max(r / n for r, n in removed.values()) < min((r + 1) / n for r, n in removed.values())
    assert max(r for r, _ in removed.values()) > 0
    k1, k0 = w1["layer1.0.conv1"], w1["conv1"]  # input channels: the stage-1 group, also leading
    assert torch.equal(pruned.layer1[0].conv1.weight, resnet.layer1[0].conv1.weight[:k1, :k0])


def test_l1_removes_smallest_filters():
    lenet = build("lenet5")
    pruned = S.l1_filters(lenet, 0.3, scope="layer")

    def top(w, k):
        return torch.sort(torch.argsort(w.abs().flatten(1).sum(1), descending=True)[:k]).values
    k1, k2 = pruned.conv1.out_channels, pruned.conv2.out_channels
    assert 0 < k1 < 6 and 0 < k2 < 16
    t1, t2 = top(lenet.conv1.weight, k1), top(lenet.conv2.weight, k2)
    assert torch.equal(pruned.conv1.weight, lenet.conv1.weight[t1])
    assert torch.equal(pruned.conv2.weight, lenet.conv2.weight[t2][:, t1])


def test_baseline_bad_input(resnet):
    for t in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"\(0, 1\)"):
            S.uniform_width(resnet, t)
    with pytest.raises(ValueError, match="budget"):
        S.l1_filters(resnet, 0.5, "latency")
    with pytest.raises(ValueError, match="scope"):
        S.l1_filters(resnet, 0.5, scope="block")
    with pytest.raises(ValueError, match="out of reach"):
        S.uniform_width(resnet, 0.9999, "params")

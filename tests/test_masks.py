import copy
import math

import pytest
import torch
from torch import nn

import rdprune as rp
from rdprune import masks as M


class Tiny(nn.Module):
    """conv 1→2 (3×3, pad 1) on 4×4, then flatten and a 32→3 linear: hand-countable."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(32, 3)
        self.input_size = (1, 4, 4)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def test_flops_of_hand_built_net_equal_hand_count():
    m = Tiny()
    # conv: 16 output pixels × 2 channels × 9 MACs; fc: 32 × 3 MACs
    assert M.layer_flops(m) == {"conv": 16 * 2 * 9, "fc": 96}
    M.apply(m, {"conv": 0.5})
    assert M.flops(m) == pytest.approx(16 * 2 * 9 * 0.5 + 96)
    rep = M.report(m)
    assert list(rep.layer) == ["conv", "fc"] and rep.n_weights.tolist() == [18, 96]
    assert rep.flops.tolist() == pytest.approx([144.0, 96.0])


def test_apply_zeroes_floor_of_amount_times_n_smallest():
    torch.manual_seed(0)
    m = Tiny()
    w = m.fc.weight.detach().clone().abs().flatten()
    M.apply(m, {"fc": 0.29})
    k = math.floor(0.29 * 96)
    assert int((m.fc.weight == 0).sum()) == k == int((~m.fc.weight_mask).sum())
    zeroed = (m.fc.weight.flatten() == 0)
    assert w[zeroed].max() <= w[~zeroed].min()


def test_already_zero_weights_go_first_and_pruning_never_revives():
    torch.manual_seed(0)
    m = Tiny()
    M.apply(m, {"fc": 0.5})
    first = M.mask_of(m.fc).clone()
    with torch.no_grad():  # make a masked weight huge: it must stay pruned
        m.fc.weight.view(-1)[(~first.view(-1)).nonzero()[0]] = 0.0
    M.apply(m, {"fc": 0.75})
    assert int((~M.mask_of(m.fc)).sum()) == 72
    assert not (M.mask_of(m.fc) & ~first).any(), "a pruned weight came back"
    M.apply(m, {"fc": 0.1})  # below current sparsity: unchanged
    assert int((~M.mask_of(m.fc)).sum()) == 72
    assert M.sparsity(m) == pytest.approx(72 / (18 + 96))


def test_masks_survive_fine_tuning():
    torch.manual_seed(0)
    m = rp.models.build("lenet5")
    M.apply(m, rp.allocate("uniform", m, 0.8))
    train, _ = rp.data.loaders("fashion_mnist", 64, subset=100)
    rp.train.fine_tune(m, train, steps=15, lr=1e-2, progress=False)
    for name, mod in M.prunable(m).items():
        assert (mod.weight[~mod.weight_mask] == 0).all(), name
    assert M.sparsity(m) == pytest.approx(0.8, abs=0.01)


def test_masked_state_dict_round_trip():
    m = rp.models.build("lenet5")
    M.apply(m, {"fc1": 0.9})
    fresh = M.load_state(rp.models.build("lenet5"), copy.deepcopy(m.state_dict()))
    assert torch.equal(fresh.fc1.weight_mask, m.fc1.weight_mask)


def test_exclusions_by_name_and_pattern():
    m = rp.models.build("resnet20")
    names = M.prunable(m, exclude=("conv1", "*.shortcut.*"))
    assert "conv1" not in names and not any("shortcut" in n for n in names)
    assert "fc" in names


@pytest.mark.parametrize("amounts,match", [({"nope": 0.5}, "not a prunable layer"),
                                           ({"fc": 1.5}, r"\[0, 1\]"), ({"fc": -0.1}, r"\[0, 1\]")])
def test_bad_amounts(amounts, match):
    with pytest.raises(ValueError, match=match):
        M.apply(Tiny(), amounts)


def test_nan_weights_are_refused():
    m = Tiny()
    with torch.no_grad():
        m.fc.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        M.apply(m, {"fc": 0.5})


def test_layer_flops_cache_follows_shape_changes():
    """The FLOPs cache travels with deep copies; a structurally pruned copy must not reuse it."""
    net = rp.models.build("lenet5")
    before = M.layer_flops(net)
    small = copy.deepcopy(net)
    small.conv2 = torch.nn.Conv2d(6, 8, 5)  # half the filters
    small.fc1 = torch.nn.Linear(8 * 5 * 5, small.fc1.out_features)
    after = M.layer_flops(small)
    assert after["conv2"] == before["conv2"] // 2 and after["fc1"] == before["fc1"] // 2
    assert M.layer_flops(net) == before


def test_apply_selects_exactly_the_stable_sorts_first_k_without_sorting():
    """Ties (repeated magnitudes, already-masked weights) are taken by index, as the stable
    sort of prune_order does; checked against it for every k."""
    import torch
    from torch import nn

    from rdprune import masks as M
    layer = nn.Linear(6, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, -0.5, 0.1, 0.0, 0.0, 0.3] * 4).view(4, 6))
    M.apply(layer, {"": 0.25})  # some masked first
    order = M.prune_order(layer)
    for k in range(0, 25):
        assert sorted(M.smallest(layer, k).tolist()) == sorted(order[:k].tolist()), k


def test_attention_scores_and_values_are_counted_on_the_cpu():
    """torch has no FLOP formula for the CPU attention kernel; without one a ViT's attention
    counts 0 and the prunable layers look like all of its FLOPs."""
    import torch.nn.functional as F

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(16, 16) for _ in range(3))

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = (f(x).view(b, n, 2, 8).transpose(1, 2) for f in (self.q, self.k, self.v))
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, 16)

    x = torch.randn(1, 10, 16)
    linear = 3 * 2 * 10 * 16 * 16  # three projections, 2 FLOPs per multiply-add
    scores_and_values = 2 * (2 * 2 * 10 * 10 * 8)  # q·kᵀ and p·v over 2 heads of 8
    assert M.module_flops(Attention(), x)[""] == linear + scores_and_values

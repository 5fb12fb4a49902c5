"""Within-layer criteria (magnitude, Wanda), the OWL allocator and the KL distortion, each
against a direct computation."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import rdprune as rp
from rdprune import masks as M
from rdprune.core import criteria as C
from rdprune.core import owl


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.fc1, self.fc2 = nn.Linear(4 * 36, 20), nn.Linear(20, 5)

    def forward(self, x):
        h = torch.relu(self.dw(torch.relu(self.conv(x))))
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


@pytest.fixture
def net_x():
    torch.manual_seed(0)
    x = torch.randn(16, 2, 6, 6) * torch.tensor([1.0, 5.0]).view(1, 2, 1, 1)  # channel 1 louder
    return Net().eval(), x


def test_wanda_scores_equal_the_definition_weight_by_weight(net_x):
    net, x = net_x
    norms = C.input_norms(net, x)
    with torch.no_grad():  # the inputs each layer sees, computed by hand
        h1 = torch.relu(net.conv(x))
        h2 = torch.relu(net.dw(h1)).flatten(1)
        h3 = torch.relu(net.fc1(h2))
    for name, inp in [("conv", x), ("dw", h1)]:
        want = inp.double().pow(2).sum((0, 2, 3)).sqrt().float()
        assert torch.allclose(norms[name], want, rtol=1e-5)
    for name, inp in [("fc1", h2), ("fc2", h3)]:
        assert torch.allclose(norms[name], inp.double().norm(dim=0).float(), rtol=1e-5)
    w = net.fc1.weight.detach()
    s = C.scores(net.fc1, norms["fc1"])
    i, j = 3, 7
    assert s[i, j] == pytest.approx(abs(float(w[i, j])) * float(norms["fc1"][j]), rel=1e-6)
    sd = C.scores(net.dw, norms["dw"])  # depthwise: output o reads input channel o
    assert sd[2, 0, 1, 1] == pytest.approx(abs(float(net.dw.weight[2, 0, 1, 1].detach()))
                                           * float(norms["dw"][2]), rel=1e-6)


def test_wanda_prunes_every_output_row_alike_and_by_its_scores(net_x):
    net, x = net_x
    pruned = C.apply(copy.deepcopy(net), {"fc1": 0.5, "conv": 0.5}, "wanda", x)
    kept = M.mask_of(M.prunable(pruned)["fc1"])
    assert (kept.sum(1) == 72).all()  # 144 inputs per row, half of each row kept
    s = C.scores(net.fc1, C.input_norms(net, x)["fc1"])
    for r in range(20):  # in each row the removed scores are the smallest
        assert s[r][~kept[r]].max() <= s[r][kept[r]].min()
    by_magnitude = M.apply(copy.deepcopy(net), {"fc1": 0.5})
    assert not torch.equal(kept, M.mask_of(M.prunable(by_magnitude)["fc1"]))
    with pytest.raises(ValueError, match="pass calib="):
        C.apply(copy.deepcopy(net), {"fc1": 0.5}, "wanda")


def test_curves_follow_the_criterion_they_are_asked_for(net_x):
    net, x = net_x
    wanda = rp.rd.curves(net, x, grid=5, cache=False, progress=False, criterion="wanda")
    ref = rp.rd.curves(net, x, grid=5, cache=False, progress=False, criterion="wanda",
                       method="reference")
    mag = rp.rd.curves(net, x, grid=5, cache=False, progress=False)
    assert wanda.attrs["criterion"] == "wanda" and mag.attrs["criterion"] == "magnitude"
    scale = ref.groupby("layer")["distortion"].transform("max").clip(lower=1e-30)
    assert ((wanda.distortion - ref.distortion).abs() / scale).max() <= 1e-5
    assert not np.allclose(wanda.distortion, mag.distortion)
    row = wanda[(wanda.layer == "fc1") & (wanda.amount == 0.5)].distortion.item()
    direct = rp.rd.distortion(net, C.apply(copy.deepcopy(net), {"fc1": 0.5}, "wanda", x), x)
    assert row == pytest.approx(direct, rel=1e-6)  # the curve measures what is applied


def test_owl_meets_the_target_and_orders_layers_by_outliers(net_x):
    net, x = net_x
    names = list(M.prunable(net))
    ratios = owl.outlier_ratios(net, x, names, m=2.0)
    for budget in ("params", "flops"):
        amounts = rp.allocate("owl", net, 0.6, budget, calib=x, m=2.0, lam=0.08)
        pruned = M.apply(copy.deepcopy(net), amounts)
        got = M.sparsity(pruned) if budget == "params" else \
            1 - M.flops(pruned) / sum(M.layer_flops(net).values())
        assert got >= 0.6 - 1e-9
    step = 1.0 / min(m.weight.numel() for m in M.prunable(net).values())  # rounding to weights
    a = [amounts[k] for k in names]
    assert max(a) - min(a) <= 2 * 0.08 + 2 * step  # within ±λ of one shared level
    by_ratio = sorted(names, key=lambda k: ratios[k])  # more outliers: never more pruned
    assert all(amounts[p] >= amounts[q] - step for p, q in zip(by_ratio, by_ratio[1:]))
    assert amounts[by_ratio[0]] - amounts[by_ratio[-1]] >= 2 * 0.08 - 2 * step  # the full ±λ
    with pytest.raises(ValueError, match="needs calib="):
        rp.allocate("owl", net, 0.6)


def test_kl_distortion_is_zero_unpruned_and_never_negative(net_x):
    net, x = net_x
    assert rp.rd.distortion(net, copy.deepcopy(net), x, "kl") == 0.0
    curves = rp.rd.curves(net, x, grid=5, distortion="kl", cache=False, progress=False)
    assert (curves.distortion >= 0).all() and (curves[curves.amount == 0].distortion == 0).all()
    y, z = torch.randn(3, 4, 7), torch.randn(3, 4, 7)  # (samples, tokens, vocabulary)
    p = torch.softmax(y.double(), -1)
    want = (p * (p.log() - torch.log_softmax(z.double(), -1))).sum(-1).mean(1)
    assert torch.allclose(rp.distortion.kl_divergence(y, z), want)


def test_prune_with_wanda_uses_it_for_curves_and_masks(net_x):
    net, x = net_x
    pruned, record = rp.prune(net, "rd", 0.5, calib=x, grid=5, criterion="wanda")
    assert record["criterion"] == "wanda" and M.sparsity(pruned) >= 0.5 - 1e-9
    again = C.apply(copy.deepcopy(net), record["amounts"], "wanda", x)
    assert all(torch.equal(M.mask_of(a), M.mask_of(b)) for a, b in
               zip(M.prunable(pruned).values(), M.prunable(again).values()))
    curves = rp.rd.curves(net, x, grid=5, cache=False, progress=False)  # magnitude curves
    with pytest.raises(ValueError, match="criterion 'magnitude', not 'wanda'"):
        rp.prune(net, "rd", 0.5, calib=x, curves=curves, criterion="wanda")
    pruned, record = rp.prune(net, "owl", 0.5, calib=x, criterion="wanda")
    assert M.sparsity(pruned) >= 0.5 - 1e-9  # of the prunable weights (biases are not)


def test_wanda_never_unprunes_a_magnitude_pruned_layer():
    """Rows with different numbers of masked weights: the masked ones still go first."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.1, 0.2, 0.3, 9.0], [5.0, 6.0, 7.0, 8.0]]))
    M.apply(net, {"0": 3 / 8})  # row 0 loses three weights, row 1 none
    before = ~M.mask_of(net[0])
    C.apply(net, {"0": 3 / 8}, "wanda", torch.randn(8, 4))
    after = ~M.mask_of(net[0])
    assert torch.equal(after, before) and int((net[0].weight == 0).sum()) == 3
    C.apply(net, {"0": 0.5}, "wanda", torch.randn(8, 4))
    assert (~M.mask_of(net[0]) >= before).all() and int((~M.mask_of(net[0])).sum()) == 4


class Attn(nn.Module):
    """Self-attention (packed in_proj) and cross-attention with other key/value widths."""

    def __init__(self):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.cross = nn.MultiheadAttention(8, 2, kdim=5, vdim=3, batch_first=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x, mem_k, mem_v):
        h = self.self_attn(x, x, x, need_weights=False)[0]
        h = self.cross(h, mem_k, mem_v, need_weights=False)[0]
        return self.head(h.mean(1))


def test_wanda_reads_attention_inputs_where_the_weights_are_used():
    torch.manual_seed(0)
    net = Attn().eval()
    batch = (torch.randn(6, 4, 8), torch.randn(6, 7, 5), torch.randn(6, 7, 3))
    norms = C.input_norms(net, batch)
    x, mem_k, mem_v = batch
    assert torch.allclose(norms["self_attn.in_proj_weight"], x.reshape(-1, 8).norm(dim=0),
                          rtol=1e-5)  # q = k = v: one packed matmul on x
    assert torch.allclose(norms["cross.k_proj_weight"], mem_k.reshape(-1, 5).norm(dim=0),
                          rtol=1e-5)
    assert torch.allclose(norms["cross.v_proj_weight"], mem_v.reshape(-1, 3).norm(dim=0),
                          rtol=1e-5)
    assert norms["self_attn.out_proj"].shape == (8,)  # read through a functional call
    amounts = rp.allocate("owl", net, 0.5, calib=batch)
    pruned = C.apply(copy.deepcopy(net), amounts, "wanda", batch)
    assert M.sparsity(pruned) >= 0.5 - 1e-9

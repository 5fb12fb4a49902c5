"""The sparsegpt criterion (rdprune.core.sparsegpt): the column sweep against a direct OBS
computation, its reconstruction against magnitude pruning, and its path through curves and masks."""
import pytest
import torch
from torch import nn

import rdprune as rp
from rdprune.core import masks as M
from rdprune.core import sparsegpt as G


def _obs_reference(w, h, prune):
    """Optimal Brain Surgeon column by column with explicit inverses (no Cholesky): column i's
    pruned entries are zeroed and their error spread over the later columns through
    (H restricted to columns ≥ i)⁻¹, row i."""
    w = w.clone()
    for i in range(w.shape[1]):
        hinv = torch.linalg.inv(h[i:, i:])
        err = torch.where(prune[:, i], w[:, i], torch.zeros_like(w[:, i]))
        w[:, i:] -= err[:, None] * (hinv[0] / hinv[0, 0])[None, :]
        w[prune[:, i], i] = 0
    return w


def _damped(h):
    h = h.clone()
    h += G.DAMP * torch.diagonal(h).mean() * torch.eye(len(h), dtype=h.dtype)
    return h


@pytest.mark.parametrize("block", [4, 128])
def test_sweep_equals_obs_with_explicit_inverses(block):
    torch.manual_seed(0)
    x = torch.randn(64, 12, dtype=torch.float64)
    w = torch.randn(5, 12, dtype=torch.float64)
    h = x.t() @ x
    keep = torch.ones_like(w, dtype=torch.bool)
    got, kept = G.sweep(w, G.inverse_factor(h), 30, keep, block=block)
    assert int((~kept).sum()) == 30 and (got[~kept] == 0).all()
    want = _obs_reference(w, _damped(h), ~kept)
    assert torch.allclose(got, want, atol=1e-10)


def _output_error(layer, w_new, x):
    with torch.no_grad():
        ref = layer(x)
        old = layer.weight.clone()
        layer.weight.copy_(w_new)
        out = layer(x)
        layer.weight.copy_(old)
    return float((out - ref).pow(2).sum())


@pytest.mark.parametrize("make", [lambda: nn.Linear(40, 16),
                                  lambda: nn.Conv2d(6, 8, 3, padding=1),
                                  lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8)],
                         ids=["linear", "conv", "depthwise"])
def test_reconstruction_beats_magnitude_at_the_same_density(make):
    """On correlated inputs, as activations are (on isotropic ones magnitude is already the
    least-error choice and there is nothing to reconstruct)."""
    torch.manual_seed(1)
    layer = make()
    net = nn.Sequential(layer)
    if isinstance(layer, nn.Linear):
        x = torch.randn(256, 40) @ torch.randn(40, 40)
    else:
        c = layer.in_channels
        x = torch.einsum("nchw,cd->ndhw", torch.randn(32, c, 6, 6), torch.randn(c, c))
        x = x + torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # neighbouring pixels alike
    k = layer.weight.numel() // 2
    h = G.hessians(net, x, ["0"])["0"]
    weight, keep = G.Reconstruction(layer, h)(k)
    assert int((~keep).sum()) == k and (weight[~keep] == 0).all()
    magnitude = layer.weight.detach().clone().flatten()
    magnitude[M.prune_order(layer)[:k]] = 0
    assert _output_error(layer, weight, x) < _output_error(layer, magnitude.view_as(weight), x)


def test_masked_weights_stay_pruned_and_counts_are_exact():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(20, 10))
    x = torch.randn(30, 20)
    M.apply(net, {"0": 0.3})
    before = M.mask_of(net[0]).clone()
    weight, keep = G.Reconstruction(net[0], G.hessians(net, x, ["0"])["0"])(120)
    assert int((~keep).sum()) == 120
    assert not (keep & ~before).any()


def test_through_curves_and_masks():
    """Curves are measured (and labelled) with the updated weights, masks install them, and a
    one-layer model's output error at 50 % is below magnitude's."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(24, 12))
    x = torch.randn(48, 24)
    c = rp.rd.curves(model, x, grid=5, criterion="sparsegpt", cache=False)
    assert c.attrs["criterion"] == "sparsegpt"
    m = rp.rd.curves(model, x, grid=5, cache=False)
    half = lambda df: float(df[df.amount == 0.5].distortion.iloc[0])
    assert half(c) < half(m)
    net, info = rp.core.pruning.allocate_and_apply(model, "uniform", 0.5, calib=x,
                                                   criterion="sparsegpt")
    assert M.sparsity(net) == pytest.approx(0.5)
    assert rp.distortion.distortion(model, net, x) == pytest.approx(half(c), rel=1e-4)
    assert not any(k.endswith("_mask") for k, _ in model.named_buffers())  # the user's is untouched


def test_prune_a_cnn_with_rd_and_sparsegpt():
    torch.manual_seed(0)
    model = rp.models.build("lenet5", 10, 1, image_size=28)
    x = torch.randn(16, 1, 28, 28)
    net, record = rp.prune(model, "rd", 0.7, calib=x, criterion="sparsegpt", grid=6)
    assert M.sparsity(net) >= 0.7 - 1e-9 and record["criterion"] == "sparsegpt"

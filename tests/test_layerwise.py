"""AlphaPruning, ATP and DLP (rdprune.core.layerwise) against direct computations."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import rdprune as rp
from rdprune.core import layerwise as L
from rdprune.core import masks as M


def _with_spectrum(eigs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A square matrix whose WᵀW has exactly the eigenvalues ``eigs``."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigs)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return u @ torch.diag(eigs.sqrt()) @ v.T


def _pareto(n: int, alpha: float, seed: int = 0) -> torch.Tensor:
    """n samples of a power law p(λ) ∝ λ^-alpha on [1, ∞) (inverse CDF)."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (1 - u) ** (-1 / (alpha - 1))


def test_hill_alpha_is_the_maximum_likelihood_formula():
    eigs = torch.sort(_pareto(50, 3.0)).values
    for i in (0, 10, 25):
        tail = eigs[i:].numpy()
        direct = 1 + len(tail) / np.sum(np.log(tail / tail[0]))
        assert L.hill_alpha(eigs, i) == pytest.approx(direct, rel=1e-12)


@pytest.mark.parametrize("alpha", [2.0, 3.5])
@pytest.mark.parametrize("xmin", ["peak", "median"])
def test_alpha_of_a_matrix_of_known_spectrum(alpha, xmin):
    """The spectrum of W is read back exactly, and the fitted exponent is the power law's within
    5 standard errors of the estimator ((α − 1)/√n on the tail)."""
    eigs = _pareto(400, alpha)
    layer = nn.Linear(400, 400, bias=False)
    layer.weight.data = _with_spectrum(eigs).float()
    got = L.spectrum(layer.weight)
    assert torch.allclose(got, torch.sort(eigs).values, rtol=1e-3)
    n_tail = 400 if xmin == "peak" else 200
    fitted = L.alphas(nn.Sequential(layer), xmin=xmin)["0"]
    assert abs(fitted - alpha) < 5 * (alpha - 1) / math.sqrt(n_tail)


def test_alphapruning_prunes_the_heavier_tail_less_by_the_factor_spread():
    """Two equal layers, α 2 and 5, each its own block: sparsities in ratio (1 + ε) / (1 − ε),
    the heavier tail (α 2) pruned less, the mean at the target."""
    net = nn.Sequential(nn.Linear(300, 300, bias=False), nn.Linear(300, 300, bias=False))
    net[0].weight.data = _with_spectrum(_pareto(300, 2.0, 1)).float()
    net[1].weight.data = _with_spectrum(_pareto(300, 5.0, 2)).float()
    a = rp.allocate("alphapruning", net, 0.5, epsilon=0.2, blocks=str)
    assert a["0"] < a["1"]
    assert a["1"] / a["0"] == pytest.approx(1.2 / 0.8, abs=1e-3)
    assert (a["0"] + a["1"]) / 2 == pytest.approx(0.5, abs=1e-4)


def _mlp(sizes=(24, 32, 32, 32, 10), seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])])


def test_atp_is_an_arithmetic_progression_in_depth():
    net = _mlp((32, 32, 32, 32, 32))  # four equal layers, each a block
    beta = 0.05
    a = rp.allocate("atp", net, 0.5, calib=torch.randn(8, 32), beta=beta)
    s = np.array([a[k] for k in ["0", "1", "2", "3"]])
    assert np.allclose(np.diff(s), beta, atol=2 / 1024)
    assert s.mean() == pytest.approx(0.5, abs=2 / 1024)


def test_atp_picks_the_trial_with_the_least_distortion():
    net, x = _mlp(), torch.randn(64, 24)
    chosen = rp.allocate("atp", net, 0.6, calib=x, trials=4)
    d = lambda a: rp.distortion.distortion(net, M.apply(M.clone(net), a), x)
    beta_max = min(1.2, 0.8) / 3
    trials = [d(rp.allocate("atp", net, 0.6, calib=x, beta=b))
              for b in beta_max * np.arange(1, 5) / 4]
    assert d(chosen) == pytest.approx(min(trials), rel=1e-9)


def test_dlp_against_a_direct_computation():
    """Wanda scores by hand, the block mean, R = 1 − U/ΣU, min-max to [0, 2α], centred: with equal
    layers the amounts are s + mean(offset) − offset (rounded up per layer)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, 16))
    x = torch.randn(32, 16)
    inputs, h = [], x
    for layer in net:
        if isinstance(layer, nn.Linear):
            inputs.append(h)
        h = layer(h)
    u = np.array([(layer.weight.abs() * inp.norm(dim=0)[None, :]).mean().item()
                  for layer, inp in zip([net[0], net[2], net[4]], inputs)])
    r = 1 - u / u.sum()
    alpha = 0.1
    off = (r - r.min()) / (r.max() - r.min()) * 2 * alpha - alpha
    want = 0.5 + off.mean() - off
    got = rp.allocate("dlp", net, 0.5, calib=x, alpha=alpha, blocks=str)
    assert np.allclose([got[k] for k in ["0", "2", "4"]], want, atol=1.5 / 256)


def test_block_of():
    assert L.block_of("transformer.h.3.attn.c_attn") == "transformer.h.3"
    assert L.block_of("layer2.1.conv1") == "layer2.1"
    assert L.block_of("fc") == "fc"
    assert L.block_of("features.0") == "features.0"


@pytest.mark.parametrize("method", ["alphapruning", "atp", "dlp"])
@pytest.mark.parametrize("budget", ["params", "flops"])
def test_meet_targets_on_a_cnn_and_a_transformer(method, budget):
    for name, x in (("resnet20", torch.randn(8, 1, 28, 28)), ("vit_tiny", torch.randn(8, 1, 28, 28))):
        torch.manual_seed(0)
        model = rp.models.build(name, 10, 1, image_size=28)
        flops, n = M.layer_flops(model), {k: m.weight.numel() for k, m in M.prunable(model).items()}
        cost = flops if budget == "flops" else n
        for target in (0.5, 0.8):
            net, record = rp.prune(model, method, target, budget, calib=x)
            kept = {k: float(v.float().mean()) for k, v in M.masks(net).items()}
            removed = sum(cost[k] * (1 - kept[k]) for k in cost) / sum(cost.values())
            assert target - 1e-9 <= removed < target + 0.02
            assert set(record["amounts"]) == set(n)

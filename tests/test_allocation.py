import copy
import math

import pytest
import torch

import rdprune as rp
from rdprune import masks as M

BASELINES = ["global", "uniform", "uniform_plus", "erk", "lamp"]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return rp.models.build("resnet20")


def _removed(model, amounts, budget):
    layers = M.prunable(model)
    unit = {k: 1.0 for k in layers} if budget == "params" else \
        {k: f / layers[k].weight.numel() for k, f in M.layer_flops(model).items()}
    removed = sum(M.n_pruned(amounts.get(k, 0.0), m.weight.numel()) * unit[k]
                  for k, m in layers.items())
    total = sum(m.weight.numel() * unit[k] for k, m in layers.items())
    return removed, total, max(unit.values())


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("budget", ["params", "flops"])
@pytest.mark.parametrize("target", [0.5, 0.9, 0.99])
def test_allocators_meet_target_within_one_weight_per_layer(resnet, method, budget, target):
    """Every allocator meets or exceeds the target, and overshoots by at most one weight per
    layer (rounding to whole weights)."""
    amounts = rp.allocate(method, resnet, target, budget)
    assert set(amounts) == set(M.prunable(resnet))
    assert all(0 <= a <= 1 for a in amounts.values())
    removed, total, unit = _removed(resnet, amounts, budget)
    assert removed >= target * total - 1e-6 * total  # never below the target
    assert removed - target * total <= len(amounts) * unit + 1e-6
    pruned = M.apply(copy.deepcopy(resnet), amounts)
    achieved = M.sparsity(pruned) if budget == "params" else 1 - M.flops(pruned) / sum(M.layer_flops(resnet).values())
    assert achieved == pytest.approx(target, abs=len(amounts) * unit / total + 1e-9)


@pytest.mark.parametrize("target", [0.5, 0.9, 0.99])
def test_uniform_plus_keeps_first_conv_dense_and_20pc_of_last(resnet, target):
    a = rp.allocate("uniform_plus", resnet, target)
    names = list(M.prunable(resnet))
    assert a[names[0]] == 0.0
    assert a[names[-1]] <= 0.8 + 1e-12
    middle = {a[k] for k in names[1:-1]}
    assert max(middle) - min(middle) < 0.01  # one shared amount (up to rounding to weights)


@pytest.mark.parametrize("target", [0.5, 0.9, 0.99])
def test_erk_densities_never_exceed_one_and_follow_erk_ratio(resnet, target):
    a = rp.allocate("erk", resnet, target)
    assert all(0 <= v <= 1 for v in a.values())
    layers = M.prunable(resnet)
    ratio = {k: sum(m.weight.shape) / m.weight.numel() for k, m in layers.items()}
    sparse = [k for k in a if a[k] > 0.01]
    scale = {k: (1 - a[k]) / ratio[k] for k in sparse}
    assert max(scale.values()) / min(scale.values()) == pytest.approx(1, abs=0.05)


class _Small(torch.nn.Module):
    """Every prunable layer type, each small enough to score by the definition (O(n²))."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)            # 36 weights
        self.conv2 = torch.nn.Conv2d(4, 6, 3, bias=False)  # 216
        self.fc = torch.nn.Linear(6 * 4 * 4, 12)         # 1152
        self.out = torch.nn.Linear(12, 10)               # 120
        self.input_size = (1, 8, 8)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv(x))))
        return self.out(torch.relu(self.fc(x.flatten(1))))


@pytest.mark.parametrize("target", [0.3, 0.75, 0.9])
def test_lamp_equals_the_score_definition_on_every_layer_type(target):
    """LAMP (Lee et al. 2021): score(u) = u² / Σ_{v in the layer, v² ≥ u²} v², evaluated here
    weight by weight from the definition (no sorting, no suffix sums), then the globally lowest
    ceil(target·N) scores removed. Our allocation must remove exactly those counts per layer."""
    torch.manual_seed(3)
    m = _Small()
    scores = []
    for name, mod in M.prunable(m).items():
        sq = [float(v) ** 2 for v in mod.weight.detach().flatten().double()]
        for u in sq:
            scores.append((u / sum(v for v in sq if v >= u), name))
    k = math.ceil(target * len(scores) - 1e-9)
    expected = {name: 0 for name in M.prunable(m)}
    for _, name in sorted(scores, key=lambda s: s[0])[:k]:
        expected[name] += 1
    got = rp.allocate("lamp", m, target)
    assert {n: round(a * M.prunable(m)[n].weight.numel()) for n, a in got.items()} == expected
    assert {type(mod) for mod in M.prunable(m).values()} == {torch.nn.Conv2d, torch.nn.Linear}


def test_iterative_rounds_never_make_a_layer_less_sparse(resnet):
    m = copy.deepcopy(resnet)
    M.apply(m, rp.allocate("global", m, 0.6))
    before = M.layer_sparsity(m)
    for method in BASELINES:
        a = rp.allocate(method, m, 0.7)
        assert all(a[k] >= before[k] - 1e-12 for k in a), method


def test_exclusions_stay_as_they_are(resnet):
    a = rp.allocate("global", resnet, 0.9, exclude=("conv1", "fc"))
    assert "conv1" not in a and "fc" not in a
    removed, total, _ = _removed(resnet, a, "params")
    assert removed == pytest.approx(0.9 * total, abs=len(a))


@pytest.mark.parametrize("target", [1.0, 1.5, -0.1, float("nan"), "0.5"])
def test_target_outside_range(resnet, target):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        rp.allocate("global", resnet, target)


def test_unknown_method_and_budget(resnet):
    with pytest.raises(ValueError, match="lamp"):
        rp.allocate("snip", resnet, 0.5)
    with pytest.raises(ValueError, match="flops"):
        rp.allocate("global", resnet, 0.5, budget="bytes")
    with pytest.raises(ValueError, match="curves"):
        rp.allocate("rd", resnet, 0.5)
    assert set(rp.allocation.names()) >= set(BASELINES) | {"rd"}


def test_rd_solver_resolves_any_target_within_budget(resnet):
    from rdprune.core.allocators import RDSolver
    x = torch.randn(8, 1, 28, 28)
    curves = rp.rd.curves(resnet.eval(), x, grid=11, cache=False, progress=False)
    solver = RDSolver(resnet, curves)
    for target in (0.3, 0.5, 0.9, 0.95):
        amounts = solver.amounts(target)
        removed, total, _ = _removed(resnet, amounts, "params")
        assert removed >= target * total - 1e-6
        direct = rp.allocate("rd", resnet, target, curves=curves)
        direct_d = rp.rd.predicted(curves, direct)
        assert solver.predicted(target) == pytest.approx(rp.rd.predicted(curves, amounts), rel=1e-3)
        assert solver.predicted(target) <= direct_d * 1.02 + 1e-12
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        solver.amounts(1.0)


@pytest.mark.parametrize("target", [0.1, 0.5, 0.9])
def test_uniform_plus_on_an_mlp_has_no_dense_first_conv(target):
    """The convention keeps the first *convolution* dense; a 784-300-100-10 MLP has none, so only
    the last layer's 20 % floor applies and every target in reach is met."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 300), torch.nn.ReLU(),
                              torch.nn.Linear(300, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    mlp.input_size = (1, 28, 28)
    a = rp.allocate("uniform_plus", mlp, target)
    names = list(M.prunable(mlp))
    assert a[names[-1]] <= 0.8 + 1e-12
    assert a[names[0]] == pytest.approx(a[names[1]], abs=0.01)  # the first layer is not spared
    removed, total, _ = _removed(mlp, a, "params")
    assert removed >= target * total - 1e-6


def _tied_model(seed):
    """A small conv net whose weights take few distinct values (many ties), partly masked."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3),
                              torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_((p * 10).round() / 10)
    net.input_size = (1, 8, 8)
    M.apply(net, {"2": 0.3})
    return net


def _reference_scores(model, method):
    """Each prunable layer's scores, ascending, written from the definitions: |w|, or LAMP's
    w_u² / Σ_{|w_v| ≥ |w_u|} w_v² (ties: the later in sorted position counts from there);
    masked weights -1."""
    out = []
    for m in M.prunable(model).values():
        w, keep = m.weight.detach().flatten().double(), M.mask_of(m).flatten()
        live = w[keep]
        if method == "global":
            s = live.abs()
        else:
            sq = torch.sort(live ** 2).values
            s = torch.tensor([sq[i] / sq[i:].sum() for i in range(len(sq))], dtype=torch.float64)
        out.append(torch.sort(torch.cat([torch.full((int((~keep).sum()),), -1.0,
                                                    dtype=torch.float64), s])).values)
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("budget", ["params", "flops"])
@pytest.mark.parametrize("method", ["global", "lamp"])
def test_global_ranking_without_a_global_sort_equals_the_sort(method, budget, seed):
    from rdprune.core import allocators as A
    net = _tied_model(seed)
    scores = [A.ranking_scores(method, m) for m in M.prunable(net).values()]
    for mine, definition in zip(scores, _reference_scores(net, method)):
        torch.testing.assert_close(mine, definition, rtol=1e-12, atol=0)
    for target in (0.05, 0.3, 0.5, 0.77, 0.9, 0.99):
        fast = A.allocate(method, net, target, budget)
        ref = A.global_ranking_reference(A.Layers(net, budget), scores, target)
        assert fast == pytest.approx(ref, abs=1e-12), (target, fast, ref)

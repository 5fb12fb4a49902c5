import copy

import numpy as np
import pandas as pd
import pytest
import torch

import rdprune as rp
from rdprune import masks as M
from rdprune import rd
from rdprune.core import curves as C


def _some_layers(model, k=4):
    names = list(M.prunable(model))
    return [names[i] for i in np.linspace(0, len(names) - 1, k).round().astype(int)]


@pytest.mark.parametrize("name,kind", [("resnet20", "mse"), ("densenet121", "mse"),
                                       ("mobilenet_v2", "mse"), ("resnet20", "worst_case")])
def test_fast_curves_equal_reference(name, kind):  # the reduction does not depend on the net
    torch.manual_seed(0)
    model = rp.models.build(name).eval()
    if name == "densenet121":  # one dense block is enough: keep the first stage and its transition
        model.features = model.features[:2]
        model.bn = torch.nn.BatchNorm2d(model.features[1].conv.out_channels)
        model.linear = torch.nn.Linear(model.bn.num_features, 10)
        model.eval()
    x = torch.randn(24, 1, 28, 28)
    layers = _some_layers(model)
    M.apply(model, {layers[1]: 0.3})  # a layer already partly pruned
    kw = dict(grid=11, distortion=kind, layers=layers, cache=False, progress=False, batch=16,
              max_batch=48)  # two calibration chunks, several amount groups per layer
    fast = rd.curves(model, x, **kw)
    ref = rd.curves(model, x, method="reference", **kw)
    assert all(p.is_contiguous() for p in model.parameters())  # channels-last on a copy only
    assert list(fast.columns) == ["layer", "amount", "n_weights", "flops", "distortion"]
    np.testing.assert_allclose(fast.distortion, ref.distortion, rtol=1e-5, atol=1e-12)
    assert (fast.distortion.to_numpy()[fast.amount.to_numpy() == 0] == 0).all()
    partly = fast[fast.layer == layers[1]]
    assert (partly.distortion[partly.amount <= 0.3] == 0).all()
    assert (partly.distortion[partly.amount > 0.3] > 0).all()


def test_curves_are_cached_and_resume_after_interruption(tmp_path, monkeypatch):
    monkeypatch.setenv("RDPRUNE_DATA", str(tmp_path))
    torch.manual_seed(0)
    model = rp.models.build("lenet5").eval()
    x = torch.randn(32, 1, 28, 28)
    calls = []
    real = C.fast_curves

    def interrupted(model, x_all, names, *a, **kw):
        for item in real(model, x_all, names, *a, **kw):
            calls.append(item[0])
            if len(calls) == 2:
                raise KeyboardInterrupt
            yield item
    monkeypatch.setattr(C, "fast_curves", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rd.curves(model, x, grid=6, progress=False)
    monkeypatch.setattr(C, "fast_curves", lambda model, x_all, names, *a, **kw: (
        calls.extend(names), real(model, x_all, names, *a, **kw))[1])
    full = rd.curves(model, x, grid=6, progress=False)
    names = list(M.prunable(model))
    assert calls[2:] == names[1:], "only the unfinished layers are recomputed"
    calls.clear()
    again = rd.curves(model, x, grid=6, progress=False)
    assert calls == [] and again.equals(full)


def test_corrupt_cache_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("RDPRUNE_DATA", str(tmp_path))
    model = rp.models.build("lenet5").eval()
    x = torch.randn(16, 1, 28, 28)
    good = rd.curves(model, x, grid=6, progress=False)
    victim = next((tmp_path / "curves").rglob("fc1.csv"))
    victim.write_text("layer,amount\nfc1,0.5\n")
    with pytest.warns(UserWarning, match="corrupt"):
        again = rd.curves(model, x, grid=6, progress=False)
    pd.testing.assert_frame_equal(again, good)


def test_cache_key_changes_with_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("RDPRUNE_DATA", str(tmp_path))
    model = rp.models.build("lenet5").eval()
    x = torch.randn(16, 1, 28, 28)
    a = rd.curves(model, x, grid=6, progress=False)
    M.apply(model, {"fc1": 0.5})
    b = rd.curves(model, x, grid=6, progress=False)
    assert not a.equals(b)


def test_additivity_on_trained_model(lenet, calib):
    curves = rd.curves(lenet, calib, grid=21, progress=False)
    add = rd.additivity(lenet, calib, curves, n=30, seed=0, max_amount=0.6)
    assert {"predicted", "actual"} <= set(add.columns) and len(add) == 30
    stats = rd.additivity_stats(add)
    assert stats["pearson_log"] > 0.9, stats
    assert stats["spearman"] > 0.9, stats


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9])
def test_rd_has_lowest_zero_shot_distortion(lenet, calib, target):
    """RD minimises the summed single-layer distortion exactly, so its *predicted* distortion is
    never above any baseline's. Measured (joint) distortion is what additivity approximates: on
    this LeNet-5 the paper's RD is lowest at 80 % and 90 %, while at 50 % cross-layer terms let
    LAMP edge it out (RD predicts 0.34 and measures 0.47 against LAMP's 0.42 in our run): no
    bound on that gap is asserted, since additivity gives none. ``rd.refine`` (measured-distortion
    steps after the DP) makes RD the lowest at every target, which is asserted."""
    curves = rd.curves(lenet, calib, grid=101, progress=False)
    actual, pred = {}, {}
    for method in ["rd", "global", "uniform", "uniform_plus", "erk", "lamp"]:
        amounts = rp.allocate(method, lenet, target, curves=curves)
        pruned = M.apply(copy.deepcopy(lenet), amounts)
        assert M.sparsity(pruned) >= target - 1e-3
        actual[method] = rd.distortion(lenet, pruned, calib)
        pred[method] = rd.predicted(curves, amounts)
    assert pred["rd"] <= min(pred.values()) * (1 + 1e-9), pred
    refined = rd.refine(lenet, calib, rp.allocate("rd", lenet, target, curves=curves), target)
    pruned = M.apply(copy.deepcopy(lenet), refined)
    assert M.sparsity(pruned) >= target - 1e-9
    best = rd.distortion(lenet, pruned, calib)
    assert best <= min(actual.values()), (best, actual)
    if target >= 0.8:
        assert actual["rd"] <= min(actual.values()) * (1 + 1e-9), actual
    else:
        # the other allocators measure at least 1.8x RD's distortion here (global 0.87, erk 0.84)
        assert actual["rd"] <= min(v for k, v in actual.items() if k not in ("rd", "lamp")), actual


@pytest.mark.parametrize("budget", ["params", "flops"])
def test_refine_keeps_budget_and_floors_and_never_gets_worse(lenet, calib, budget):
    """On an already-pruned model (an iterative round), from a deliberately poor start: the budget
    holds, no weight pruned before is revived, and the measured distortion only goes down."""
    model = M.apply(copy.deepcopy(lenet), rp.allocate("uniform", lenet, 0.3))
    before = {k: m.weight_mask.clone() for k, m in M.prunable(model).items()}
    start = rp.allocate("uniform", model, 0.7, budget)
    x = calib[:128]
    out = rd.refine(model, x, start, 0.7, budget, grid=51, max_iter=4)
    assert out == rd.refine(model, x, start, 0.7, budget, grid=51, max_iter=4)  # deterministic
    pruned = M.apply(copy.deepcopy(model), out)
    dense = M.flops(lenet) if budget == "flops" else sum(m.weight.numel()
                                                          for m in M.prunable(lenet).values())
    kept = M.flops(pruned) if budget == "flops" else sum(int(m.weight_mask.sum())
                                                         for m in M.prunable(pruned).values())
    assert kept <= 0.3 * dense * (1 + 1e-9)
    assert all((M.mask_of(m) <= before[k]).all() for k, m in M.prunable(pruned).items())
    assert rd.distortion(model, pruned, x) < rd.distortion(
        model, M.apply(copy.deepcopy(model), start), x)
    with pytest.raises(ValueError, match="do not meet the target"):
        rd.refine(model, x, rp.allocate("uniform", model, 0.5), 0.7, budget)



def test_refine_counts_its_passes(lenet, calib):
    """refine's cost is reported: the reference logits and the start (2), plus, per step, every
    neighbour within the radius of each layer's amount and the candidate measured."""
    x = calib[:64]
    start = rp.allocate("uniform", lenet, 0.6)
    assert rd.refine(lenet, x, start, 0.6, grid=11, max_iter=0).passes == 2
    one = rd.refine(lenet, x, start, 0.6, grid=11, radius=0.2, max_iter=1)
    neighbours = sum(sum(1 for g in np.linspace(0, 1, 11) if abs(g - a) <= 0.2 + 1e-12
                         and M.n_pruned(g, m.weight.numel()) != M.n_pruned(a, m.weight.numel()))
                     for a, m in ((start[k], m) for k, m in M.prunable(lenet).items()))
    assert one.passes in (2 + neighbours, 2 + neighbours + 1)  # + 1 when a candidate was tried

def test_rd_allocation_uses_flops_budget(lenet, calib):
    curves = rd.curves(lenet, calib, grid=51, progress=False)
    dense = M.flops(lenet)
    for target in (0.5, 0.8):
        pruned = M.apply(copy.deepcopy(lenet), rp.allocate("rd", lenet, target, "flops",
                                                           curves=curves))
        assert M.flops(pruned) <= (1 - target) * dense * (1 + 1e-9)
        assert M.flops(pruned) >= (1 - target) * dense * 0.98


def test_bad_input(lenet, calib):
    curves = rd.curves(lenet, calib, grid=11, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        rp.allocate("rd", lenet, 1.0, curves=curves)
    other = rp.models.build("resnet20")
    with pytest.raises(ValueError, match="another model"):
        rp.allocate("rd", other, 0.5, curves=curves)
    retrained = copy.deepcopy(lenet)
    M.apply(retrained, {"fc1": 0.5})
    with pytest.raises(ValueError, match="different weights"):
        rp.allocate("rd", retrained, 0.6, curves=curves)
    with pytest.raises(ValueError, match="non-empty"):
        rd.curves(lenet, calib[:0], progress=False)
    broken = copy.deepcopy(lenet)
    with torch.no_grad():
        broken.fc2.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        rd.curves(broken, calib, progress=False)
    with pytest.raises(ValueError, match="mse"):
        rd.curves(lenet, calib, distortion="l1", progress=False)

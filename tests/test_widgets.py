"""rdprune.widgets: the browser-free callbacks behind the explorer, and the ipywidgets wrapper."""
import statistics
import time

import numpy as np
import pandas as pd
import pytest

import rdprune as rp
from rdprune import masks as M
from rdprune.lab.widgets import Explorer


def synthetic_curves(model, grid=101, seed=0):
    """Convex, increasing curves of the right shape: enough to time and check the solver."""
    rng = np.random.default_rng(seed)
    flops = M.layer_flops(model)
    amounts = np.linspace(0, 1, grid)
    frames = [pd.DataFrame({"layer": k, "amount": amounts, "n_weights": m.weight.numel(),
                            "flops": flops[k],
                            "distortion": rng.uniform(0.2, 5) * (np.exp(5 * amounts) - 1)})
              for k, m in M.prunable(model).items()]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def resnet_explorer():
    model = rp.models.build("resnet20")
    return Explorer(model, synthetic_curves(model))


def test_resolve_is_interactive_on_resnet20(resnet_explorer):
    ex = resnet_explorer
    ex.solve(0.5)  # warm-up
    times = []
    for t in np.linspace(0.6, 0.95, 8):
        tic = time.perf_counter()
        ex.solve(float(t), "params")
        times.append(time.perf_counter() - tic)
    median = statistics.median(times)
    tic = time.perf_counter()
    Explorer(ex.model, ex.curves).solve(0.5)  # what a new target would cost without the table
    from_scratch = time.perf_counter() - tic
    print(f"RD re-solve on resnet20, grid 101: median {median * 1000:.1f} ms, "
          f"from scratch {from_scratch * 1000:.0f} ms")
    # the point of the prebuilt DP table: a new target is a backtrack, several times cheaper than
    # building the table (measured in one run, so machine load cancels out)
    assert median * 3 < from_scratch


@pytest.mark.parametrize("budget", ["params", "flops"])
def test_solve_meets_every_target(resnet_explorer, budget):
    for t in (0.3, 0.7, 0.9, 0.97):
        amounts, predicted, sparsity, flops_left = resnet_explorer.solve(t, budget)
        achieved = sparsity if budget == "params" else 1 - flops_left
        assert achieved >= t - 1e-9
        assert achieved <= t + 0.02
        assert predicted == pytest.approx(rp.rd.predicted(resnet_explorer.curves, amounts))
    # stricter targets never predict less distortion
    preds = [resnet_explorer.solve(t, budget).predicted for t in (0.5, 0.8, 0.95)]
    assert preds == sorted(preds)


def test_describe_matches_applied_masks(lenet, calib):
    import copy
    curves = rp.rd.curves(lenet, calib[:128], grid=11, progress=False)
    ex = Explorer(lenet, curves)
    for method in ("rd", "lamp", "erk"):
        sol = ex.solve(0.8, "params", method)
        pruned = M.apply(copy.deepcopy(lenet), sol.amounts)
        assert sol.sparsity == pytest.approx(M.sparsity(pruned), abs=1e-9)
        assert sol.flops_left == pytest.approx(M.flops(pruned) / M.flops(lenet), rel=1e-6)


def test_curves_from_another_model_are_refused(resnet_explorer):
    with pytest.raises(ValueError, match="another model"):
        Explorer(rp.models.build("lenet5"), resnet_explorer.curves)


def test_ui_callback_resolves_on_change(resnet_explorer):
    box = resnet_explorer.ui(target=0.6, compare="lamp")
    c = box.controls
    assert set(resnet_explorer.last) == {"rd", "lamp"}
    assert resnet_explorer.last["rd"].sparsity >= 0.6 - 1e-9
    c["target"].value = 0.93
    assert 0.93 - 1e-9 <= resnet_explorer.last["rd"].sparsity <= 0.95
    assert "predicted distortion" in c["info"].value
    c["budget"].value = "flops"
    assert 1 - resnet_explorer.last["rd"].flops_left >= 0.93 - 1e-9
    c["compare"].value = "none"
    assert set(resnet_explorer.last) == {"rd"}
    c["compare"].value = "erk"
    assert set(resnet_explorer.last) == {"rd", "erk"}
    fig, html, sols = resnet_explorer.view(0.9, "params", "global")
    assert fig.axes and "global" in html and sols["rd"].sparsity >= 0.9 - 1e-9
    with pytest.raises(ValueError, match="unknown comparison"):
        resnet_explorer.view(0.9, "params", "nonsense")


def test_ui_offers_only_what_it_can_compute(lenet, calib):
    """An allocator that needs calibration inputs (OWL) is offered only with calib=, and the
    summary says when a solve was answered from memory rather than timing a lookup."""
    curves = synthetic_curves(lenet)
    bare, fed = Explorer(lenet, curves), Explorer(lenet, curves, calib=calib)
    assert "owl" not in bare.choices() and "owl" in fed.choices() and "lamp" in bare.choices()
    assert list(bare.ui(compare="lamp").controls["compare"].options) == list(bare.choices())
    with pytest.raises(ValueError, match="needs calibration inputs"):
        bare.ui(compare="owl")
    _, first, _ = fed.view(0.5, "params", "lamp")
    _, again, _ = fed.view(0.5, "params", "lamp")
    assert "lamp solved in" in first and "lamp: remembered" in again


def test_ui_debounces_to_the_last_value(resnet_explorer, monkeypatch):
    """With an event loop running (as in a kernel), a burst of changes shows "updating…" at once
    and draws once, at the last value."""
    import asyncio

    from rdprune.lab import widgets
    monkeypatch.setattr(widgets, "DEBOUNCE_S", 0.05)
    drawn = []
    view = resnet_explorer.view
    monkeypatch.setattr(resnet_explorer, "view", lambda *a: drawn.append(a) or view(*a))

    async def burst():
        box = resnet_explorer.ui(target=0.6, compare="none")
        c = box.controls
        first = c["figure"].value
        for t in (0.61, 0.62, 0.63, 0.64, 0.65):
            c["target"].value = t
        assert "updating" in c["status"].value and c["figure"].value == first
        await asyncio.sleep(0.5)
        return c

    c = asyncio.run(burst())
    assert [a[0] for a in drawn] == [0.6, 0.65]
    assert c["status"].value == "" and c["figure"].value[:4] == b"\x89PNG"
    assert resnet_explorer.last["rd"].sparsity >= 0.65 - 1e-9


def test_flops_budget_says_when_it_equals_params():
    """A model whose layers do the same FLOPs per weight allocates alike for both budgets, and
    the summary says so rather than looking broken."""
    import torch
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    M.remember(model, torch.randn(2, 16))
    ex = Explorer(model, synthetic_curves(model))
    assert ex.flops_track_params
    _, html, _ = ex.view(0.5, "flops", "none")
    assert "same allocation" in html
    assert "same allocation" not in ex.view(0.5, "params", "none")[1]
    assert "layer names" in ex.names_html() and "<code>0</code>" in ex.names_html()

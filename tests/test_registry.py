"""Plug points: an allocator and a distortion registered from outside the package reach every
consumer (allocate, rp.prune, rd.curves, zero_shot, the widget, the CLI), and bad plug-ins fail
clearly."""
import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

import rdprune as rp
from rdprune import masks as M
from rdprune.__main__ import main
from rdprune.lab.widgets import Explorer, compare_choices


def toy(model, target, budget, *, exclude=()):
    """Every free layer at the target, rounded up: the simplest allocator that meets its budget
    for parameters (independent of ours: no Layers, no registry internals)."""
    free = M.prunable(model, exclude)
    return {k: float(np.ceil(target * m.weight.numel() - 1e-9) / m.weight.numel())
            for k, m in free.items()}


def l1_error(y_ref, y):
    return (y - y_ref).abs().flatten(1).mean(1)


@pytest.fixture
def registered():
    rp.register_allocator("toy", toy)
    rp.rd.register_distortion("l1", l1_error, reduce="mean")
    yield
    rp.unregister_allocator("toy")
    rp.rd.unregister_distortion("l1")


def test_toy_allocator_reaches_allocate_and_prune(registered):
    torch.manual_seed(0)
    model = rp.models.build("lenet5")
    assert "toy" in rp.allocation.names(structured=False) and "toy" in rp.methods()
    amounts = rp.allocate("toy", model, 0.7)
    assert amounts == toy(model, 0.7, "params")
    net, record = rp.prune(model, "toy", 0.7)
    assert M.sparsity(net) >= 0.7 and record["amounts"] == amounts
    assert M.sparsity(model) == 0.0  # the user's model is left as it was
    with pytest.raises(ValueError, match="takes no option 'grid_size'"):
        rp.allocate("toy", model, 0.7, grid_size=3)


def test_toy_allocator_reaches_zero_shot_widget_and_cli(registered, lenet, calib, capsys):
    _, test_loader = rp.data.loaders("fashion_mnist", 512, subset=200)
    table = rp.pipeline.zero_shot(lenet, ["toy", "lamp"], [0.5], calib[:64], test_loader,
                                  distortion="l1")  # the toy distortion too
    assert set(table["method"]) == {"toy", "lamp"}
    row = table.set_index("method").loc["toy"]
    assert row["sparsity"] >= 0.5
    pruned = M.apply(copy.deepcopy(lenet), toy(lenet, 0.5, "params"))
    with torch.no_grad():
        want = (pruned(calib[:64]) - lenet(calib[:64])).abs().mean().item()
    assert row["distortion"] == pytest.approx(want, rel=1e-5)
    curves = rp.rd.curves(lenet, calib[:32], grid=6, progress=False, cache=False)
    ex = Explorer(lenet, curves)
    assert "toy" in compare_choices()
    sol = ex.solve(0.6, "params", "toy")
    assert sol.amounts == toy(lenet, 0.6, "params") and sol.sparsity >= 0.6
    _, html, sols = ex.view(0.6, "params", "toy")
    assert "toy: remembered from an earlier solve" in html and set(sols) == {"rd", "toy"}
    code = main(["baselines", "--model", "lenet5", "--methods", "toy", "--targets", "0.5",
                 "--calib-n", "32", "--quiet", "--no-cache"])
    assert code == 0 and "toy" in capsys.readouterr().out


def test_cli_imports_a_plugin_module(tmp_path, lenet):
    (tmp_path / "my_plugin.py").write_text(
        "import rdprune as rp\n"
        "def half(model, target, budget, *, exclude=()):\n"
        "    return rp.allocate('uniform', model, target, budget, exclude=exclude)\n"
        "rp.register_allocator('plugin_uniform', half)\n")
    out = subprocess.run([sys.executable, "-m", "rdprune", "--import", "my_plugin", "baselines",
                          "--model", "lenet5", "--methods", "plugin_uniform", "--targets", "0.5",
                          "--calib-n", "16", "--quiet", "--no-cache"],
                         capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "plugin_uniform" in out.stdout


def test_toy_distortion_reaches_curves(registered):
    torch.manual_seed(0)
    model = rp.models.build("lenet5").eval()
    x = torch.randn(24, 1, 28, 28)
    curves = rp.rd.curves(model, x, grid=5, distortion="l1", progress=False, cache=False)
    ref = rp.rd.curves(model, x, grid=5, distortion="l1", method="reference", progress=False,
                       cache=False)
    np.testing.assert_allclose(curves["distortion"], ref["distortion"], rtol=1e-6, atol=1e-9)
    # independent: prune one layer by magnitude and measure the mean absolute logit error
    row = curves[(curves.layer == "fc1") & (curves.amount == 0.5)].iloc[0]
    pruned = M.apply(copy.deepcopy(model), {"fc1": 0.5})
    with torch.no_grad():
        want = (pruned(x) - model(x)).abs().mean().item()
    assert row["distortion"] == pytest.approx(want, rel=1e-5)
    mse = rp.rd.curves(model, x, grid=5, progress=False, cache=False)
    assert not np.allclose(mse["distortion"], curves["distortion"])
    assert "l1" in rp.rd.distortions()


def test_distortion_cache_is_keyed_by_the_function(tmp_path, monkeypatch):
    monkeypatch.setenv("RDPRUNE_DATA", str(tmp_path))
    model = rp.models.build("lenet5").eval()
    x = torch.randn(8, 1, 28, 28)
    rp.rd.register_distortion("mine", l1_error)
    try:
        a = rp.rd.curves(model, x, grid=3, distortion="mine", progress=False)
        rp.rd.register_distortion("mine", lambda r, y: (y - r).pow(2).flatten(1).sum(1))
        b = rp.rd.curves(model, x, grid=3, distortion="mine", progress=False)
        assert not a["distortion"].equals(b["distortion"])  # not served from a's cache
    finally:
        rp.rd.unregister_distortion("mine")


def test_bad_plug_ins_are_refused():
    with pytest.raises(ValueError, match="reduction"):
        rp.rd.register_distortion("x", l1_error, reduce="median")
    with pytest.raises(ValueError, match="callable"):
        rp.rd.register_distortion("x", 3)
    with pytest.raises(ValueError, match="apply="):
        rp.register_allocator("x", toy, structured=True)
    with pytest.raises(ValueError, match="allocator already"):
        rp.register_method("lamp", lambda *a, **k: None)
    model = rp.models.build("lenet5")
    rp.register_allocator("short", lambda model, target, budget, **kw: {"fc1": 0.1})
    rp.register_allocator("stranger", lambda model, target, budget, **kw: {"nope": 0.5})
    rp.rd.register_distortion("scalar", lambda r, y: (y - r).abs().mean())
    try:
        with pytest.raises(ValueError, match="missed the target"):
            rp.allocate("short", model, 0.5)
        with pytest.raises(ValueError, match="not free prunable layers"):
            rp.allocate("stranger", model, 0.5)
        with pytest.raises(ValueError, match="one error per sample"):
            rp.rd.curves(model, torch.randn(4, 1, 28, 28), grid=2, distortion="scalar",
                         progress=False, cache=False)
    finally:
        rp.unregister_allocator("short")
        rp.unregister_allocator("stranger")
        rp.rd.unregister_distortion("scalar")
    with pytest.raises(ValueError, match="unknown method"):
        rp.unregister_allocator("short")


def test_plain_allocators_and_typos():
    """An allocator without exclude= works when none is asked; a built-in refuses a typo'd
    option instead of ignoring it; uniform with exclude still meets the target over all layers."""
    model = rp.models.build("lenet5")
    rp.register_allocator("plain", lambda model, target, budget: toy(model, target, budget))
    try:
        assert rp.allocate("plain", model, 0.5) == toy(model, 0.5, "params")
    finally:
        rp.unregister_allocator("plain")
    with pytest.raises(ValueError, match="no option 'max_sates'"):
        rp.allocate("lamp", model, 0.5, max_sates=10)
    a = rp.allocate("uniform", model, 0.5, exclude=["fc3"])
    kept = {k: m.weight.numel() for k, m in M.prunable(model).items()}
    removed = sum(a.get(k, 0) * n for k, n in kept.items())
    assert "fc3" not in a and removed >= 0.5 * sum(kept.values()) - len(kept)


def test_space_of_any_depth_and_compare_of_nothing(tmp_path):
    from rdprune import jointpruning as J
    from rdprune.lab import readme
    sp = J.space_of(rp.models.CifarResNet(44, 10, 1) if hasattr(rp.models, "CifarResNet")
                    else rp.models.build("resnet56"), image_size=28)
    assert sp.n in (7, 9)
    assert readme.compare(tmp_path, tmp_path).empty

"""One allocate → apply path: an allocator and a criterion registered once reach ``rp.prune``,
``pipeline.zero_shot``, ``pipeline.run`` and the CLI, and each records that it was called."""
import sys
import textwrap

import pytest

import rdprune as rp
from rdprune.lab import pipeline

PLUGIN = textwrap.dedent('''
    """An allocator (every layer the same amount) and a criterion (largest |w| first), each
    counting its calls."""
    import torch
    import rdprune as rp

    CALLS = {"allocator": 0, "criterion": 0}

    def same(model, target, budget, layers):
        CALLS["allocator"] += 1
        return rp.allocate("uniform", model, target, budget)

    def largest_first(model, calib, names):
        CALLS["criterion"] += 1
        layers = rp.masks.prunable(model)
        out = {}
        for k in names:
            w = layers[k].weight.detach().abs().flatten()
            w = torch.where(rp.masks.mask_of(layers[k]).flatten(), w, torch.full_like(w, 1e9))
            out[k] = torch.argsort(w, descending=True, stable=True)  # masked first, then largest
        return out

    rp.register_allocator("same_test", same)
    rp.register_criterion("largest_test", largest_first)
''')


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    (tmp_path / "one_path_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    sys.modules.pop("one_path_plugin", None)
    mod = importlib.import_module("one_path_plugin")
    yield mod
    rp.unregister_allocator("same_test")
    rp.unregister_criterion("largest_test")
    sys.modules.pop("one_path_plugin", None)


def _largest_gone(net, model, amount=0.5):
    """Every pruned layer lost its largest weights, not its smallest."""
    for k, m in rp.masks.prunable(net).items():
        w = rp.masks.prunable(model)[k].weight.detach().abs().flatten()
        kept = rp.masks.mask_of(m).flatten()
        assert kept.float().mean() == pytest.approx(1 - amount, abs=0.02)
        assert w[~kept].min() >= w[kept].max() - 1e-12, k


def test_rp_prune(plugin, lenet):
    calib = rp.data.calibration("fashion_mnist", n=16, seed=0)
    net, record = rp.prune(lenet, "same_test", 0.5, calib=calib, criterion="largest_test")
    assert plugin.CALLS == {"allocator": 1, "criterion": 1}
    assert record["criterion"] == "largest_test"
    _largest_gone(net, lenet)


def test_zero_shot_and_run(plugin, lenet, tmp_path):
    calib = rp.data.calibration("fashion_mnist", n=16, seed=0)
    _, test_loader = rp.data.loaders("fashion_mnist", 64, subset=64)
    out = pipeline.zero_shot(lenet, ["same_test"], [0.5, 0.7], calib, test_loader,
                             criterion="largest_test")
    assert list(out.method) == ["same_test"] * 2
    assert plugin.CALLS["allocator"] == 2 and plugin.CALLS["criterion"] == 1  # orders once
    assert out.sparsity.tolist() == pytest.approx([0.5, 0.7], abs=0.01)
    t = pipeline.run("lenet5", "fashion_mnist", "same_test", "oneshot", 0.5, recipe="quick",
                     out=tmp_path / "run", progress=False, finetune_steps=0, calib_n=16,
                     eval_subset=64, criterion="largest_test")
    assert plugin.CALLS["allocator"] == 3 and plugin.CALLS["criterion"] == 2
    assert t["sparsity"].iloc[-1] == pytest.approx(0.5, abs=0.01)


def test_cli(plugin, tmp_path, capsys):
    from rdprune.__main__ import main
    code = main(["--import", "one_path_plugin", "baselines", "--model", "lenet5",
                 "--methods", "same_test", "uniform", "--targets", "0.5",
                 "--calib-n", "16", "--criterion", "largest_test", "--no-cache", "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "same_test" in out.out
    assert plugin.CALLS == {"allocator": 1, "criterion": 1}


def test_one_rule_set_for_every_path(lenet):
    """The same refusals from rp.prune, zero_shot and run, before any work."""
    calib = rp.data.calibration("fashion_mnist", n=8, seed=0)
    for call in (lambda: rp.prune(lenet, "lamp", 0.5, calib=calib, refine=2),
                 lambda: pipeline.zero_shot(lenet, ["lamp"], [0.5], calib, [], refine=0,
                                            criterion="nope"),
                 lambda: pipeline.run("lenet5", method="lamp", refine=2)):
        with pytest.raises(ValueError, match="refine applies to method 'rd' only|criterion"):
            call()
    curves = rp.rd.curves(lenet, calib, grid=5, progress=False)
    with pytest.raises(ValueError, match="measured with criterion"):
        rp.prune(lenet, "rd", 0.5, calib=calib, curves=curves, criterion="wanda")
    with pytest.raises(ValueError, match="measured with criterion"):
        pipeline.zero_shot(lenet, ["rd"], [0.5], calib, [], curves=curves, criterion="wanda")


def test_criterion_registry_refuses_bad_input():
    with pytest.raises(ValueError, match="register_criterion"):
        rp.register_criterion("", None)
    with pytest.raises(ValueError, match="built in"):
        rp.unregister_criterion("wanda")
    with pytest.raises(ValueError, match="magnitude"):
        rp.criteria.get("nope")


def test_one_call_reads_the_batch_once(lenet, monkeypatch):
    """rp.prune's front, the curves, the criterion and the FLOPs count all check the batch; its
    values are read once per call, and again only after a tensor of it changes in place."""
    from rdprune.core import batch as B
    reads = []
    real = B._finite
    calib = rp.data.calibration("fashion_mnist", n=8, seed=0)
    monkeypatch.setattr(B, "_finite", lambda items: (reads.append(1) if items[0] is calib else 0)
                        or real(items))
    rp.prune(lenet, "rd", 0.5, calib=calib, grid=5, criterion="wanda")
    assert len(reads) == 1
    rp.prune(lenet, "lamp", 0.5, calib=calib)
    assert len(reads) == 1
    calib[0, 0, 0, 0] = float("nan")  # changed in place: read again, and refused
    with pytest.raises(ValueError, match="NaN"):
        rp.prune(lenet, "rd", 0.5, calib=calib, grid=5)
    assert len(reads) == 2

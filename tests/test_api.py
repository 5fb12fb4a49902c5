"""The public calls notebooks, tests and users rely on (the API contract), by their public names,
after the package was split into core / structured / lab."""

import numpy as np
import pandas as pd
import pytest
import torch

import rdprune as rp


def test_contract_calls(lenet, calib):
    assert "resnet20" in rp.models.available()
    model = rp.models.build("resnet20", num_classes=10, in_channels=1)
    assert isinstance(model, torch.nn.Module)
    train_loader, test_loader = rp.data.loaders("fashion_mnist", batch_size=128)
    assert isinstance(rp.data.calibration("fashion_mnist", n=8, seed=0), torch.Tensor)
    assert set(rp.train.evaluate(lenet, rp.data.loaders("fashion_mnist", 512, subset=64)[1])) \
        == {"top1", "loss"}
    layers = rp.masks.prunable(model)
    assert list(layers)[0] == "conv1" and isinstance(rp.masks.report(model), pd.DataFrame)
    curves = rp.rd.curves(lenet, calib[:16], grid=5, distortion="mse", progress=False)
    assert list(curves.columns) == ["layer", "amount", "n_weights", "flops", "distortion"]
    for method in ["global", "uniform", "uniform_plus", "erk", "lamp"]:
        assert set(rp.allocate(method, model, target=0.9)) == set(layers)
    amounts = rp.allocate("rd", lenet, target=0.9, curves=curves, budget="flops")
    net = rp.masks.apply(__import__("copy").deepcopy(lenet), amounts)
    assert 1 - rp.masks.flops(net) / rp.masks.flops(lenet) >= 0.9 - 1e-9
    add = rp.rd.additivity(lenet, calib[:16], curves, n=4, seed=0)
    assert {"predicted", "actual"} <= set(add.columns)
    choice = rp.rd.solve(np.array([[2.0, 1.0], [2.0, 1.0]]), np.array([[0.0, 1.0], [0.0, 5.0]]), 3)
    assert choice.tolist() == [1, 0]
    pruned, record = rp.prune(lenet, "rd", 0.9, budget="flops", calib=calib[:16], refine=0,
                              grid=5)
    assert {"method", "target", "budget", "params_reduction", "flops_reduction",
            "seconds"} <= set(record)


def test_errors_name_the_choices():
    model = rp.models.build("lenet5")
    with pytest.raises(ValueError, match="choose one of"):
        rp.models.build("resnet21")
    with pytest.raises(ValueError, match=r"lamp"):
        rp.allocate("lamb", model, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        rp.allocate("lamp", model, 1.0)
    with pytest.raises(ValueError, match="mse"):
        rp.rd.curves(model, torch.randn(2, 1, 28, 28), distortion="mae", progress=False)

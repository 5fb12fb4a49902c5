"""Models we did not build: no ``input_size``, registration order unlike the forward order.
torchvision models with random weights, nothing downloaded."""
import copy

import pytest
import torch
import torchvision
from torch import nn

import rdprune as rp
from rdprune import masks as M
from rdprune.core import allocators as A


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_flops_come_from_the_calibration_sample_without_input_size(resnet18):
    net = copy.deepcopy(resnet18)
    assert not hasattr(net, "input_size")
    with pytest.raises(ValueError, match="pass calib="):
        M.layer_flops(net)
    x = torch.randn(4, 3, 64, 64)
    M.remember(net, x)
    flops = M.layer_flops(net)
    # conv1: 64 filters of 3x7x7 over a 32x32 output map (stride 2 on 64x64); fc: 512x10
    assert flops["conv1"] == 64 * 3 * 7 * 7 * 32 * 32 and flops["fc"] == 512 * 10
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        net(x[:1])
    assert sum(flops.values()) == c.get_total_flops() // 2  # convs and the classifier: all of it
    amounts = A.allocate("lamp", copy.deepcopy(resnet18), 0.5, "flops", calib=x)
    assert amounts  # allocate(calib=) was enough for a FLOPs budget


def test_every_mask_allocator_meets_a_flops_target_on_a_torchvision_model(resnet18):
    x = torch.randn(2, 3, 16, 16)
    curves = rp.rd.curves(resnet18, x, grid=5, cache=False, progress=False)  # remembers x
    for method in A.names(structured=False):
        net = copy.deepcopy(resnet18)
        amounts = rp.allocate(method, net, 0.5, "flops", curves=curves, calib=x)
        M.apply(net, amounts)
        assert M.flops(net) <= 0.5 * sum(M.layer_flops(net).values()) * (1 + 1e-9), method


class FcFirst(nn.Module):
    """Registers its classifier before the convolutions that feed it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(32, 10)
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.fc(self.body(x))


def test_forward_order_not_registration_order_decides_uniform_plus():
    torch.manual_seed(0)
    net = FcFirst()
    assert list(M.prunable(net))[0] == "fc"
    M.remember(net, torch.randn(2, 1, 12, 12))
    assert M.forward_order(net) == ["body.0", "body.2", "fc"]
    amounts = rp.allocate("uniform_plus", net, 0.5)
    assert amounts.get("body.0", 0.0) == 0.0  # the first convolution the input meets stays dense
    assert amounts["fc"] <= 0.8 + 1e-9  # the last layer keeps at least 20 %
    assert M.sparsity(M.apply(copy.deepcopy(net), amounts)) >= 0.5 - 1e-9

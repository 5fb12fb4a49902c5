import pytest
import torch

import rdprune as rp

SMALL = ["lenet5", "resnet20", "resnet32", "resnet56", "vgg16", "densenet121", "mobilenet_v1",
         "mobilenet_v2"]


@pytest.mark.parametrize("name", SMALL + ["vit_tiny"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_builds_and_runs(name, channels, size):
    m = rp.models.build(name, num_classes=7, in_channels=channels).eval()
    assert m.input_size == (channels, size, size)
    with torch.no_grad():
        assert m(torch.randn(2, channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", SMALL)
def test_prunable_layers_are_in_forward_order(name):
    m = rp.models.build(name).eval()
    seen = []
    hooks = [mod.register_forward_hook(lambda mod, i, o, n=n: seen.append(n))
             for n, mod in rp.masks.prunable(m).items()]
    with torch.no_grad():
        m(torch.randn(2, *m.input_size))
    for h in hooks:
        h.remove()
    assert seen == list(rp.masks.prunable(m))


def test_resnet32_has_34_prunable_layers():
    assert len(rp.masks.prunable(rp.models.build("resnet32"))) == 34


def test_torchvision_models_adapt_to_channels_and_classes():
    m = rp.models.build("tv_mobilenet_v2", num_classes=10, in_channels=1, image_size=32,
                        pretrained=False).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert "tv_resnet50" in rp.models.available()


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="resnet20"):
        rp.models.build("resnet21")

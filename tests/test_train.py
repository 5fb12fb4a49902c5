
import pytest
import torch

import rdprune as rp
from rdprune import train as T

TINY = T.Recipe(epochs=0.02, batch_size=64)


@pytest.fixture
def tiny_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("RDPRUNE_DATA", str(tmp_path))
    monkeypatch.setitem(T.RECIPES, "tiny", TINY)


def test_seeded_training_reproduces(tiny_recipe):
    a = T.pretrained("lenet5", recipe="tiny", seed=1, progress=False, verbose=False)
    T.checkpoint_path("lenet5", "fashion_mnist", "tiny", 1).unlink()
    b = T.pretrained("lenet5", recipe="tiny", seed=1, progress=False, verbose=False)
    assert T.state_hash(a) == T.state_hash(b)


def test_checkpoint_reused_then_corrupt_one_retrained(tiny_recipe, capsys):
    a = T.pretrained("lenet5", recipe="tiny", seed=2, progress=False)
    capsys.readouterr()
    b = T.pretrained("lenet5", recipe="tiny", seed=2, progress=False)
    assert "using cached checkpoint" in capsys.readouterr().out
    assert T.state_hash(a) == T.state_hash(b)
    path = T.checkpoint_path("lenet5", "fashion_mnist", "tiny", 2)
    path.write_bytes(path.read_bytes()[:500])  # truncated file
    with pytest.warns(UserWarning, match="unusable"):
        c = T.pretrained("lenet5", recipe="tiny", seed=2, progress=False)
    assert T.state_hash(c) == T.state_hash(a)  # retrained, same seed, same weights
    assert torch.load(path, weights_only=True)["hash"] == T.state_hash(c)


def test_mismatched_checkpoint_is_not_loaded(tiny_recipe, monkeypatch):
    T.pretrained("lenet5", recipe="tiny", seed=3, progress=False, verbose=False)
    monkeypatch.setitem(T.RECIPES, "tiny", T.Recipe(epochs=0.03, batch_size=64))
    with pytest.warns(UserWarning, match="different settings"):
        T.pretrained("lenet5", recipe="tiny", seed=3, progress=False, verbose=False)


def test_quick_lenet_learns(lenet):
    _, test = rp.data.loaders("fashion_mnist", 1000)
    res = rp.train.evaluate(lenet, test)
    untrained = rp.train.evaluate(rp.models.build("lenet5"), test)
    # chance is 0.1 and an untrained LeNet-5 sits near it; a network that learned the task is far
    # above both (two epochs reach about 0.83 here; the margin is for other machines' runs)
    assert res["top1"] > max(0.5, untrained["top1"] + 0.4) and res["top1"] <= 1
    assert res["loss"] < 0.5 * untrained["loss"]


def test_unknown_recipe():
    with pytest.raises(ValueError, match="quick"):
        T.get_recipe("fast")


def test_recalibrate_bn_sets_the_statistics_of_the_given_inputs():
    torch.manual_seed(0)
    net = rp.models.build("resnet20", 10, 1, image_size=28).eval()
    x = torch.randn(64, 1, 28, 28) * 3 + 1
    rp.train.recalibrate_bn(net, x, batch=64)  # one batch: exactly the batch statistics
    with torch.no_grad():
        h = net.conv1(x)
    assert torch.allclose(net.bn1.running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(net.bn1.running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert not net.training and all(m.momentum == 0.1 for m in net.modules()
                                    if isinstance(m, torch.nn.BatchNorm2d))
    w = {k: v.clone() for k, v in net.named_parameters()}
    rp.train.recalibrate_bn(net, x, batch=16)  # weights untouched
    assert all(torch.equal(v, dict(net.named_parameters())[k]) for k, v in w.items())
    with pytest.raises(ValueError, match="non-empty"):
        rp.train.recalibrate_bn(net, torch.empty(0, 1, 28, 28))

"""What the library remembers about a model (its example input, FLOP counts, forward order) is
kept outside it: no call adds attributes to the model it is given."""
import copy

import pytest
import torch
from torch import nn

import rdprune as rp
from rdprune import masks as M


def attributes(model: nn.Module) -> dict[str, set[str]]:
    """The attribute names of ``model`` and of every submodule."""
    return {name: set(vars(m)) for name, m in model.named_modules()}


class FcFirst(nn.Module):
    """No ``input_size``; registers its classifier before the convolutions that feed it."""

    def __init__(self, classes=10):
        super().__init__()
        self.fc = nn.Linear(8, classes)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.fc(self.body(x))


def lenet_without_input_size():
    net = rp.models.build("lenet5")
    del net.input_size
    return net


@pytest.mark.parametrize("build, shape", [(FcFirst, (1, 12, 12)),
                                          (lenet_without_input_size, (1, 28, 28)),
                                          (lambda: rp.models.build("lenet5"), (1, 28, 28))],
                         ids=["fc_first", "lenet5_no_input_size", "lenet5"])
def test_no_call_adds_attributes_to_the_model_it_is_given(build, shape):
    torch.manual_seed(0)
    net = build().eval()
    calib = torch.randn(16, *shape)
    before = attributes(net)
    pruned, _ = rp.prune(net, "rd", 0.5, calib=calib, grid=5)
    assert attributes(net) == before
    assert M.sparsity(net) == 0.0 and M.sparsity(pruned) > 0.0  # a pruned copy, net untouched
    rp.rd.curves(net, calib, grid=5, cache=False, progress=False)
    assert attributes(net) == before
    M.layer_flops(net), M.forward_order(net), M.flops(net), M.report(net)
    assert attributes(net) == before
    assert M.layer_flops(M.clone(net)) == M.layer_flops(net)  # the library's copies keep it


def test_forward_order_on_a_fresh_model_without_any_prior_call():
    net = FcFirst()
    net.input_size = (1, 12, 12)
    assert list(M.prunable(net))[0] == "fc"
    assert M.forward_order(net) == ["body.0", "body.2", "fc"]
    fresh = FcFirst()  # no input_size: order from a remembered sample, counted on first use
    M.remember(fresh, torch.randn(2, 1, 12, 12))
    assert M.forward_order(fresh) == ["body.0", "body.2", "fc"]
    # no example, nor a twin with one: registration order
    assert M.forward_order(FcFirst(classes=3)) == ["fc", "body.0", "body.2"]


def test_a_copy_finds_its_twins_example_and_a_stranger_does_not():
    """Nothing rides on the model: a user's deepcopy is counted with the sample remembered for
    the model it copies (same class, parameter names and shapes); another shape is told to
    pass calib=."""
    net = FcFirst(classes=7)
    M.remember(net, torch.randn(2, 1, 12, 12))
    assert M.layer_flops(copy.deepcopy(net)) == M.layer_flops(net)
    assert M.layer_flops(M.clone(net)) == M.layer_flops(net)
    assert "_rdprune" not in " ".join(vars(copy.deepcopy(net)))
    with pytest.raises(ValueError, match="pass calib="):
        M.layer_flops(FcFirst(classes=5))


class TokenNet(nn.Module):
    """A Hugging Face-like language model: an embedding first, and an ``input_size`` too."""

    def __init__(self, vocab=50, dim=16, window=8):
        super().__init__()
        self.input_size = (window,)
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        return self.head(torch.relu(self.mix(self.embed(ids))))


def test_a_token_calibration_batch_wins_over_input_size():
    torch.manual_seed(0)
    net = TokenNet().eval()
    tokens = torch.randint(0, 50, (16, 8))
    with pytest.raises(RuntimeError):  # zeros of input_size are floats: the embedding refuses
        M.layer_flops(net)
    M.remember(net, tokens)
    assert M.layer_flops(net) == {"mix": 8 * 16 * 16, "head": 8 * 16 * 50}
    before = attributes(net)
    pruned, record = rp.prune(TokenNet().eval(), "rd", 0.5, "flops", calib=tokens, grid=5)
    assert 0.45 <= record["flops_reduction"] and M.sparsity(pruned) > 0
    assert attributes(net) == before

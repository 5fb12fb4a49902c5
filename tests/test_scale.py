"""Exact speed-ups of RD's curves at language-model scale: the logits' squared error measured on
the head's input through the head's Gram matrix (``rd.curves(..., head=)``)."""
import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

import rdprune as rp

HF = importlib.util.find_spec("transformers") is not None


def _gpt2(vocab=3000, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=16, n_embd=48, n_layer=2, n_head=2,
                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return GPT2LMHeadModel(cfg).eval(), torch.randint(0, vocab, (3, 16))


@pytest.mark.skipif(not HF, reason="needs transformers")
@pytest.mark.parametrize("distortion", ["mse", "worst_case"])
def test_curves_without_the_head_equal_the_curves_with_it(distortion):
    model, x = _gpt2()
    kw = dict(grid=5, cache=False, progress=False, distortion=distortion)
    full = rp.rd.curves(model, x, **kw)
    fast = rp.rd.curves(model, x, head="lm_head", **kw)
    assert list(full.layer) == list(fast.layer)
    np.testing.assert_allclose(fast.distortion, full.distortion, rtol=1e-5, atol=1e-12)
    assert fast.attrs["distortion"] == distortion and fast.attrs["head"] == "lm_head"
    assert isinstance(model.lm_head, nn.Linear)  # the user's model keeps its head
    assert f"{distortion}@lm_head" not in rp.distortion.names()


@pytest.mark.skipif(not HF, reason="needs transformers")
def test_prune_through_the_one_path_with_head():
    model, x = _gpt2()
    a, _ = rp.core.pruning.allocate_and_apply(model, "rd", 0.6, calib=x, grid=5)
    b, _ = rp.core.pruning.allocate_and_apply(model, "rd", 0.6, calib=x, grid=5, head="lm_head")
    assert rp.masks.sparsity(a) == pytest.approx(rp.masks.sparsity(b))


@pytest.mark.skipif(not HF, reason="needs transformers")
def test_head_refuses_what_has_no_identity():
    model, x = _gpt2()
    with pytest.raises(ValueError, match="KL"):
        rp.rd.curves(model, x, grid=3, cache=False, distortion="kl", head="lm_head")
    with pytest.raises(ValueError, match="not a submodule"):
        rp.rd.curves(model, x, grid=3, cache=False, head="nope")
    with pytest.raises(ValueError, match="Linear"):
        rp.rd.curves(model, x, grid=3, cache=False, head="transformer.ln_f")


def test_a_prunable_head_is_refused():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="prunable"):
        rp.rd.curves(model, torch.randn(4, 8), grid=3, cache=False, head="2")


def test_large_images_pass_one_amount_at_a_time_on_a_cpu():
    from rdprune.core.sweep import default_max_batch
    cpu = torch.device("cpu")
    small, cifar = torch.randn(32, 1, 28, 28), torch.randn(32, 3, 32, 32)
    large = torch.randn(8, 3, 224, 224)
    # up to CIFAR's size the default is the one for any input
    assert default_max_batch(cpu, small) == default_max_batch(cpu, cifar) == default_max_batch(cpu)
    assert default_max_batch(cpu, torch.randint(0, 9, (8, 128))) == default_max_batch(cpu)
    got = default_max_batch(cpu, large)
    assert got * large[0].numel() <= default_max_batch(cpu) * cifar[0].numel()  # same values
    assert got // len(large) <= 1  # eight such images: one amount per pass
    assert default_max_batch(torch.device("cuda"), large) > default_max_batch(cpu)


def test_fast_curves_equal_the_reference_one_amount_per_pass():
    from rdprune.core.sweep import default_max_batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()
    x = torch.randn(6, 3, 224, 224)
    assert default_max_batch(torch.device("cpu"), x) // len(x) <= 1  # the default stacks none
    kw = dict(grid=5, cache=False, progress=False)
    fast, ref = rp.rd.curves(model, x, **kw), rp.rd.curves(model, x, method="reference", **kw)
    np.testing.assert_allclose(fast["distortion"], ref["distortion"], rtol=1e-4, atol=1e-10)

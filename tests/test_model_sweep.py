"""The "any model" sweep: torchvision CNNs, a small vision transformer and Hugging Face GPT-2 and
BERT from tiny configs (and a timm ViT when timm is installed), all random weights and nothing
downloaded, through every step: prunable
weights found (attention's in_proj, GPT-2's Conv1D), FLOPs per weight against an independent
count from the layers' shapes, fast curves = reference, every mask allocator and RD meeting a
FLOPs target, and filter surgery keeping the output width or refusing clearly. No model here has
``input_size`` or any attribute of ours."""
import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import rdprune as rp
from rdprune import masks as M
from rdprune.core import allocators as A


def _vit():
    net = torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=2,
                                               num_heads=2, hidden_dim=64, mlp_dim=128,
                                               num_classes=10)
    nn.init.normal_(net.heads.head.weight, std=0.02)  # torchvision starts it at zero
    return net


def _hf(kind):
    transformers = pytest.importorskip("transformers")
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2,
                                      n_head=2, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(cfg)


def _timm_vit():
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                             img_size=32, patch_size=8, depth=2)


TV = dict(num_classes=10)
MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(**TV),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(**TV),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(**TV),
    "convnext_tiny": lambda: torchvision.models.convnext_tiny(**TV),
    "densenet121": lambda: torchvision.models.densenet121(**TV),
    "vit": _vit,
    "timm_vit": _timm_vit,
    "gpt2": lambda: _hf("gpt2"),
    "bert": lambda: _hf("bert"),
}


def _inputs(name):
    g = torch.Generator().manual_seed(0)
    if name in ("gpt2", "bert"):
        return torch.randint(0, 64, (4, 12), generator=g)
    return torch.randn(2, 3, 32, 32, generator=g)


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    torch.manual_seed(0)
    net = MODELS[request.param]().eval()
    return request.param, net, _inputs(request.param)


def shape_flops(model, x, layers):
    """Multiply-adds per prunable weight from the shapes seen in one forward pass (hooks on the
    modules, not the FLOP counter): out elements × fan-in per output."""
    seen = {}
    holders = {id(M.holder(m)): n for n, m in layers.items()}

    def hook(mod, args, out):
        name, out = holders[id(mod)], rp.distortion.output_tensor(out)
        if isinstance(mod, nn.MultiheadAttention):
            q = args[0]
            tokens = q.numel() // mod.embed_dim
            seen[name] = seen.get(name, 0) + tokens * mod.embed_dim * 3 * mod.embed_dim
            seen[name.replace("in_proj_weight", "out_proj")] = (
                seen.get(name.replace("in_proj_weight", "out_proj"), 0)
                + tokens * mod.embed_dim * mod.embed_dim)
        elif isinstance(mod, nn.Conv2d):
            fan = mod.in_channels // mod.groups * math.prod(mod.kernel_size)
            seen[name] = seen.get(name, 0) + out.numel() * fan
        elif isinstance(mod, nn.Linear):
            seen[name] = seen.get(name, 0) + out.numel() * mod.in_features
        else:  # Hugging Face Conv1D: weight (in, out)
            seen[name] = seen.get(name, 0) + out.numel() * mod.weight.shape[0]

    hooks = [M.holder(m).register_forward_hook(hook) for n, m in layers.items()
             if not n.endswith("out_proj") or not isinstance(M.holder(m), nn.Linear)
             or "self_attention" not in n]
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
        for h in hooks:
            h.remove()
    return seen


def test_prunable_weights_and_their_flops(case):
    name, net, x = case
    assert not hasattr(net, "input_size")
    layers = M.prunable(net)
    kinds = {M.kind(m) for m in layers.values()}
    if name == "vit":
        assert "MultiheadAttention.in_proj_weight" in kinds
    if name == "gpt2":
        assert "Conv1D" in kinds and "lm_head" not in layers  # tied to the embedding: left out
    M.remember(net, x)
    flops = M.layer_flops(net)
    expected = shape_flops(net, x, layers)
    for k in layers:
        assert flops[k] == pytest.approx(expected.get(k, 0), rel=0.01), k
    from torch.utils.flop_counter import FlopCounterMode
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x[:1])
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert sum(flops.values()) <= counter.get_total_flops() // 2 * (1 + 1e-9)


def test_fast_curves_equal_the_reference_and_every_allocator_meets_a_flops_target(case, small_search):
    name, net, x = case
    curves = rp.rd.curves(net, x, grid=3, cache=False, progress=False)
    layers = list(M.prunable(net))
    few = [layers[0], layers[len(layers) // 2], layers[-1]]
    ref = rp.rd.curves(net, x, grid=3, layers=few, cache=False, progress=False,
                       method="reference")
    if name == "vit":  # attention's weights too: its module re-runs with the weight swapped in
        few = [k for k in layers if "in_proj" in k or "out_proj" in k][:2] + few
        assert set(curves.attrs["paths"].values()) == {"fast"}
        ref = rp.rd.curves(net, x, grid=3, layers=few, cache=False, progress=False,
                           method="reference")
    both = curves.merge(ref, on=["layer", "amount"], suffixes=("", "_ref"))
    assert len(both) == len(ref)
    assert (ref.groupby("layer")["distortion"].max() > 0).all()  # not equal for being all zero
    if name in ("gpt2", "bert"):  # untraceable: forward passes replaying what precedes a weight
        assert set(curves.attrs["paths"].values()) == {"replay"}
        assert np.array_equal(both.distortion, both.distortion_ref)  # the same passes, exactly
    scale = both.groupby("layer")["distortion_ref"].transform("max").clip(lower=1e-30)
    assert ((both.distortion - both.distortion_ref).abs() / scale).max() <= 1e-5
    flops, layers = M.layer_flops(net), M.prunable(net)
    total = sum(flops.values())
    for method in A.names(structured=False):
        amounts = rp.allocate(method, net, 0.5, "flops", curves=curves, calib=x,
                              **small_search.get(method, {}))
        # what M.flops counts after M.apply (tested elsewhere): density x dense, per layer
        kept = sum(flops[k] * (1 - M.n_pruned(a, layers[k].weight.numel())
                               / layers[k].weight.numel()) for k, a in amounts.items())
        kept += sum(v for k, v in flops.items() if k not in amounts)
        assert kept <= 0.5 * total * (1 + 1e-9), method


BIG = ("densenet121", "convnext_tiny", "efficientnet_b0")  # the bisection: 10+ surgeries each


def test_filter_surgery_keeps_the_output_width_or_refuses(case):
    """``rp.prune(..., "uniform_width")``; on the three largest networks one surgery of their
    first coupled group instead (the same guards, a fraction of the suite's time)."""
    from rdprune import structured as S
    name, net, x = case
    width = rp.distortion.output_tensor(net(x)).shape
    try:
        if name in BIG:
            root = next(iter(S.groups(net, x)))
            small = S.remove_filters(net, {root: [0]}, example=x)
        else:
            small, _ = rp.prune(net, "uniform_width", 0.3, "flops", calib=x)
    except ValueError as e:
        assert str(e)  # refused, with our message
        return
    assert rp.distortion.output_tensor(small(x)).shape == width

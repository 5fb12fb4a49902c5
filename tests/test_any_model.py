"""Models we did not build: no ``input_size``, registration order unlike the forward order.
torchvision models with random weights, nothing downloaded."""
import copy

import numpy as np
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


def test_every_mask_allocator_meets_a_flops_target_on_a_torchvision_model(resnet18, small_search):
    x = torch.randn(2, 3, 16, 16)
    curves = rp.rd.curves(resnet18, x, grid=5, cache=False, progress=False)  # remembers x
    for method in A.names(structured=False):
        net = copy.deepcopy(resnet18)
        amounts = rp.allocate(method, net, 0.5, "flops", curves=curves, calib=x,
                              **small_search.get(method, {}))
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


# ----------------------------------------------------------------------------- structured guards
class ConvHead(nn.Module):
    """Ends in a 1×1 conv classifier (SqueezeNet style): its output channels are the classes."""

    def __init__(self, groups=1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1, groups=groups),
                                      nn.BatchNorm2d(32), nn.ReLU())
        self.classifier = nn.Sequential(nn.Conv2d(32, 10, 1), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten())

    def forward(self, x):
        return self.classifier(self.features(x))


def test_structured_methods_keep_a_conv_classifiers_output_width():
    from rdprune import structured as S
    torch.manual_seed(0)
    net, x = ConvHead().eval(), torch.randn(4, 1, 12, 12)
    M.remember(net, x)
    assert S.output_convs(net) == ["classifier.0"]
    assert "classifier.0" not in S.groups(net, x)
    for small in (S.uniform_width(net, 0.5, example=x), S.l1_filters(net, 0.5, example=x),
                  rp.prune(net, "uniform_width", 0.5, "flops", calib=x)[0]):
        assert small(x).shape == (4, 10)
        assert small.classifier[0].out_channels == 10 and small.features[3].out_channels < 32
    with pytest.raises(ValueError, match="model's outputs"):
        S.remove_filters(net, {"classifier.0": [0]}, example=x)


def test_grouped_convs_and_channel_shuffles_are_refused_before_surgery():
    from rdprune import structured as S
    x = torch.randn(2, 1, 12, 12)
    with pytest.raises(ValueError, match=r"grouped convolutions \(features\.3\)"):
        S.uniform_width(ConvHead(groups=4), 0.5, example=x)
    shuffle = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    with pytest.raises(ValueError, match="cannot trace|regrouped after it"):
        S.l1_filters(shuffle, 0.5, example=torch.randn(2, 3, 32, 32))


def test_hbgs_says_which_convs_it_could_not_wrap():
    from rdprune.structured import hbgs
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(),
                        nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10))
    ok, skipped = hbgs.wrappable(net)
    assert ok == [] and skipped == {"0": "the stem", "2": "depthwise (groups=8)", "4": "1×1"}
    with pytest.raises(ValueError, match=r"none it could wrap \(0: the stem; 2: depthwise"):
        hbgs.prune(net, torch.randn(8, 1, 12, 12), 0.3, progress=False)
    with pytest.raises(rp.NotApplicable) as e:  # with the short reason a comparison table shows
        hbgs.prune(net, torch.randn(8, 1, 12, 12), 0.3, progress=False)
    assert e.value.reason == "no conv HBGS can prune (only the stem, depthwise, 1×1 convs)"


@pytest.mark.parametrize("budget", ["params", "flops"])
def test_every_allocator_refuses_a_target_exclude_makes_unreachable(resnet18, budget):
    """One clear error, the same for all, before any allocator runs (the layers left free hold
    less than the target)."""
    x = torch.randn(2, 3, 16, 16)
    net = copy.deepcopy(resnet18)
    curves = rp.rd.curves(net, x, grid=3, layers=["fc"], cache=False, progress=False)
    for method in A.names(structured=False):
        with pytest.raises(ValueError, match="out of reach.*exclude fewer layers"):
            rp.allocate(method, net, 0.5, budget, curves=curves, calib=x,
                        exclude=["conv1", "layer*"])


# ----------------------------------------------------------------------------- fast path fallback
class Mixed(nn.Module):
    """One layer called twice, one used only through a functional call, two plain ones."""

    def __init__(self):
        super().__init__()
        self.a, self.shared = nn.Linear(8, 16), nn.Linear(16, 16)
        self.fn, self.head = nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = self.shared(torch.relu(self.shared(torch.relu(self.a(x)))))
        return self.head(torch.relu(nn.functional.linear(h, self.fn.weight, self.fn.bias)))


class Branchy(Mixed):
    """Control flow on values: torch.fx cannot trace it."""

    def forward(self, x):
        return super().forward(x) if x.sum() > -1e9 else x


@pytest.mark.parametrize("cls, slow, full", [(Mixed, {"shared", "fn"}, set()),
                                             (Branchy, {"a", "shared", "fn", "head"}, {"a"})])
def test_the_fast_path_falls_back_per_layer_and_says_which(cls, slow, full):
    """What the trace cannot serve is measured by forward passes that replay the modules which
    finish before the layer's weight is first read (``a``, read first, replays nothing; ``fn``'s
    weight is read functionally after ``shared``'s two calls)."""
    torch.manual_seed(0)
    net, x = cls().eval(), torch.randn(32, 8)
    with pytest.warns(UserWarning, match="cannot serve") as caught:
        fast = rp.rd.curves(net, x, grid=6, cache=False, progress=False)
    assert sum("cannot serve" in str(w.message) for w in caught) == 1  # one warning, not one per layer
    paths = fast.attrs["paths"]
    assert {k for k, v in paths.items() if v == "reference"} == full
    assert {k for k, v in paths.items() if v == "replay"} == slow - full
    assert {k for k, v in paths.items() if v == "fast"} == set(M.prunable(net)) - slow
    ref = rp.rd.curves(net, x, grid=6, cache=False, progress=False, method="reference")
    assert set(ref.attrs["paths"].values()) == {"reference"}
    scale = ref.groupby("layer")["distortion"].transform("max").clip(lower=1e-30)
    assert ((fast.distortion - ref.distortion).abs() / scale).max() <= 1e-5
    assert (ref.groupby("layer")["distortion"].max() > 0).all()  # every layer really measured


# ----------------------------------------------------------------------------- tied weights
class TiedLM(nn.Module):
    """A language model's output layer tied to its input embedding; two layers sharing one."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)
        self.b.weight = self.a.weight
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.relu(self.b(torch.relu(self.a(self.embed(ids))))))


def test_tied_weights_appear_once_and_an_embeddings_tie_is_left_out_with_a_warning():
    net = TiedLM()
    with pytest.warns(UserWarning, match=r"tied weights: head \(tied to embed\)"):
        assert list(M.prunable(net)) == ["a"]
    before = net.embed.weight.detach().clone()
    M.apply(net, {"a": 0.5})
    assert torch.equal(net.embed.weight, before)  # the embedding is untouched
    assert float((net.b.weight == 0).float().mean()) == 0.5  # b shares a's weight, so its mask
    ids, lm = torch.randint(0, 50, (6, 5)), TiedLM().eval()
    with pytest.warns(UserWarning, match="also read elsewhere"):  # a's weight is b's too
        fast = rp.rd.curves(lm, ids, grid=4, cache=False, progress=False)
    ref = rp.rd.curves(lm, ids, grid=4, cache=False, progress=False, method="reference")
    assert fast.attrs["paths"] == {"a": "replay"}  # the embedding's output is replayed
    assert np.array_equal(fast.distortion, ref.distortion)


# ----------------------------------------------------------------------------- FLOPs per weight
def test_flops_follow_the_weight_through_functional_and_shared_calls():
    net = Mixed()
    M.remember(net, torch.randn(3, 8))
    assert M.layer_flops(net) == {"a": 8 * 16, "shared": 2 * 16 * 16, "fn": 16 * 16,
                                  "head": 16 * 4}


def test_attention_weights_are_prunable_and_counted():
    """torchvision's ViT: MHA's packed in_proj_weight is a prunable weight, and out_proj, called
    functionally (eval mode would even take the fused kernel, which has no FLOP formula), is
    credited its FLOPs all the same."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=2,
                                               num_heads=2, hidden_dim=64, mlp_dim=128,
                                               num_classes=10).eval()
    M.remember(vit, torch.randn(2, 3, 32, 32))
    flops = M.layer_flops(vit)
    tokens = (32 // 4) ** 2 + 1
    for i in range(2):
        layer = f"encoder.layers.encoder_layer_{i}"
        assert flops[f"{layer}.self_attention.in_proj_weight"] == tokens * 64 * 3 * 64
        assert flops[f"{layer}.self_attention.out_proj"] == tokens * 64 * 64
        assert flops[f"{layer}.mlp.0"] == tokens * 64 * 128
    assert flops["conv_proj"] == 64 * 3 * 4 * 4 * 64 and flops["heads.head"] == 64 * 10
    order = M.forward_order(vit)  # out_proj where attention uses it, the classifier last
    assert order[-1] == "heads.head" and order[0] == "conv_proj"
    assert order.index("encoder.layers.encoder_layer_0.self_attention.out_proj") < \
        order.index("encoder.layers.encoder_layer_0.mlp.0")


class OuterProduct(nn.Module):
    """Most of its FLOPs multiply activations by activations (no weight to prune)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 64)

    def forward(self, x):
        h = self.fc(x).view(-1, 8, 8)
        return torch.bmm(h, h.transpose(1, 2)).flatten(1) @ torch.ones(64, 3)


def test_low_flops_coverage_is_said():
    net = OuterProduct()
    M.remember(net, torch.randn(2, 8))
    with pytest.warns(UserWarning, match=r"prunable layers hold \d+% of the model's counted"):
        assert M.layer_flops(net) == {"fc": 8 * 64}


# ----------------------------------------------------------------------------- batches of any form
class MaskedText(nn.Module):
    """Keyword inputs (token ids and a mask), integer ids, a dict output with "logits"."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 16)
        self.mix, self.head = nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask=None):
        h = torch.relu(self.mix(self.embed(input_ids)))
        m = attention_mask.unsqueeze(-1).float()
        return {"logits": self.head((h * m).sum(1) / m.sum(1).clamp_min(1))}


def _text_batch(n=12, t=7):
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(n, t, generator=g) > 0.3).long()
    mask[:, 0] = 1
    return {"input_ids": torch.randint(0, 30, (n, t), generator=g), "attention_mask": mask}


def test_dict_batches_of_token_ids_go_through_curves_flops_and_allocation():
    torch.manual_seed(0)
    net, batch = MaskedText().eval(), _text_batch()
    fast = rp.rd.curves(net, batch, grid=5, cache=False, progress=False, batch=5)  # 3 chunks
    assert set(fast.attrs["paths"].values()) == {"fast"}  # traced, dict inputs by name
    ref = rp.rd.curves(net, batch, grid=5, cache=False, progress=False, method="reference")
    scale = ref.groupby("layer")["distortion"].transform("max").clip(lower=1e-30)
    assert ((fast.distortion - ref.distortion).abs() / scale).max() <= 1e-5
    assert (ref.groupby("layer")["distortion"].max() > 0).all()
    assert M.layer_flops(net) == {"mix": 7 * 16 * 16, "head": 16 * 3}  # one sample of 7 tokens
    as_list = [{k: v[:6] for k, v in batch.items()}, {k: v[6:] for k, v in batch.items()}]
    again = rp.rd.curves(net, as_list, grid=5, cache=False, progress=False)  # a list of batches
    assert np.allclose(again.distortion, fast.distortion, rtol=1e-6, atol=0)
    pruned, record = rp.prune(net, "rd", 0.5, "flops", calib=batch, grid=5)
    assert record["flops_reduction"] >= 0.5 - 1e-9


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 2)

    def forward(self, x, scale):
        return self.b(torch.relu(self.a(x)) * scale)


def test_tuple_batches_are_positional_inputs_and_bad_batches_say_what_to_do():
    torch.manual_seed(0)
    net, batch = TwoInputs().eval(), (torch.randn(10, 6), torch.rand(10, 1) + 0.5)
    fast = rp.rd.curves(net, batch, grid=4, cache=False, progress=False)
    ref = rp.rd.curves(net, batch, grid=4, cache=False, progress=False, method="reference")
    assert np.allclose(fast.distortion, ref.distortion, rtol=1e-5, atol=1e-12)
    with pytest.raises(ValueError, match="disagree on the batch size"):
        rp.rd.curves(net, (torch.randn(10, 6), torch.rand(9, 1)), grid=4, cache=False)
    with pytest.raises(ValueError, match="a tensor .* a tuple of tensors .* a dict"):
        rp.rd.curves(net, "images", grid=4, cache=False)
    with pytest.raises(ValueError, match="no tensor to compare"):
        rp.distortion.output_tensor({"text": "no tensor"})


class TwoHeads(nn.Module):
    """Returns (auxiliary, main) outputs: distortion must compare the one asked for."""

    def __init__(self):
        super().__init__()
        self.body, self.aux, self.main = nn.Linear(6, 8), nn.Linear(8, 2), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.aux(h), self.main(h)


def test_output_picks_what_distortion_compares():
    torch.manual_seed(0)
    net, x = TwoHeads().eval(), torch.randn(10, 6)
    first = rp.rd.curves(net, x, grid=3, cache=False, progress=False)  # default: item 0
    main = rp.rd.curves(net, x, grid=3, cache=False, progress=False, output=1)
    by_fn = rp.rd.curves(net, x, grid=3, cache=False, progress=False, output=lambda y: y[1])
    assert np.allclose(main.distortion, by_fn.distortion)
    g = main.groupby("layer")["distortion"].max()
    assert g["aux"] == 0 and g["main"] > 0  # the aux head does not move the main output
    assert first.groupby("layer")["distortion"].max()["aux"] > 0
    pruned = M.apply(copy.deepcopy(net), {"main": 0.5})
    assert rp.rd.distortion(net, pruned, x, output=0) == 0.0
    assert rp.rd.distortion(net, pruned, x, output=1) > 0
    with pytest.raises(ValueError, match="does not pick anything"):
        rp.rd.curves(net, x, grid=3, cache=False, progress=False, output="logits")


# ----------------------------------------------------------------------------- leaf modules
class Gate(nn.Module):
    """Control flow on values inside a sub-module: torch.fx cannot trace this module."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(16, 16)

    def forward(self, x):
        return self.inner(x) if x.sum() > -1e9 else x


@torch.fx.wrap
def _needs_bool(x, flag):
    """Traces (``flag`` is a Proxy then) but fails when run: a Tensor is not a bool."""
    if not isinstance(flag, bool):
        raise TypeError("flag must be bool, not Tensor")
    return x


class RunFails(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(16, 16)

    def forward(self, x):  # a Python bool when run, a traced value under torch.fx (as timm's ViT)
        return _needs_bool(self.inner(x), (x.sum() > 0) if isinstance(x, torch.fx.Proxy) else True)


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.gate, self.runs, self.head = nn.Linear(8, 16), Gate(), RunFails(), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(torch.relu(self.runs(torch.relu(self.gate(torch.relu(self.a(x)))))))


def test_an_untraceable_sub_module_becomes_a_leaf_and_every_layer_stays_fast():
    """A sub-module torch.fx cannot trace, and one whose trace fails when run, become leaves (not
    the whole model): their own layers are re-run through the leaf with the weight swapped in."""
    from rdprune.core.downstream import Downstream
    torch.manual_seed(0)
    net, x = Gated().eval(), torch.randn(32, 8)
    ds = Downstream(net, x[:2])
    assert sorted(ds.leaves) == ["gate", "runs"] and ds.swapped == {"gate.inner", "runs.inner"}
    fast = rp.rd.curves(net, x, grid=6, cache=False, progress=False)
    assert set(fast.attrs["paths"].values()) == {"fast"}
    ref = rp.rd.curves(net, x, grid=6, cache=False, progress=False, method="reference")
    assert np.array_equal(fast.distortion, ref.distortion)
    assert (ref.groupby("layer")["distortion"].max() > 0).all()


class EarlyRead(nn.Module):
    """``b``'s weight is read functionally by ``peek`` long before ``b`` itself is called."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)
        self.peek = Peek(self.b)

    def forward(self, x):
        return self.b(torch.relu(self.a(self.peek(x))))


class Peek(nn.Module):
    def __init__(self, other):
        super().__init__()
        self.other = [other]  # not a sub-module: only its weight is read here

    def forward(self, x):
        return x + nn.functional.linear(x, self.other[0].weight).sum(1, keepdim=True)


def test_replay_starts_where_a_weight_is_first_read_not_where_its_module_is_called():
    from rdprune.core import replay as R
    net, x = EarlyRead().eval(), torch.randn(4, 8)
    assert set(R.plan(net, x, {"b": net.b})["b"]) == {net.peek, net.a}  # by module call
    assert R.plan(net, x, {"b": net.b.weight}) == {"b": []}  # by first read: nothing precedes
    assert R.plan(net, x, {"a": net.a.weight}) == {"a": [net.peek]}
    y, kept = R.capture(net, x, [net.peek])
    with R.replaying(kept):
        net.peek(x).add_(1.0)  # replayed as a copy: an in-place change downstream is harmless
        assert torch.equal(net(x), y)
    assert "forward" not in net.peek.__dict__  # restored
    assert torch.equal(net(x), y)


def test_a_weight_read_by_another_leaf_is_not_perturbed_alone():
    """``peek`` reads ``b``'s weight and becomes a leaf; ``b`` must not go the fast way (its cone
    would miss ``peek``), and its curve must equal the reference."""
    torch.manual_seed(0)
    net, x = EarlyRead().eval(), torch.randn(16, 8)
    with pytest.warns(UserWarning, match="cannot serve"):
        fast = rp.rd.curves(net, x, grid=6, cache=False, progress=False)
    assert fast.attrs["paths"]["b"] != "fast" and fast.attrs["paths"]["a"] == "fast"
    ref = rp.rd.curves(net, x, grid=6, cache=False, progress=False, method="reference")
    assert np.array_equal(fast.distortion, ref.distortion)
    assert (ref.groupby("layer")["distortion"].max() > 0).all()


class SeqFirst(nn.Module):
    """A sequence-first transformer (``batch_first=False``): the batch is axis 1 inside."""

    def __init__(self, pooled=True):
        super().__init__()
        self.pooled = pooled
        self.embed = nn.Linear(6, 16)
        self.encoder, self.second = (nn.TransformerEncoder(
            nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=False), 1,
            enable_nested_tensor=False) for _ in range(2))
        self.head = nn.Linear(16, 3)

    def forward(self, x):  # x: (N, S, 6)
        h = self.second(self.encoder(self.embed(x).transpose(0, 1)))  # (S, N, 16)
        return self.head(h.mean(0) if self.pooled else h)  # (N, 3) or, sequence-first, (S, N, 3)


@pytest.mark.parametrize("pooled", [True, False])
def test_a_sequence_first_leaf_runs_one_amount_at_a_time_and_equals_the_reference(pooled):
    """Stacking amounts along axis 0 mixes them inside a sequence-first encoder. With a pooled
    output the output count gives it away; with a sequence-first output it does not, and only
    the stacking check (two copies of the dense weight must give the dense output twice) does."""
    torch.manual_seed(0)
    net, x = SeqFirst(pooled).eval(), torch.randn(8, 5, 6)
    fast = rp.rd.curves(net, x, grid=6, cache=False, progress=False)
    ref = rp.rd.curves(net, x, grid=6, cache=False, progress=False, method="reference")
    both = fast.merge(ref, on=["layer", "amount"], suffixes=("", "_ref"))
    scale = both.groupby("layer")["distortion_ref"].transform("max").clip(lower=1e-30)
    assert ((both.distortion - both.distortion_ref).abs() / scale).max() <= 1e-5
    assert (ref.groupby("layer")["distortion"].max() > 0).all()
    assert any("encoder" in k and v == "fast" for k, v in fast.attrs["paths"].items())


def test_filter_methods_name_the_real_cause_on_language_models():
    """GPT-2 and BERT have no Conv2d filters at all: the width baselines say so, not a channel
    shuffle (which neither has) and not an unreachable target."""
    transformers = pytest.importorskip("transformers")
    import rdprune as rp
    tok = torch.randint(0, 100, (4, 16))
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=32, bos_token_id=0,
        eos_token_id=0)).eval()
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
        vocab_size=100, max_position_embeddings=32)).eval()
    for net in (gpt2, bert):
        for method in ("uniform_width", "l1_filter"):
            with pytest.raises(ValueError, match="removes Conv2d filters and this .* has none"):
                rp.prune(net, method, 0.3, "flops", calib=tok)

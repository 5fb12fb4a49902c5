"""HBGS / HBGTS (rdprune.hbgs): exact wrappers and folding, exact compensation of linearly
dependent filters, the greedy loop reaching its target with consistent accounting, the shared-
prefix replay, the uniform baselines, and input validation. Random-init ResNet-20, 16 inputs."""
import pytest
import torch

import rdprune as rp
from rdprune import hbgs as H
from rdprune import structured as S

pytestmark = pytest.mark.usefixtures("env_threads")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return rp.models.build("resnet20", 10, 1).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def close(a, b, tol=1e-4):
    return (a - b).norm() <= tol * b.norm()


def test_wrap_and_fold_are_exact(resnet, x):
    net = H.wrap(resnet)
    names = list(H.wrappers(net))
    assert "conv1" not in names and "layer2.0.shortcut.0" not in names and len(names) == 18
    assert torch.equal(net(x), resnet(x))
    assert len(H.wrappers(H.wrap(net))) == 18  # wrapping twice adds nothing
    folded = H.fold(net)
    assert not H.wrappers(folded) and S.count(folded) == S.count(resnet)
    assert close(folded(x), resnet(x), 1e-6)


@pytest.mark.parametrize("selector", ["omp", "backward"])
def test_dependent_filters_are_removed_exactly(resnet, x, selector):
    net = H.wrap(resnet)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        W = net.layer2[1].conv1.conv.weight  # 32 outputs, the last 12 combinations of the first 20
        W[20:] = torch.einsum("jl,lchw->jchw", torch.randn(12, 20, generator=g), W[:20])
        V = net.layer3[1].conv2.conv.weight  # 64 inputs, the last 24 combinations of the first 40
        V[:, 40:] = torch.einsum("ochw,cj->ojhw", V[:, :40], torch.randn(40, 24, generator=g))
    ref = net(x)
    assert H.remove(net, "layer2.1.conv1", "out", 12, selector) < 1e-5
    assert H.remove(net, "layer3.1.conv2", "in", 24, selector) < 1e-5
    assert net.layer2[1].conv1.conv.weight.shape[:2] == (20, 32)
    assert net.layer3[1].conv2.conv.weight.shape[:2] == (64, 40)
    assert close(net(x), ref)
    assert close(H.fold(net, "params")(x), ref)


def check_result(model, pruned, trace, target, budget):
    assert list(trace.columns) == ["round", "layer", "side", "filters_left", "error", "flops",
                                   "params", "seconds"]
    full = S.count(model)
    last = trace.iloc[-1]
    assert last[budget] <= (1 - target) * full[budget]
    assert len(trace) == 1 or trace.iloc[-2][budget] > (1 - target) * full[budget]
    assert trace["round"].tolist() == list(range(1, len(trace) + 1)) and (trace.error >= 0).all()
    ws = H.wrappers(pruned)  # fold_result=False: the chosen inner channel counts
    for (layer, side), rows in trace.groupby(["layer", "side"]):
        W = ws[layer].conv.weight
        assert W.shape[0 if side == "out" else 1] == rows.filters_left.iloc[-1]
    folded = H.fold(pruned, budget)
    assert S.count(folded) == {"flops": last.flops, "params": last.params}
    assert folded(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("method", list(H.METHODS))
def test_prune_reaches_target(resnet, x, method):
    pruned, trace = H.prune(resnet, x, 0.12, budget="params", k=16, progress=False,
                            fold_result=False, **H.METHODS[method])
    assert 1 <= len(trace) <= 12  # a few rounds with k large
    check_result(resnet, pruned, trace, 0.12, "params")
    assert trace.attrs["criterion"] == H.METHODS[method]["criterion"]


def test_fractional_k_steps_each_layer_by_its_width(resnet, x):
    """k=0.25 removes round(0.25 x original width) per step: 4 of 16, 8 of 32, 16 of 64."""
    pruned, trace = H.prune(resnet, x, 0.1, budget="params", k=0.25, progress=False,
                            fold_result=False)
    check_result(resnet, pruned, trace, 0.1, "params")
    width = {n: tuple(w.conv.weight.shape[:2]) for n, w in H.wrappers(H.wrap(resnet)).items()}
    seen = {}
    for r in trace.itertuples():
        before = seen.get((r.layer, r.side), width[r.layer][r.side == "in"])
        assert before - r.filters_left == min(round(0.25 * width[r.layer][r.side == "in"]),
                                              before - 1)
        seen[r.layer, r.side] = r.filters_left


def test_prune_flops_with_finetune(resnet, x):
    y = torch.randint(0, 10, (16,))
    loader = rp.data.TensorLoader(x, y, 8, shuffle=True)
    pruned, trace = H.prune(resnet, (x, y), 0.1, budget="flops", k=16, finetune_steps=2,
                            train_loader=loader, selector="backward", progress=False,
                            fold_result=False)
    check_result(resnet, pruned, trace, 0.1, "flops")
    untouched = [w for n, w in H.wrappers(pruned).items() if n not in set(trace.layer)]
    eye = torch.eye(untouched[0].q.shape[0])
    assert not torch.equal(untouched[0].q[:, :, 0, 0], eye)  # identity only without fine-tuning
    folded, _ = H.prune(resnet, x, 0.1, k=16, progress=False)  # default: folded result
    assert S.count(folded)["flops"] <= 0.9 * S.count(resnet)["flops"]


def test_prefix_replay_equals_full_forward(resnet, x):
    _, net, hw, plan, *_ = H._setup(resnet, x, 0.5, "flops")
    H.remove(net, "layer2.1.conv1", "out", 10)
    assert plan["layer1.0.conv1"] and plan["layer3.2.conv2"]
    cands = {(n, s): H._candidate(w, s, 4, "backward")[0]
             for n, w in H.wrappers(net).items() for s in ("out", "in")}
    batches = list(x.split(8))
    with torch.no_grad():
        logits0 = [resnet(b) for b in batches]
        untouched = net(x)  # the network's output before any candidate is replayed
    fast = H._output_errors(net, batches, logits0, plan, cands)
    slow = H._output_errors(net, batches, logits0, {n: [] for n in plan}, cands)
    assert fast.keys() == slow.keys() and all(abs(fast[c] - slow[c]) < 1e-6 for c in fast)
    with torch.no_grad():
        assert torch.equal(net(x), untouched)  # nothing left patched (a stuck replay would differ)


@pytest.mark.parametrize("selector", ["omp", "backward", "random"])
def test_uniform_baselines(resnet, selector):
    pruned, info = H.uniform(resnet, 0.3, "flops", selector, fold_result=False)
    assert 1 - info.flops.iloc[0] / S.count(resnet)["flops"] >= 0.3
    assert info.filters_left.nunique() <= 3  # 16/32/64 filters, one fraction
    for layer, left in zip(info.layer, info.filters_left):
        assert H.wrappers(pruned)[layer].conv.weight.shape[0] == left
    assert S.count(H.fold(pruned, "flops"))["flops"] == info.flops.iloc[0]


def test_selection_split_is_disjoint_training_data():
    sel, loader = rp.data.selection_split("fashion_mnist", n=100, train_size=500, seed=3)
    xtr, _ = rp.data.tensors("fashion_mnist", "train")
    assert sel.shape == (100, 1, 28, 28) and len(loader.x) == 500
    flat = {tuple(r.tolist()) for r in loader.x.flatten(1)[:, ::37]}
    assert not any(tuple(r.tolist()) in flat for r in sel.flatten(1)[:, ::37])


def test_bad_input(resnet, x):
    for t in (0, 1, 1.2, -0.5):
        with pytest.raises(ValueError, match=r"\(0, 1\)"):
            H.prune(resnet, x, t, progress=False)
    bad = [dict(selector="lasso"), dict(criterion="loss"), dict(budget="latency"), dict(k=0),
           dict(k=1.5), dict(k=True),
           dict(finetune_steps=3)]
    for kw in bad:
        with pytest.raises(ValueError):
            H.prune(resnet, x, 0.5, progress=False, **kw)
    with pytest.raises(ValueError, match="out of reach"):
        H.prune(resnet, x, 0.999, budget="params", progress=False)
    with pytest.raises(ValueError, match="selector"):
        H.uniform(resnet, 0.5, selector="l1")
    with pytest.raises(ValueError, match="data"):
        H.prune(resnet, [], 0.5, progress=False)

"""Physical filter (output-channel) removal, cost counting, and the width baselines.

    pruned = remove_filters(model, {"layer1.0.conv1": [0, 3, 7]})   # a smaller, runnable copy
    count(pruned)                                   # {"params": ..., "flops": ...}
    small = uniform_width(model, 0.5)               # same fraction removed in every group
    small = l1_filters(model, 0.5, scope="global")  # L1-ranked filters, global threshold

* **Surgery by Torch-Pruning.** Channels are removed with ``torch_pruning.DependencyGraph``
  (traced on one input of ``model.input_size``), never by hand: every layer that consumes or
  shares the removed channels (BN, the next conv or linear, residual additions, concatenations,
  depthwise convs) is sliced to match, so the network keeps running.
* **Groups.** Convs whose output channels are coupled (ResNet residual additions tie the stem and
  every block's last conv and shortcut of a stage together; a depthwise conv shares its producer's
  channels) form one *group*. :func:`groups` lists them as ``{root: [member convs]}``, the root
  being the group's first conv in forward order. Removing channel ``i`` of any member removes it
  from all members; :func:`remove_filters` therefore refuses two names of the same group.
  Every group is prunable (the residual stage groups included) as long as one channel remains.
* **What is never pruned, and what is refused.** A group holding the model's output conv (a 1×1
  conv classifier, :func:`output_convs`) is left out, so the output width stays; every surgery
  checks that the network still runs and gives an output of the original shape. A grouped conv
  that is not depthwise (ResNeXt, RegNet) is refused before any surgery (:func:`check_convs`);
  a channel shuffle (ShuffleNet) is refused when Torch-Pruning cannot trace it or its surgery
  breaks, with Torch-Pruning's own error; a model without Conv2d filters (a language model) and
  one whose every conv feeds the output are told so.
* **Cost.** :func:`count` runs the real network: params = every parameter (BN included),
  flops = multiply-adds = ``FlopCounterMode`` FLOPs / 2 for one input (convs and linears;
  BN, ReLU, pooling and additions are not counted, as everywhere in rdprune). A mask-pruned
  network (:mod:`rdprune.masks`, unstructured) counts its masked weights as gone and its FLOPs
  scaled by the prunable layers' density, the RD authors' accounting. :func:`latency_ms` times
  the real thing on the CPU; :func:`kept_weights` says what is left under each original layer.
* **Targets.** ``target`` is the fraction of the original FLOPs (or params, ``budget="params"``)
  to remove, in (0, 1). Both baselines return the *least* pruned network of their family whose
  cost is ≤ (1 − target) × original, found by bisection over the finitely many breakpoints
  (the family is monotone), so the target is always met.
* **Baselines.** :func:`uniform_width` removes the same fraction ``floor(f·n)`` (at most n − 1)
  of every group's channels and keeps the *leading* ones: a width-multiplier network, the
  architecture-only baseline that ignores the weights. :func:`l1_filters` ranks filters by L1 norm
  (Li et al., 2017). A channel's score is the sum, over the group's member convs, of its filter's
  L1 norm divided by that conv's mean filter L1 norm (so convs of different fan-in compare).
  ``scope="global"`` (default) removes the lowest-scored channels network-wide, which gives a
  non-uniform allocation. ``scope="layer"`` removes the same fraction in each group, lowest scores
  first. Both keep at least one channel per group.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..core import masks as M
from ..core.allocators import BUDGETS
from ..core.distortion import output_tensor
from ..core.masks import count  # re-exported: rp.structured.count

__all__ = ["count", "latency_ms", "kept_weights", "groups", "coupled_groups", "dependency_graph",
           "output_convs", "check_convs",
           "filter_scores", "remove_filters", "removed", "widths", "uniform_width", "l1_filters",
           "BUDGETS"]
_EPS = 1e-9


def _example(model: nn.Module, example=None):
    return M.example(model, example)


def latency_ms(model: nn.Module, reference: nn.Module, batch: int = 256,
               repeats: int = 5) -> tuple[float, float]:
    """Median CPU wall time (ms) of one forward pass of ``batch`` random inputs through
    ``model`` and through ``reference`` (e.g. the dense network), timed alternately so that
    both see the same machine load; copies are timed, the models are left as they are."""
    pair = [copy.deepcopy(m).cpu().eval() for m in (model, reference)]
    x = torch.randn(batch, *reference.input_size)
    times: list[list[float]] = [[], []]
    with torch.inference_mode():
        [m(x) for m in pair]  # warm-up
        for _ in range(repeats):
            for m, t in zip(pair, times):
                tic = time.perf_counter()
                m(x)
                t.append(time.perf_counter() - tic)
    return tuple(1000 * float(np.median(t)) for t in times)


def kept_weights(model: nn.Module, original: nn.Module) -> dict[str, int]:
    """Non-zero conv/linear weights left under each prunable layer of ``original`` (HBGS's
    factor convs included; 0 for a layer the pruned network no longer has, e.g. a block
    JointPruning skips)."""
    out = {}
    for name in M.prunable(original):
        try:
            sub = model.get_submodule(name)
        except AttributeError:
            out[name] = 0
            continue
        out[name] = sum(int((p != 0).sum()) for n, p in sub.named_parameters()
                        if n.endswith("weight") and p.dim() > 1)
    return out


def dependency_graph(model: nn.Module, example=None):
    import torch_pruning as tp
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ValueError(f"filter surgery removes Conv2d filters and this {type(model).__name__} "
                         "has none (its prunable layers are matrices); use a mask method "
                         "(rp.prune(model, 'rd' or 'lamp', ...))")
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=_example(model, example), verbose=False)
    except ValueError:
        raise
    except Exception as e:  # Torch-Pruning's failure, said in our words
        raise ValueError(f"Torch-Pruning cannot trace this model's channels ({type(e).__name__}: "
                         f"{e}); filter surgery follows channels only where Torch-Pruning can "
                         "trace them. Use a mask method (rp.prune(model, 'rd' or 'lamp', ...))"
                         ) from e
    finally:
        model.train(was)
    return dg


def _conv_items(dg, group):
    """(module, plain idxs, root idxs) of every Conv2d whose output channels the group prunes."""
    return [(item.dep.target.module, list(item.idxs), list(item.root_idxs)) for item in group
            if isinstance(item.dep.target.module, nn.Conv2d)
            and dg.is_out_channel_pruning_fn(item.dep.handler)]


def output_convs(model: nn.Module) -> list[str]:
    """Convs whose output channels are the model's outputs: the last prunable layer the forward
    pass calls, when it is a conv (a SqueezeNet- or FCN-style 1×1 classifier). Their groups are
    never pruned, so the output width stays (needs an example input, see :func:`count`)."""
    order = M.forward_order(model)
    last = order[-1] if order else None
    return [last] if last and isinstance(model.get_submodule(last), nn.Conv2d) else []


def check_convs(model: nn.Module) -> None:
    """ValueError, before any surgery, for a grouped conv that is not depthwise (ResNeXt, RegNet):
    Torch-Pruning slices such a conv inconsistently and the network breaks later."""
    bad = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1
           and not (m.groups == m.in_channels == m.out_channels)]
    if bad:
        raise ValueError(f"grouped convolutions ({', '.join(bad[:5])}"
                         f"{', ...' if len(bad) > 5 else ''}) cannot be filter-pruned "
                         "consistently here (only depthwise ones are); use a mask method "
                         "(rp.prune(model, 'rd' or 'lamp', ...)) for this model")


def coupled_groups(model: nn.Module, dg, *, outputs: bool = False) -> dict[str, tuple]:
    """{root name: (root module, [(member name, module, idxs, root_idxs)], Torch-Pruning group of
    all its channels)} in forward order. The group of an output conv (:func:`output_convs`) is
    left out unless ``outputs``; a non-depthwise grouped conv raises (:func:`check_convs`)."""
    check_convs(model)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    skip = set() if outputs else {model.get_submodule(n) for n in output_convs(model)}
    seen, out = set(), {}
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or m in seen or m not in dg.module2node:
            continue
        g = dg.get_pruning_group(m, dg.get_pruner_of_module(m).prune_out_channels,
                                 list(range(m.out_channels)))
        members = sorted(((names[c], c, i, r) for c, i, r in _conv_items(dg, g)),
                         key=lambda t: order[t[0]])
        seen.update(c for _, c, _, _ in members)
        if not skip & {c for _, c, _, _ in members}:
            out[name] = (m, members, g)
    return out


def groups(model: nn.Module, example: torch.Tensor | None = None) -> dict[str, list[str]]:
    """Coupled output-channel groups: {root conv: [member convs, root first]} in forward order."""
    m = M.clone(model)
    return {root: [n for n, *_ in members]
            for root, (_, members, _) in coupled_groups(m, dependency_graph(m, example)).items()}


def widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every Conv2d, by name."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def remove_filters(model: nn.Module, removal: Mapping[str, Sequence[int]], *,
                   example: torch.Tensor | None = None, inplace: bool = False) -> nn.Module:
    """Remove the listed output channels (filters) of each named conv, and the matching channels
    of every coupled layer (module doc). Returns the pruned network (a copy unless ``inplace``)."""
    model = model if inplace else M.clone(model)
    dg = dependency_graph(model, example)
    check_convs(model)
    x = _example(model, example)
    with torch.no_grad():
        width = _out_shape(model, x)
    keep = {model.get_submodule(n) for n in output_convs(model)}
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    todo = {}
    for name, idxs in removal.items():
        if name not in convs:
            raise ValueError(f"{name!r} is not a Conv2d of this model; convs: {', '.join(convs)}")
        idxs, n = sorted({int(i) for i in idxs}), convs[name].out_channels
        if idxs and not (0 <= idxs[0] and idxs[-1] < n):
            raise ValueError(f"filter indices of {name!r} must lie in [0, {n}), got {idxs}")
        if len(idxs) >= n:
            raise ValueError(f"cannot remove all {n} filters of {name!r}; keep at least one")
        if idxs:
            todo[name] = idxs
    for name in todo:  # validate every group before touching the network
        m = convs[name]
        g = dg.get_pruning_group(m, dg.get_pruner_of_module(m).prune_out_channels, [0])
        members = [c for c, *_ in _conv_items(dg, g)]
        shared = [o for o in todo if o != name and any(c is convs[o] for c in members)]
        if shared:
            raise ValueError(f"{name!r} and {shared[0]!r} share output channels (one coupled "
                             "group); name only one of them")
        if keep & set(members):
            raise ValueError(f"the output channels of {name!r} are the model's outputs (its "
                             "classifier); they are never removed")
    for name, idxs in todo.items():  # regroup each time: index maps of concatenations shift
        m = convs[name]
        try:
            dg.get_pruning_group(m, dg.get_pruner_of_module(m).prune_out_channels, idxs).prune()
            with torch.no_grad():
                ok = _out_shape(model, x) == width
        except Exception as e:  # Torch-Pruning's own failure, said in our words
            ok, why = False, f"{type(e).__name__}: {e}"
        else:
            why = "the output shape changed"
        if not ok:
            raise ValueError(f"removing filters of {name!r} does not give a consistent network "
                             f"({why}): its channels are reshaped or regrouped after it (a "
                             "channel shuffle, attention heads), which filter surgery cannot follow. "
                             "Leave that group out, or use a mask method (rp.prune(model, 'rd', "
                             "...))")
    return model


def _out_shape(model, x):
    was = model.training
    model.eval()
    try:
        out = model(x)
    finally:
        model.train(was)
    return tuple(output_tensor(out).shape)


# ----------------------------------------------------------------------------- baselines
def removed(fraction: float, n: int) -> int:
    """Channels a group of ``n`` loses at ``fraction``: floor(fraction·n), keeping at least one."""
    return min(n - 1, math.floor(float(fraction) * n + _EPS))


def _check_target(target: float, budget: str) -> float:
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if not 0.0 < float(target) < 1.0:
        raise ValueError(f"target is the fraction of {budget} to remove and must lie in (0, 1), "
                         f"got {target!r}")
    return float(target)


def _search(model, target, budget, n_plans, plan, example):
    """Binary search over a monotone family of removal plans ``plan(0..n_plans-1)`` (least to most
    pruned) for the first whose cost meets the target; returns that pruned network."""
    full = count(model, example)[budget]
    limit, memo = (1.0 - target) * full, {}

    def build(i):
        if i not in memo:
            net = remove_filters(model, plan(i), example=example)
            memo[i] = (net, count(net, example)[budget])
        return memo[i]

    if build(n_plans - 1)[1] > limit:
        raise ValueError(f"a {budget} reduction of {target:.3g} is out of reach: even one channel "
                         f"per group leaves {memo[n_plans - 1][1]} of {full}")
    lo, hi = 0, n_plans - 1  # invariant: plan(hi) meets the target
    while lo < hi:
        mid = (lo + hi) // 2
        if build(mid)[1] <= limit:
            hi = mid
        else:
            lo = mid + 1
    return build(hi)[0]


def filter_scores(groups):
    """{root: (n channels, per-root-channel normalised L1 score)} (module doc) of :func:`coupled_groups`'
    result."""
    out = {}
    for root, (mod, members, _) in groups.items():
        s = torch.zeros(mod.out_channels, dtype=torch.float64)
        for _, conv, idxs, ridxs in members:
            l1 = conv.weight.detach().abs().flatten(1).sum(1).double()
            s[ridxs] += l1[idxs] / l1.mean().clamp_min(1e-30)
        out[root] = (mod.out_channels, s)
    return out


def _fraction_plans(sizes: dict[str, int], pick):
    """(count, plan): plan(i) removes floor(f·n) (≤ n − 1) channels per group at the i-th
    breakpoint f = j/n; ``pick(root, k)`` says which k."""
    fracs = sorted({j / n for n in sizes.values() for j in range(n)})
    return len(fracs), lambda i: {r: pick(r, removed(fracs[i], n)) for r, n in sizes.items()}


def _some_groups(found: dict) -> dict:
    if not found:
        raise ValueError("no filter group of this model can lose channels (its convs feed the "
                         "output directly or are bound to layers that cannot shrink); use a mask "
                         "method (rp.prune(model, 'rd' or 'lamp', ...))")
    return found


def uniform_width(model: nn.Module, target: float, budget: str = "flops", *,
                  example: torch.Tensor | None = None) -> nn.Module:
    """Remove the same fraction of every group's channels, keeping the leading ones, at the least
    fraction meeting the target (a pruned copy)."""
    target = _check_target(target, budget)
    m = M.clone(model)
    sizes = {r: mod.out_channels for r, (mod, *_) in
             _some_groups(coupled_groups(m, dependency_graph(m, example))).items()}
    n, plan = _fraction_plans(sizes, lambda r, k: list(range(sizes[r] - k, sizes[r])))
    return _search(model, target, budget, n, plan, example)


def l1_filters(model: nn.Module, target: float, budget: str = "flops", *, scope: str = "global",
               example: torch.Tensor | None = None) -> nn.Module:
    """Remove the lowest-L1 filters (module doc), globally or the same fraction per group, at the
    least pruning meeting the target (a pruned copy)."""
    target = _check_target(target, budget)
    if scope not in ("global", "layer"):
        raise ValueError(f"unknown scope {scope!r}; choose 'global' or 'layer'")
    m = M.clone(model)
    scores = filter_scores(_some_groups(coupled_groups(m, dependency_graph(m, example))))
    order = {r: torch.argsort(s, stable=True).tolist() for r, (_, s) in scores.items()}
    if scope == "layer":
        n, plan = _fraction_plans({r: k for r, (k, _) in scores.items()},
                                  lambda r, k: order[r][:k])
        return _search(model, target, budget, n, plan, example)
    # global: every channel but each group's best, by ascending score; plan(i) drops the first i
    pool = sorted((scores[r][1][i].item(), r, i) for r in order for i in order[r][:-1])

    def plan(i):
        out = {}
        for _, r, c in pool[:i]:
            out.setdefault(r, []).append(c)
        return out
    return _search(model, target, budget, len(pool) + 1, plan, example)

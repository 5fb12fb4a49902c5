"""Layer-wise allocation: every method returns ``{layer: absolute amount}`` and
:func:`rdprune.core.masks.apply` applies it (LAMP's seam). Methods are found in a registry
(:func:`register_allocator`), so a user's allocator reaches :func:`allocate`, ``rp.prune``, the
zero-shot table, the widget and the CLI without touching this file.

Built in (method notes: ``docs/methods.md``):
- ``global``: one magnitude threshold over all prunable weights.
- ``uniform``: every layer at the same amount (rounded up per layer, so the target is met).
- ``uniform_plus``: the first convolution dense, the last layer keeps at least 20 %, the rest
  share one amount.
- ``erk``: density ∝ (sum of dims) / (product of dims), layers that would exceed density 1 made
  dense and the rest re-scaled until none do.
- ``lamp``: score u² / Σ_{v² ≥ u²} v² within a layer, global top-k.
- ``rd``: the exact multiple-choice knapsack over per-layer RD curves (:mod:`rdprune.core.knapsack`).
- ``rd_filter`` (registered by :mod:`rdprune.structured.rd_filter`): the same knapsack over
  filter-group curves; structured, so its amounts are applied by surgery, not masks.

Budgets: ``params`` counts kept weights, ``flops`` counts kept multiply-adds with unstructured
sparsity scaling a layer's FLOPs by its density. Choices for ``flops``: ``global`` and ``lamp`` keep
their global ranking and stop once the removed weights' FLOPs reach the target (each weight costs
its layer's FLOPs per weight); ``uniform`` prunes every layer equally, which removes the same
fraction of FLOPs as of weights; ``uniform_plus`` and ``erk`` meet the target in FLOPs instead of
weights. In every method a layer never becomes less sparse than it already is (iterative rounds),
and :func:`allocate` checks that every mask allocator's result meets the target.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Iterable, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..util import check_choice, check_target
from . import masks as M
from .curves import check_curves
from .knapsack import DEFAULT_MAX_STATES, Table, solve

BUDGETS = ("params", "flops")


class Allocator(NamedTuple):
    """A registered method: ``fn(model, target, budget, **kw) -> {layer: amount}``;
    ``needs_curves`` / ``needs_calib``: it receives ``curves=`` / ``calib=``; ``structured``: its
    amounts are applied by ``apply(model, amounts) -> pruned copy`` instead of masks, and its
    curves come from ``curves(model, calib, **kw)`` (default: :func:`rdprune.rd.curves`)."""
    fn: Callable
    needs_curves: bool = False
    structured: bool = False
    needs_calib: bool = False
    apply: Callable | None = None
    curves: Callable | None = None


_REGISTRY: dict[str, Allocator] = {}


def register_allocator(name: str, fn: Callable, needs_curves: bool = False,
                       structured: bool = False, *, needs_calib: bool = False,
                       apply: Callable | None = None, curves: Callable | None = None) -> None:
    """Make ``name`` an allocation method everywhere (``allocate``, ``rp.prune``,
    ``pipeline.zero_shot``, the widget, ``python -m rdprune baselines --methods``).

    ``fn(model, target, budget, *, exclude=(), curves=..., calib=..., **options)`` returns
    ``{layer name: absolute amount}``; it is passed ``curves`` only with ``needs_curves`` and
    ``calib`` only with ``needs_calib``, and a ``layers`` argument (the free layers' sizes and
    costs, :class:`Layers`) if it declares one. A structured method also gives ``apply``."""
    if not isinstance(name, str) or not name or not callable(fn):
        raise ValueError("register_allocator needs a name and a callable")
    if structured and apply is None:
        raise ValueError(f"structured allocator {name!r} needs apply=(model, amounts) -> pruned "
                         "copy")
    _REGISTRY[name] = Allocator(fn, bool(needs_curves), bool(structured), bool(needs_calib),
                                apply, curves)


def unregister_allocator(name: str) -> None:
    """Remove ``name`` from the registry (ValueError if it is not registered)."""
    get(name)
    del _REGISTRY[name]


def names(*, structured: bool | None = None) -> list[str]:
    """Registered methods (``structured=False``: those applied by masks)."""
    return [k for k, a in _REGISTRY.items() if structured is None or a.structured == structured]


def get(name: str) -> Allocator:
    check_choice("method", name, _REGISTRY)
    return _REGISTRY[name]


def validate(method: str, target, budget: str) -> None:
    """ValueError for an unknown method or budget, or a target outside [0, 1)."""
    get(method)
    check_target(target, "weights" if budget == "params" else "FLOPs")
    check_choice("budget", budget, BUDGETS)


class Layers:
    """What every allocator needs: per-layer weight counts, costs per weight, current sparsity."""

    def __init__(self, model, budget, exclude=()):
        allp = M.prunable(model)
        self.free = M.prunable(model, exclude)
        if not self.free:
            raise ValueError("no prunable layer is left to allocate over"
                             + (f" after exclude={list(exclude)}" if list(exclude) else "")
                             + "; exclude fewer layers")
        self.names = list(self.free)
        self.n = np.array([m.weight.numel() for m in self.free.values()], dtype=np.int64)
        self.pruned = np.array([int((~M.mask_of(m)).sum()) for m in self.free.values()])
        if budget == "flops":
            f = M.layer_flops(model)
            unit = {k: f[k] / allp[k].weight.numel() for k in allp}
        else:
            unit = {k: 1.0 for k in allp}
        self.unit = np.array([unit[k] for k in self.names])
        self.total = sum(unit[k] * m.weight.numel() for k, m in allp.items())
        self.fixed_removed = sum(unit[k] * int((~M.mask_of(m)).sum())
                                 for k, m in allp.items() if k not in self.free)
        self.free_total = float(np.sum(self.unit * self.n))

    def need(self, target):
        """Cost the free layers must remove in total (already-removed weights included)."""
        return _snap(target * self.total) - self.fixed_removed

    def keep_budget(self, target):
        """Cost the free layers may keep."""
        return self.free_total - self.need(target)

    def removed(self, amounts) -> float:
        """Cost the free layers remove at ``amounts`` (current masks counted)."""
        c = [max(M.n_pruned(float(amounts.get(k, 0.0)), int(n)), int(p))
             for k, n, p in zip(self.names, self.n, self.pruned)]
        return float(np.sum(np.asarray(c) * self.unit))

    def amounts(self, counts):
        counts = np.maximum(np.asarray(counts), self.pruned)
        return {k: float(c) / n for k, c, n in zip(self.names, counts, self.n)}


def _snap(x: float) -> float:
    """Snap float noise around an integer (0.9 * 100 = 90.00000000000001) to the integer."""
    r = round(x)
    return float(r) if abs(x - r) <= 1e-9 * max(1.0, abs(x)) else x


def _call(name, entry, model, target, budget, layers, given):
    params = inspect.signature(entry.fn).parameters
    open_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if "layers" in params:
        given["layers"] = layers
    if "exclude" not in params and not open_kw and not given.get("exclude"):
        given.pop("exclude", None)  # an allocator without exclude= is fine when none is asked
    unknown = [k for k in given if k not in params and not open_kw]
    if unknown:
        raise ValueError(f"allocator {name!r} takes no option {unknown[0]!r}")
    return entry.fn(model, target, budget, **given)


def allocate(method: str, model: nn.Module, target: float, budget: str = "params", *,
             curves: pd.DataFrame | None = None, exclude: Iterable[str] = (),
             calib: torch.Tensor | None = None, **options) -> dict[str, float]:
    """Per-layer absolute amounts that prune ``model`` to ``target`` (the fraction removed) of the
    chosen ``budget`` (kept weights or kept FLOPs, over all prunable layers). ``exclude`` (names
    or glob patterns) keeps layers as they are. Methods that need curves (``rd``: from
    :func:`rdprune.rd.curves`; ``rd_filter``: from :func:`rdprune.rd_filter.curves`) take
    ``curves=``, those that need activations ``calib=``; other ``options`` go to the method."""
    validate(method, target, budget)
    entry, target, exclude = get(method), float(target), tuple(exclude)
    if calib is not None:
        M.remember(model, calib)
    given = dict(options, exclude=exclude)
    if entry.needs_curves:
        if curves is None:
            how = "rdprune.rd_filter.curves" if method == "rd_filter" else "rdprune.rd.curves"
            raise ValueError(f"allocate({method!r}, ...) needs curves={how}(model, calib)")
        given["curves"] = curves
    if entry.needs_calib:
        if calib is None:
            raise ValueError(f"allocate({method!r}, ...) needs calib= (a batch of inputs)")
        given["calib"] = calib
    if entry.structured:
        return _call(method, entry, model, target, budget, None, given)
    layers = Layers(model, budget, exclude)
    need = layers.need(target)
    if need > layers.free_total * (1 + 1e-9):
        raise ValueError(f"a {budget} reduction of {target:g} is out of reach: the layers left free"
                         f" hold only {layers.free_total / layers.total:.1%} of the {budget}"
                         + (f" after exclude={list(exclude)}" if exclude else "")
                         + " (and what is pruned already counts); lower the target or exclude "
                           "fewer layers")
    amounts = _call(method, entry, model, target, budget, layers, given)
    bad = [k for k in amounts if k not in layers.free]
    if bad:
        raise ValueError(f"allocator {method!r} returned amounts for {bad[:5]}, which are not free "
                         "prunable layers of this model")
    if layers.removed(amounts) < need - 1e-9 * max(1.0, abs(need)):
        raise ValueError(f"allocator {method!r} missed the target: it removes "
                         f"{(layers.removed(amounts) + layers.fixed_removed) / layers.total:.4f} "
                         f"of the {budget}, asked {target:g}")
    return amounts


# ----------------------------------------------------------------------------- global rankings
def _magnitude(module):
    """|w| per weight, ascending (masked weights -1, so they go first); float64."""
    w = module.weight.detach().abs().flatten().double()
    return torch.sort(torch.where(M.mask_of(module).flatten(), w, torch.full_like(w, -1.0))).values


def _lamp_scores(module):
    """LAMP score per weight, ascending (masked weights -1, so they go first): w_u² over the sum
    of w_v² for every v at least as large (Lee et al. 2021). One sort per layer: the scores of
    the sorted squares are already non-decreasing."""
    w2 = module.weight.detach().flatten().double() ** 2
    keep = M.mask_of(module).flatten()
    live = torch.sort(w2[keep]).values
    suffix = live.flip(0).cumsum(0).flip(0)  # Σ_{v ≥ u} v² in sorted order
    score = live / suffix.clamp_min(torch.finfo(torch.float64).tiny)
    if len(score) > 1 and not bool((score[1:] >= score[:-1]).all()):  # rounding, in theory
        score = torch.sort(score).values
    return torch.cat([torch.full((int((~keep).sum()),), -1.0, dtype=torch.float64), score])


def ranking_scores(method: str, module: nn.Module) -> torch.Tensor:
    """The ascending per-weight scores that ``global`` (|w|) or ``lamp`` rank across layers."""
    check_choice("ranking", method, ("global", "lamp"))
    return _magnitude(module) if method == "global" else _lamp_scores(module)


def _keys(v: torch.Tensor) -> torch.Tensor:
    """float64 → int64 with the same order (so that bisection over values is exact)."""
    i = v.contiguous().view(torch.int64)
    return torch.where(i < 0, i ^ 0x7FFFFFFFFFFFFFFF, i)


def _global_ranking(layers, scores, target):
    """Remove weights in ascending score order across layers (ties: layer order, then position)
    until the removed cost reaches the target; returns per-layer amounts. ``scores``: each free
    layer's scores, ascending. Exact without a global sort: bisection over the score values
    (64 steps of one binary search per layer) finds the score of the last weight removed;
    every lower score goes, and the ties at it go in layer order until the cost is met. Equal
    to :func:`global_ranking_reference` (a test), in seconds on 100 M weights."""
    need = layers.need(target)
    if need <= 0:
        return layers.amounts([0] * len(scores))
    goal = need - 1e-9 * max(need, 1)
    keys = [_keys(s) for s in scores]
    unit = [float(u) for u in layers.unit]

    def removed_upto(v: int, right: bool = True):
        at = torch.tensor([v], dtype=torch.int64)
        c = [int(torch.searchsorted(k, at, right=right)) for k in keys]
        return sum(u * n for u, n in zip(unit, c)), c

    live = [k for k in keys if len(k)]
    lo, hi = min(int(k[0]) for k in live), max(int(k[-1]) for k in live)
    while lo < hi:  # the least score whose removal (with everything below it) meets the goal
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if removed_upto(mid)[0] >= goal else (mid + 1, hi)
    removed, counts = removed_upto(lo, right=False)
    _, upto = removed_upto(lo)
    for i, (u, c, e) in enumerate(zip(unit, counts, upto)):
        tied = e - c
        if removed >= goal or not tied:
            continue
        take = tied if u <= 0 else min(tied, max(0, math.ceil((goal - removed) / u) - 1))
        while take < tied and removed + take * u < goal:  # ceil's rounding, either way
            take += 1
        counts[i] += take
        removed += take * u
    return layers.amounts(counts)


def global_ranking_reference(layers, scores, target):
    """The plain version of :func:`_global_ranking`: one stable sort of every score."""
    layer_id = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    allscores = torch.cat(scores)
    order = torch.argsort(allscores, stable=True)
    cost = torch.as_tensor(layers.unit, dtype=torch.float64)[layer_id[order]]
    need = layers.need(target)
    k = int(torch.searchsorted(cost.cumsum(0), torch.tensor([need - 1e-9 * max(need, 1)],
                                                             dtype=torch.float64)).item()) + 1
    k = 0 if need <= 0 else min(k, len(order))
    counts = torch.bincount(layer_id[order[:k]], minlength=len(scores)).numpy()
    return layers.amounts(counts)


# ----------------------------------------------------------------------------- shared amount
def _shared_amount(cost, cap, floor, need):
    """Smallest a with Σ cost_l · clip(a, floor_l, cap_l) ≥ need (bisection; monotone in a)."""
    def removed(a):
        return float(np.sum(cost * np.clip(a, floor, cap)))
    if removed(1.0) < need - 1e-9 * max(1.0, need):
        raise ValueError("the target cannot be reached with these constraints; lower it")
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed(mid) < need else (lo, mid)
    return hi


def _uniform_plus(layers, target, first_conv, last):
    """The model's first convolution dense, its last layer keeps ≥ 20 %, the others share one
    amount (Gale et al.'s convention, as in the LAMP authors' code)."""
    cap = np.ones(len(layers.names))
    for name, c in ((first_conv, 0.0), (last, 0.8)):
        if name in layers.free:
            cap[layers.names.index(name)] = min(cap[layers.names.index(name)], c)
    floor = np.minimum(layers.pruned / layers.n, cap)
    cost = layers.unit * layers.n
    a = _shared_amount(cost, cap, floor, layers.need(target))
    amounts = np.clip(a, floor, cap)
    return layers.amounts(np.ceil(amounts * layers.n - 1e-9))


def _erk(layers, target):
    """Erdős–Rényi-kernel densities scaled to the target, dense layers fixed until none exceed 1."""
    shapes = [tuple(layers.free[k].weight.shape) for k in layers.names]
    raw = np.array([sum(s) / math.prod(s) for s in shapes])
    cost = layers.unit * layers.n
    keep_budget = layers.keep_budget(target)
    cap = 1.0 - layers.pruned / layers.n  # densities can only go down
    dense = np.zeros(len(raw), dtype=bool)
    while True:
        scale = (keep_budget - np.sum(cost[dense] * cap[dense])) / np.sum(cost[~dense] * raw[~dense])
        density = np.where(dense, cap, scale * raw)
        over = (density > cap) & ~dense
        if not over.any():
            break
        dense |= over
        if dense.all():
            break
    density = np.clip(density, 0.0, cap)
    return layers.amounts(np.ceil((1 - density) * layers.n - 1e-9))



# ----------------------------------------------------------------------------- the built-ins
def _global(model, target, budget, *, layers, exclude=()):
    return _global_ranking(layers, [_magnitude(layers.free[k]) for k in layers.names], target)


def _lamp(model, target, budget, *, layers, exclude=()):
    return _global_ranking(layers, [_lamp_scores(layers.free[k]) for k in layers.names], target)


def _uniform(model, target, budget, *, layers, exclude=()):
    """The same amount in every free layer, the one that removes the target over all layers
    (``target`` itself when nothing is excluded or pruned), rounded up per layer."""
    a = min(1.0, max(0.0, layers.need(target) / layers.free_total)) if layers.free_total else 0.0
    return layers.amounts([min(n, math.ceil(a * n - 1e-9)) for n in layers.n])


def _uniform_plus_fn(model, target, budget, *, layers, exclude=()):
    every = M.prunable(model)
    order = M.forward_order(model)  # the first conv the input meets, not the first registered
    convs = [k for k in order if isinstance(every[k], (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    return _uniform_plus(layers, target, convs[0] if convs else None, order[-1])


def _erk_fn(model, target, budget, *, layers, exclude=()):
    return _erk(layers, target)


def _rd_fn(model, target, budget, *, layers, curves, exclude=(), max_states=DEFAULT_MAX_STATES):
    return _rd(model, layers, target, curves, max_states)


register_allocator("global", _global)
register_allocator("uniform", _uniform)
register_allocator("uniform_plus", _uniform_plus_fn)
register_allocator("erk", _erk_fn)
register_allocator("lamp", _lamp)
register_allocator("rd", _rd_fn, needs_curves=True)


# ----------------------------------------------------------------------------- RD
def rd_problem(layers, curves):
    """Cost and distortion matrices (layers × options) of the RD knapsack. Options are the grid
    amounts not below the layer's current sparsity, plus "stay as is" (distortion 0)."""
    grids = {k: g.sort_values("amount") for k, g in curves.groupby("layer", sort=False)}
    n_opts = 1 + max(len(g) for g in grids.values())
    cost = np.full((len(layers.names), n_opts), np.inf)
    dist = np.full_like(cost, np.inf)
    counts = np.zeros(cost.shape, dtype=np.int64)
    for i, k in enumerate(layers.names):
        g, n, p = grids[k], int(layers.n[i]), int(layers.pruned[i])
        c = np.array([M.n_pruned(a, n) for a in g["amount"]])
        ok = c > p
        counts[i, 0], cost[i, 0], dist[i, 0] = p, (n - p) * layers.unit[i], 0.0
        m = int(ok.sum())
        counts[i, 1:1 + m] = c[ok]
        cost[i, 1:1 + m] = (n - c[ok]) * layers.unit[i]
        dist[i, 1:1 + m] = g["distortion"].to_numpy()[ok]
    return cost, dist, counts


def _rd(model, layers, target, curves, max_states):
    check_curves(model, curves, layers.names)
    cost, dist, counts = rd_problem(layers, curves)
    picks = solve(cost, dist, layers.keep_budget(target), max_states=max_states)
    return layers.amounts(counts[np.arange(len(picks)), picks])


class RDSolver:
    """RD allocation for many targets from one set of curves: the DP table is built once for
    every budget down to ``min_target`` (~1 s for ResNet-32 at the default resolution), then
    :meth:`amounts` answers a new target in microseconds (sliders, sweeps)."""

    def __init__(self, model: nn.Module, curves: pd.DataFrame, budget: str = "params", *,
                 exclude: Iterable[str] = (), min_target: float = 0.0, max_states: int = 1 << 17):
        validate("rd", min_target, budget)
        self.layers = Layers(model, budget, exclude)
        check_curves(model, curves, self.layers.names)
        cost, self.dist, self.counts = rd_problem(self.layers, curves)
        self.table = Table(cost, self.dist, self.layers.keep_budget(min_target),
                           max_states=max_states)

    def amounts(self, target: float) -> dict[str, float]:
        validate("rd", target, "params")
        picks = self.table.pick(self.layers.keep_budget(float(target)))
        return self.layers.amounts(self.counts[np.arange(len(picks)), picks])

    def predicted(self, target: float) -> float:
        """Summed single-layer distortion of the allocation at ``target``."""
        picks = self.table.pick(self.layers.keep_budget(float(target)))
        return float(self.dist[np.arange(len(picks)), picks].sum())

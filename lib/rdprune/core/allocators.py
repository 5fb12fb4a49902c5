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
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..util import check_choice, check_target
from . import masks as M
from .curves import check_curves
from .knapsack import DEFAULT_MAX_STATES, Table, solve
from .ranking import global_ranking, global_ranking_reference, lamp_scores, magnitude_scores, ranking_scores  # noqa: F401

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


class Allocation(dict):
    """``{layer: amount}`` that also says what it cost: ``passes``, forward passes over the
    calibration batch (or their equivalent) the allocator ran. A plain dict costs none."""

    def __init__(self, amounts, passes: float = 0.0):
        super().__init__(amounts)
        self.passes = float(passes)


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
        if not allp:
            raise ValueError(f"{type(model).__name__} has no matrix weights to prune (no Conv, "
                             "Linear, Conv1D or attention projection; embeddings and norms are "
                             "never pruned): there is nothing to allocate over")
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
# ----------------------------------------------------------------------------- shared amount
def shared_amount(cost, cap, floor, need, offset=0.0, lo=0.0, hi=1.0, scale=1.0):
    """Smallest a in [lo, hi] with Σ cost_l · clip(a · scale_l − offset_l, floor_l, cap_l) ≥ need
    (bisection; monotone in a for scale > 0): one amount every layer shares (uniform+), one level
    around per-layer offsets (OWL, DLP, ATP) or one scale of per-layer factors (AlphaPruning)."""
    def removed(a):
        return float(np.sum(cost * np.clip(a * scale - offset, floor, cap)))
    if removed(hi) < need - 1e-9 * max(1.0, need):
        raise ValueError("the target cannot be reached with these constraints; lower it")
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed(mid) < need else (lo, mid)
    return hi



def rounded_up(layers, amounts):
    """Amounts (one per free layer) to whole counts: clipped to [current sparsity, 1] and rounded
    up, so that a target the amounts meet is met."""
    floor = layers.pruned / layers.n
    return layers.amounts(np.ceil(np.clip(amounts, floor, 1.0) * layers.n - 1e-9))


def around_one_level(layers, target, values, width: float):
    """OWL's and DLP's rule: ``values`` (one per free layer, higher = keep more) min-max scaled to
    offsets in [−width, width] (none when all are equal), and amounts ``a − offset`` around the
    one level ``a`` that meets the target, rounded up."""
    v = np.asarray(values, float)
    spread = v.max() - v.min()
    offset = (v - v.min()) / spread * 2 * width - width if spread > 0 else np.zeros_like(v)
    level = shared_amount(layers.unit * layers.n, 1.0, layers.pruned / layers.n,
                          layers.need(target), offset=offset, lo=-1.0 - width, hi=1.0 + width)
    return rounded_up(layers, level - offset)

def _uniform_plus(layers, target, first_conv, last):
    """The model's first convolution dense, its last layer keeps ≥ 20 %, the others share one
    amount (Gale et al.'s convention, as in the LAMP authors' code)."""
    cap = np.ones(len(layers.names))
    for name, c in ((first_conv, 0.0), (last, 0.8)):
        if name in layers.free:
            cap[layers.names.index(name)] = min(cap[layers.names.index(name)], c)
    floor = np.minimum(layers.pruned / layers.n, cap)
    cost = layers.unit * layers.n
    a = shared_amount(cost, cap, floor, layers.need(target))
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
    return global_ranking(layers, [magnitude_scores(layers.free[k]) for k in layers.names], target)


def _lamp(model, target, budget, *, layers, exclude=()):
    return global_ranking(layers, [lamp_scores(layers.free[k]) for k in layers.names], target)


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

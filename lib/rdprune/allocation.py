"""Layer-wise allocation: every method returns ``{layer: absolute amount}`` and
:func:`rdprune.masks.apply` applies it (LAMP's seam).

Methods (SPEC §1 "Baselines", plus RD):
- ``global``: one magnitude threshold over all prunable weights.
- ``uniform``: every layer at the same amount.
- ``uniform_plus``: first conv dense, the last layer keeps at least 20 %, the rest share one amount.
- ``erk``: density ∝ (sum of dims) / (product of dims), layers that would exceed density 1 made
  dense and the rest re-scaled until none do.
- ``lamp``: score u² / Σ_{v² ≥ u²} v² within a layer, global top-k.
- ``rd``: the exact multiple-choice knapsack over per-layer RD curves (:mod:`rdprune.knapsack`).
- ``rd_filter``: the same knapsack over filter-level curves (:mod:`rdprune.rd_filter`); its amounts
  are fractions of each coupled filter group's channels, and :func:`rdprune.rd_filter.apply`
  removes them physically (structured, so it is the one method not applied by masks).

Budgets: ``params`` counts kept weights, ``flops`` counts kept multiply-adds with unstructured
sparsity scaling a layer's FLOPs by its density. Choices for ``flops``: ``global`` and ``lamp`` keep
their global ranking and stop once the removed weights' FLOPs reach the target (each weight costs
its layer's FLOPs per weight); ``uniform`` prunes every layer equally, which removes the same
fraction of FLOPs as of weights; ``uniform_plus`` and ``erk`` meet the target in FLOPs instead of
weights. In every method a layer never becomes less sparse than it already is (iterative rounds).
"""
from __future__ import annotations

import fnmatch
import math
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import masks as M
from .knapsack import DEFAULT_MAX_STATES, Table, solve

MASKED = ("global", "uniform", "uniform_plus", "erk", "lamp", "rd")  # applied by masks.apply
METHODS = MASKED + ("rd_filter",)  # rd_filter: structured, applied by rd_filter.apply
BUDGETS = ("params", "flops")


def _validate(method, target, budget):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(target, (int, float)) or not 0.0 <= float(target) < 1.0 or \
            math.isnan(float(target)):
        raise ValueError(f"target must be a sparsity in [0, 1) (e.g. 0.9 prunes 90 %), got {target!r}")
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")


class _Layers:
    """What every allocator needs: per-layer weight counts, costs per weight, current sparsity."""

    def __init__(self, model, budget, exclude):
        allp = M.prunable(model)
        self.free = M.prunable(model, exclude)
        self.names = list(self.free)
        self.n = np.array([m.weight.numel() for m in self.free.values()], dtype=np.int64)
        self.pruned = np.array([int((~M.mask_of(m)).sum()) for m in self.free.values()])
        if budget == "flops":
            f = M.layer_flops(model)
            unit = {k: f[k] / allp[k].weight.numel() for k in allp}
        else:
            unit = {k: 1.0 for k in allp}
        self.unit = np.array([unit[k] for k in self.names])
        total = sum(unit[k] * m.weight.numel() for k, m in allp.items())
        fixed_removed = sum(unit[k] * int((~M.mask_of(m)).sum())
                            for k, m in allp.items() if k not in self.free)
        self.total = total
        self.fixed_removed = fixed_removed
        self.free_total = float(np.sum(self.unit * self.n))

    def need(self, target):
        """Cost the free layers must remove in total (already-removed weights included)."""
        return _snap(target * self.total) - self.fixed_removed

    def keep_budget(self, target):
        """Cost the free layers may keep."""
        return self.free_total - self.need(target)

    def amounts(self, counts):
        counts = np.maximum(np.asarray(counts), self.pruned)
        return {k: float(c) / n for k, c, n in zip(self.names, counts, self.n)}


def _snap(x: float) -> float:
    """Snap float noise around an integer (0.9 * 100 = 90.00000000000001) to the integer."""
    r = round(x)
    return float(r) if abs(x - r) <= 1e-9 * max(1.0, abs(x)) else x


def allocate(method: str, model: nn.Module, target: float, budget: str = "params", *,
             curves: pd.DataFrame | None = None, exclude: Iterable[str] = (),
             max_states: int = DEFAULT_MAX_STATES) -> dict[str, float]:
    """Per-layer absolute amounts that prune ``model`` to ``target`` sparsity of the chosen
    ``budget`` (kept weights or kept FLOPs, over all prunable layers). ``exclude`` (names or glob
    patterns) keeps layers as they are. ``rd`` needs ``curves`` from :func:`rdprune.rd.curves`;
    ``rd_filter`` needs ``curves`` from :func:`rdprune.rd_filter.curves` and returns
    ``{group root: fraction of its filters removed}`` for :func:`rdprune.rd_filter.apply`, with
    ``target`` the fraction of the physically pruned network's FLOPs (or params) removed."""
    _validate(method, target, budget)
    if method == "rd_filter":
        from . import rd_filter  # structured: its own curves, DP re-solve and surgery
        if curves is None:
            raise ValueError("allocate('rd_filter', ...) needs "
                             "curves=rdprune.rd_filter.curves(model, calib)")
        if "layer" in curves and (pats := list(exclude)):
            keep = ~curves["layer"].map(lambda g: any(fnmatch.fnmatchcase(g, p) for p in pats))
            curves = curves[keep]
        return rd_filter.allocate(model, float(target), curves, budget=budget,
                                  max_states=max_states)
    layers = _Layers(model, budget, exclude)
    if method == "rd":
        if curves is None:
            raise ValueError("allocate('rd', ...) needs curves=rdprune.rd.curves(model, calib)")
        return _rd(model, layers, float(target), curves, max_states)
    if method in ("global", "lamp"):
        scores = [(_lamp_scores if method == "lamp" else _magnitude)(layers.free[k])
                  for k in layers.names]
        return _global_ranking(layers, scores, float(target))
    if method == "uniform":
        return layers.amounts([M.n_pruned(target, n) for n in layers.n])
    if method == "uniform_plus":
        return _uniform_plus(layers, float(target))
    return _erk(layers, float(target))


# ----------------------------------------------------------------------------- global rankings
def _magnitude(module):
    w = module.weight.detach().abs().flatten().double()
    return torch.where(M.mask_of(module).flatten(), w, torch.full_like(w, -1.0))


def _lamp_scores(module):
    """LAMP score per weight (masked weights -1, so they go first)."""
    w2 = module.weight.detach().flatten().double() ** 2
    keep = M.mask_of(module).flatten()
    w2 = torch.where(keep, w2, torch.zeros_like(w2))
    order = torch.argsort(w2, stable=True)
    sorted_w2 = w2[order]
    suffix = sorted_w2.flip(0).cumsum(0).flip(0)  # Σ_{v ≥ u} v² in sorted order
    score = torch.empty_like(w2)
    score[order] = sorted_w2 / suffix.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(keep, score, torch.full_like(score, -1.0))


def _global_ranking(layers, scores, target):
    """Remove weights in ascending score order across layers until the removed cost reaches
    the target; returns per-layer amounts."""
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


def _uniform_plus(layers, target):
    """First conv dense, last layer keeps ≥ 20 %, the others share one amount."""
    n = len(layers.names)
    cap = np.ones(n)
    cap[0] = 0.0
    cap[-1] = 0.8
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


# ----------------------------------------------------------------------------- RD
def check_curves(model, curves, layers=None):
    """Raise ValueError unless ``curves`` were computed on this model's prunable layers."""
    needed = {"layer", "amount", "n_weights", "distortion"}
    if not isinstance(curves, pd.DataFrame) or not needed <= set(curves.columns):
        raise ValueError(f"curves must be a DataFrame with columns {sorted(needed)} "
                         "(from rdprune.rd.curves)")
    names = layers or list(M.prunable(model))
    sizes = {k: m.weight.numel() for k, m in M.prunable(model).items()}
    got = curves.groupby("layer", sort=False)["n_weights"].first().to_dict()
    missing = [k for k in names if k not in got]
    wrong = [k for k in names if k in got and got[k] != sizes[k]]
    if missing or wrong:
        raise ValueError("these curves come from another model: "
                         + (f"no curve for {missing[:5]} " if missing else "")
                         + (f"wrong layer sizes for {wrong[:5]}" if wrong else "")
                         + "; recompute them with rdprune.rd.curves(model, calib)")
    want = curves.attrs.get("model_hash")
    if want is not None:
        from .train import state_hash
        if state_hash(model) != want:
            raise ValueError("these curves were computed on different weights or masks than the "
                             "model now has; recompute them with rdprune.rd.curves(model, calib)")


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
        _validate("rd", min_target, budget)
        self.layers = _Layers(model, budget, exclude)
        check_curves(model, curves, self.layers.names)
        cost, self.dist, self.counts = rd_problem(self.layers, curves)
        self.table = Table(cost, self.dist, self.layers.keep_budget(min_target),
                           max_states=max_states)

    def amounts(self, target: float) -> dict[str, float]:
        _validate("rd", target, "params")
        picks = self.table.pick(self.layers.keep_budget(float(target)))
        return self.layers.amounts(self.counts[np.arange(len(picks)), picks])

    def predicted(self, target: float) -> float:
        """Summed single-layer distortion of the allocation at ``target``."""
        picks = self.table.pick(self.layers.keep_budget(float(target)))
        return float(self.dist[np.arange(len(picks)), picks].sum())

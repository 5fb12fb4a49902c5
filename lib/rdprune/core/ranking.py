"""Global ranking across layers, for the ``global`` and ``lamp`` allocators: per-weight scores
(ascending per layer) and the exact cut that removes the lowest-scoring weights of the whole
model until a budget is met, without sorting every weight at once (docs/methods.md).
``layers`` is an :class:`rdprune.core.allocators.Layers` (names, weight counts, cost per weight,
what is pruned already)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..util import check_choice
from . import masks as M


def sorted_values(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in ascending order. On the CPU through NumPy, whose SIMD quicksort sorts
    float32 several times faster than ``torch.sort`` (docs/benchmarks.md); only values are needed,
    so the sort need not be stable."""
    if t.device.type != "cpu":
        return torch.sort(t).values
    return torch.from_numpy(np.sort(t.contiguous().numpy(), kind="quicksort"))


def magnitude_scores(module):
    """|w| per weight, ascending (masked weights -1, so they go first); float64 (sorted in the
    weight's own float32, half the memory traffic; the values convert exactly)."""
    w = module.weight.detach().abs().flatten().float()
    w = torch.where(M.mask_of(module).flatten(), w, torch.full_like(w, -1.0))
    return sorted_values(w).double()


def lamp_scores(module):
    """LAMP score per weight, ascending (masked weights -1, so they go first): w_u² over the sum
    of w_v² for every v at least as large (Lee et al. 2021). One sort per layer: the scores of
    the sorted squares are already non-decreasing."""
    keep = M.mask_of(module).flatten()
    live = sorted_values(module.weight.detach().flatten().float().abs()[keep]).double() ** 2
    suffix = live.flip(0).cumsum(0).flip(0)  # Σ_{v ≥ u} v² in sorted order
    score = live / suffix.clamp_min(torch.finfo(torch.float64).tiny)
    if len(score) > 1 and not bool((score[1:] >= score[:-1]).all()):  # rounding, in theory
        score = sorted_values(score)
    return torch.cat([torch.full((int((~keep).sum()),), -1.0, dtype=torch.float64), score])


def ranking_scores(method: str, module: nn.Module) -> torch.Tensor:
    """The ascending per-weight scores that ``global`` (|w|) or ``lamp`` rank across layers."""
    check_choice("ranking", method, ("global", "lamp"))
    return magnitude_scores(module) if method == "global" else lamp_scores(module)


def _keys(v: torch.Tensor) -> torch.Tensor:
    """float64 → int64 with the same order (so that bisection over values is exact)."""
    i = v.contiguous().view(torch.int64)
    return torch.where(i < 0, i ^ 0x7FFFFFFFFFFFFFFF, i)


def global_ranking(layers, scores, target):
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
    """The plain version of :func:`global_ranking`: one stable sort of every score."""
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

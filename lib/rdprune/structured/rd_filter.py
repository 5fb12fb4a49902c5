"""Rate–distortion allocation at *filter* granularity (our extension, ``docs/methods.md``): RD's
curves and knapsack over coupled output-channel groups, so RD meets HBGS and JointPruning on equal
(structured) terms. Registered as the allocator ``rd_filter`` (``rp.prune(model, "rd_filter", ...)``).

    curves = rd_filter.curves(model, calib)              # one curve per coupling group
    amounts = rd_filter.allocate(model, 0.5, curves)     # {group root: fraction of filters removed}
    small = rd_filter.apply(model, amounts)              # physically pruned copy

* **Unit.** A group of :func:`rdprune.structured.groups` (convs with coupled output channels),
  named by its root conv. Amount ``a`` removes ``k = min(n-1, floor(a*n))`` of its ``n`` channels,
  lowest first by :func:`rdprune.structured.l1_filters`' L1 score (same ones in every member).
* **Distortion** ``D_g(a)`` (``mse``/``worst_case``, :mod:`rdprune.rd`) against the unpruned model,
  only group ``g`` thinned: zeroing a channel at the output of every module the surgery slices
  (member convs *and* their BNs) equals removing it, as ReLU, pooling and residual additions keep
  zeros zero (tested against physically pruned networks). Measured by the core curve engine
  (:func:`rdprune.core.sweep.output_sweep`): the dense pass is kept, the group's first modules
  are substituted and only their downstream cones re-run, several amounts stacked along the
  batch; full passes with the outputs masked where the trace cannot serve.
* **Cost, linear per group.** ``n_weights``/``flops`` = params / multiply-adds saved per unit
  amount, ``n * s_g``; ``s_g`` = ``structured.count`` (``FlopCounterMode``/2, convs + linears;
  params incl. BN) of the model minus that with one channel removed by ``remove_filters``
  (members, BNs, consumers' input channels). Exact for one group; a conv between two thinned
  groups keeps (n_a-k_a)(n_b-k_b), more than the linear sum says.
* **Allocation.** :mod:`rdprune.knapsack` over each group's (kept linear cost, distortion)
  options; the pick is pruned physically and counted, and while it exceeds ``(1 - target) *
  original`` the linear budget drops by the overshoot and the DP table re-picks; bisection then
  moves back towards the target. The result never exceeds the kept budget.
"""
from __future__ import annotations

import fnmatch

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core import batch as B
from ..core import distortion as D
from ..core import masks as M
from ..core.allocators import register_allocator
from ..core.curves import grid_amounts
from ..core.knapsack import DEFAULT_MAX_STATES, Table
from ..core.sweep import output_sweep
from ..util import check_choice, check_target, state_hash
from . import surgery as S
from .surgery import BUDGETS, removed  # removed: channels a group loses at an amount

__all__ = ["curves", "allocate", "apply", "structure", "removed", "COLUMNS", "BUDGETS"]
COLUMNS = ["layer", "amount", "n_weights", "flops", "distortion", "filters", "removed"]


_STRUCTURES: dict = {}  # (model id, weights hash) -> structure, the last few models


def structure(model):
    """{root: (n, L1 order of root channels, {module: its channel of each root channel})} over
    every Conv2d/BN/Linear whose output channels the group's removal slices. Kept for the model's
    current weights (``rp.prune`` asks three times: curves, allocation, surgery); treat it as
    read-only."""
    key = (id(model), state_hash(model))
    if key not in _STRUCTURES:
        if len(_STRUCTURES) >= 4:
            _STRUCTURES.pop(next(iter(_STRUCTURES)))
        _STRUCTURES[key] = _structure(model)
    return _STRUCTURES[key]


def _structure(model):
    m = M.clone(model)
    dg, names, out = S.dependency_graph(m), {v: k for k, v in m.named_modules()}, {}
    groups = S.coupled_groups(m, dg)
    for root, (n, score) in S.filter_scores(groups).items():
        mod, _, g = groups[root]
        out[root] = (n, torch.argsort(score, stable=True), {})
        for item in g:
            t = item.dep.target.module
            if isinstance(t, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) and t in names and \
                    dg.is_out_channel_pruning_fn(item.dep.handler):
                own = out[root][2][names[t]] = torch.empty(mod.out_channels, dtype=torch.long)
                own[list(item.root_idxs)] = torch.as_tensor(list(item.idxs))
    return out


def _masks(mods, points, order, ks, dev):
    out = {}  # {module: (len(ks), channels) masks zeroing the k lowest-ranked channels}
    for name, own in points.items():
        m = mods[name]
        out[name] = torch.ones(len(ks), getattr(m, "out_channels", None) or
                               getattr(m, "num_features", None) or m.out_features, device=dev)
        for i, k in enumerate(ks):
            out[name][i, own[order[:k]]] = 0
    return out


def curves(model: nn.Module, calib: torch.Tensor, grid: int | None = None,
           distortion: str = "mse", groups: list[str] | None = None, *, method: str = "fast",
           batch: int = 256, max_batch: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Filter-level RD curves, long form: ``layer`` (group root), ``amount`` (fraction of the
    group's filters removed), ``n_weights``/``flops`` (params / multiply-adds saved per unit
    amount, module doc), ``distortion``, ``filters`` (n), ``removed`` (k). ``grid=None`` gives
    every k = 0..n-1 (amount k/n); an int gives that many evenly spaced amounts in [0, 1]."""
    D.check_inputs(model, calib, 2 if grid is None else grid, distortion)
    check_choice("curve method", method, ("fast", "reference"))
    struct, full = structure(model.eval()), S.count(model)
    key = state_hash(model)
    names = list(groups or struct)
    if bad := [g for g in names if g not in struct]:
        raise ValueError(f"unknown groups {bad}; groups (root convs): {', '.join(struct)}")
    save = {}  # (params, flops) one channel saves on the real network
    for g in names:
        c = S.count(S.remove_filters(model, {g: [int(struct[g][1][0])]}))
        save[g] = (full["params"] - c["params"], full["flops"] - c["flops"])
    x_all = B.to(B.gather(calib), next(model.parameters()).device)
    mods, dev, plan = dict(model.named_modules()), x_all.device, {}

    def jobs():
        for g in names:
            n, order, points = struct[g]
            amounts = np.arange(n) / n if grid is None else grid_amounts(grid)
            ks = np.array([removed(a, n) for a in amounts])
            todo = sorted(set(int(k) for k in ks if k > 0))
            plan[g] = (n, amounts, ks, todo)
            yield g, list(points), lambda group, p=points, o=order: _masks(mods, p, o, group,
                                                                           dev), todo
    frames = []
    for g, values in output_sweep(model, x_all, jobs(), distortion, batch, max_batch, progress,
                                  "RD filter curves", fast=method == "fast"):
        n, amounts, ks, todo = plan[g]
        dist = dict.fromkeys(range(n), 0.0) | dict(zip(todo, values))
        frames.append(pd.DataFrame({"layer": g, "amount": amounts, "n_weights": n * save[g][0],
                                    "flops": n * save[g][1], "distortion": [dist[k] for k in ks],
                                    "filters": n, "removed": ks})[COLUMNS])
    out = pd.concat(frames, ignore_index=True)
    out.attrs.update(model_hash=key, distortion=distortion, granularity="filter")
    return out


# ----------------------------------------------------------------------------- allocation
def allocate(model: nn.Module, target: float, curves: pd.DataFrame, budget: str = "flops", *,
             max_states: int = DEFAULT_MAX_STATES, max_iter: int = 100) -> dict[str, float]:
    """{group root: fraction of its filters removed} minimising the summed curve distortion such
    that the *physically* pruned network keeps at most ``(1 - target)`` of the original FLOPs
    (or params); groups without a curve stay whole. Raises ValueError when out of reach."""
    check_choice("budget", budget, BUDGETS)
    target = check_target(target, budget)
    if not isinstance(curves, pd.DataFrame) or not set(COLUMNS) <= set(curves.columns):
        raise ValueError(f"curves must be a DataFrame with columns {COLUMNS} "
                         "(from rdprune.rd_filter.curves)")
    sizes = curves.groupby("layer", sort=False)["filters"].first().to_dict()
    struct, names = structure(model), list(sizes)
    bad = [g for g in names if g not in struct or struct[g][0] != sizes[g]]
    if bad or not names:
        raise ValueError(f"these curves do not match the model's filter groups ({bad[:5]}); "
                         "recompute them with rdprune.rd_filter.curves(model, calib)")
    if curves.attrs.get("model_hash") not in (None, state_hash(model)):
        raise ValueError("these curves were computed on different weights; recompute them")
    if target == 0:  # nothing to remove (the binned DP could prune a little)
        return dict.fromkeys(names, 0.0)
    col = "flops" if budget == "flops" else "n_weights"
    unit = {g: float(c[col].iloc[0]) / sizes[g] for g, c in curves.groupby("layer", sort=False)}
    best = curves.groupby(["layer", "removed"], sort=False)["distortion"].min()
    opts = [{0: 0.0, **best.loc[g].to_dict()} for g in names]  # distinct k -> D; k = 0 always
    cost = np.full((len(names), max(map(len, opts))), np.inf)
    dist, ks = cost.copy(), np.zeros(cost.shape, dtype=np.int64)
    for i, (g, o) in enumerate(zip(names, opts)):
        k = np.array(sorted(o))  # kept cost of each option in the linear model
        ks[i, :len(k)], dist[i, :len(k)], cost[i, :len(k)] = k, [o[j] for j in k], \
            (sizes[g] - k) * unit[g]
    full, over = S.count(model)[budget], None
    limit = (1.0 - float(target)) * full
    b = sum(sizes[g] * unit[g] for g in names) - float(target) * full  # linear kept budget
    table = Table(cost, dist, max(b, cost.min(1).sum()), max_states=max_states)

    counted = {}  # pick -> (amounts, real count): nearby budgets often give the same pick

    def fit(b):  # (amounts, real count) of the DP's pick at linear budget b
        picks = tuple(int(p) for p in table.pick(b))
        if picks not in counted:
            amounts = {g: float(ks[i, p] / sizes[g]) for i, (g, p) in enumerate(zip(names, picks))}
            counted[picks] = amounts, S.count(apply(model, amounts, struct=struct))[budget]
        return counted[picks]

    for _ in range(max_iter):  # tighten by the overshoot until the real count fits
        amounts, real = fit(b) if b >= table.base else (None, np.inf)
        if real <= limit or amounts is None:
            break
        over, b = b, b - max(real - limit, table.width)
    if real > limit:
        raise ValueError(f"a {budget} reduction of {target:.3g} is out of reach at filter "
                         "granularity (the most pruned choice exceeds the budget)")
    for _ in range(8 if over is not None else 0):  # bisect back towards the target
        if over - b < 2 * table.width:
            break
        mid, (cand, real) = (b + over) / 2, fit((b + over) / 2)
        amounts, b, over = (cand, mid, over) if real <= limit else (amounts, b, mid)
    return amounts


def apply(model: nn.Module, amounts: dict[str, float], *, struct=None) -> nn.Module:
    """Physically pruned copy: each group loses :func:`removed` of its lowest-L1 channels
    (:func:`rdprune.structured.remove_filters`); groups not named stay whole. ``struct``:
    :func:`structure` of ``model`` when the caller has it already."""
    struct, plan = struct or structure(model), {}
    for g, a in amounts.items():
        if g not in struct:
            raise ValueError(f"unknown group {g!r}; groups (root convs): {', '.join(struct)}")
        if isinstance(a, bool) or not 0.0 <= float(a) <= 1.0:
            raise ValueError(f"amount of {g!r} must lie in [0, 1], got {a!r}")
        if (k := removed(a, struct[g][0])) > 0:
            plan[g] = struct[g][1][:k].tolist()
    return S.remove_filters(model, plan)


def _registered(model, target, budget, *, curves, exclude=(), max_states=DEFAULT_MAX_STATES):
    """``allocate("rd_filter", ...)``: groups matching ``exclude`` stay whole."""
    if pats := list(exclude):
        curves = curves[~curves["layer"].map(lambda g: any(fnmatch.fnmatchcase(g, p)
                                                            for p in pats))]
    return allocate(model, target, curves, budget=budget, max_states=max_states)


register_allocator("rd_filter", _registered, needs_curves=True, structured=True, apply=apply,
                   curves=curves)

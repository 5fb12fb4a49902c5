"""Adaptive RD curves, approximations, opt-in: fewer amounts (``rd.adaptive_curves``) and fewer
calibration samples (``rd.sampled_curves``).

RD's cost is layers × amounts × calibration passes, and the DP reads only a few amounts of each
curve closely: the ones it picks and their neighbours. :func:`adaptive_curves` measures every
layer at a coarse subset of the grid, solves the allocation at each target, then measures the
grid points halfway between each picked amount and its nearest measured neighbours, and repeats
until no allocation moves. The points it measures are exactly the full grid's (the same engine,
:func:`rdprune.core.sweep.sweep`); what it gives up is the guarantee: the DP cannot pick an amount
it never saw, so the allocation may differ from the full grid's where a curve bends between
measured points. ``tests/test_adaptive.py`` holds it to :data:`TOLERANCE` of the full-grid
allocation's summed distortion.

:func:`sampled_curves` adds calibration samples a group at a time and stops once every curve
point's standard error (from the spread of the groups' means) is below ``tol`` of its value. Its
curves are the mean over the samples used, the same numbers ``rd.curves`` gives on those
samples; what it gives up is the samples not used.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from ..util import state_hash
from . import allocators as A
from . import batch as B
from . import distortion as D
from . import masks as M
from .criteria import get as criterion_entry
from .criteria import orders as criterion_orders
from .curves import COLUMNS, GRID, curves, grid_amounts
from .sweep import sweep

TOLERANCE = 0.05  # the adaptive allocation's summed distortion, relative to the full grid's


def adaptive_curves(model: nn.Module, calib, targets, budget: str = "params", *,
                    grid: int = GRID, start: int = 11, distortion: str = "mse", exclude=(),
                    criterion: str = "magnitude", max_rounds: int = 20, batch: int = 256,
                    max_batch: int | None = None, progress: bool = False) -> pd.DataFrame:
    """RD curves measured where the RD allocations at ``targets`` (of ``budget``) need them: each
    free layer at ``start`` evenly spaced points of the ``grid``-point grid, then halfway points
    around each picked amount until no allocation moves (or ``max_rounds``). Same columns as
    :func:`rdprune.rd.curves`, fewer amounts per layer; give them to ``rp.allocate("rd", ...,
    curves=...)`` or ``rp.prune(..., curves=...)``. ``attrs``: ``approximate`` ("adaptive
    grid"), ``evaluations`` (layer × amount points measured), ``full_evaluations`` (the full
    grid's), ``rounds``. An approximation: see the module doc."""
    targets = [float(t) for t in np.atleast_1d(targets)]
    for t in targets:
        A.validate("rd", t, budget)
    if not 2 <= int(start) <= int(grid):
        raise ValueError(f"start must be between 2 and grid ({grid}), got {start}")
    calib = B.gather(calib)
    D.check_inputs(model, calib, grid, distortion)
    criterion_entry(criterion)
    model.eval()
    layers = A.Layers(model, budget, exclude)
    modules = M.prunable(model)
    names, amounts = list(layers.names), grid_amounts(grid)
    x_all = B.to(calib, next(model.parameters()).device)
    orders = criterion_orders(model, criterion, x_all, names)
    flops = M.layer_flops(model)
    weights_hash = state_hash(model)
    known: dict[str, dict[int, float]] = {k: {} for k in names}  # layer → {grid index: distortion}
    pending, tally = {}, dict(evaluations=0, rounds=0)

    def frame() -> pd.DataFrame:
        rows = [pd.DataFrame({"layer": k, "amount": amounts[sorted(known[k])],
                              "n_weights": modules[k].weight.numel(), "flops": flops[k],
                              "distortion": [known[k][i] for i in sorted(known[k])]})
                for k in names]
        out = pd.concat(rows, ignore_index=True)[COLUMNS]
        out.attrs.update(model_hash=weights_hash, distortion=distortion, grid=int(grid),
                         criterion=criterion)
        return out

    def around_picks() -> dict[str, list[int]]:
        """Grid points halfway between each picked amount and its measured neighbours."""
        new = {}  # one DP table per round answers every target
        solver = A.RDSolver(model, frame(), budget, exclude=exclude, min_target=min(targets),
                            max_states=A.DEFAULT_MAX_STATES)
        for t in targets:
            picked = solver.amounts(t)
            for k in names:
                n, have = modules[k].weight.numel(), np.array(sorted(known[k]))
                count = M.n_pruned(picked[k], n)
                j = int(have[np.argmin([abs(M.n_pruned(amounts[i], n) - count) for i in have])])
                lo, hi = have[have < j], have[have > j]
                for other in ([lo[-1]] if len(lo) else []) + ([hi[0]] if len(hi) else []):
                    if abs(other - j) > 1:
                        new.setdefault(k, []).append((other + j) // 2)
        return new

    def jobs():
        """The engine's work, round after round, in one sweep (one trace, one dense pass): the
        engine hands back a layer's values before it asks for the next job, so when a round's
        jobs are done every value is in ``known`` and the next round can be planned."""
        queue = {k: list(np.unique(np.round(np.linspace(0, grid - 1, int(start))).astype(int)))
                 for k in names}
        while queue:
            for name in names:
                idx = sorted(set(queue.get(name, ())) - set(known[name]))
                if not idx:
                    continue
                module = modules[name]
                already = int((~M.mask_of(module)).sum())
                counts = [M.n_pruned(amounts[i], module.weight.numel()) for i in idx]
                pending[name] = (idx, counts, already)
                tally["evaluations"] += sum(c > already for c in counts)
                order = orders[name] if orders else M.prune_order(module)
                yield name, module.weight, order, [c for c in counts if c > already]
            if tally["rounds"] == max_rounds:
                break
            tally["rounds"] += 1
            queue = around_picks()

    for name, values in sweep(model, x_all, jobs(), None, distortion, batch, max_batch,
                              progress, "RD curves (adaptive)"):
        idx, counts, already = pending[name]
        values = iter(values)
        known[name].update({i: (next(values) if c > already else 0.0)
                            for i, c in zip(idx, counts)})
    out = frame()
    out.attrs.update(approximate="adaptive grid", rounds=tally["rounds"],
                     evaluations=int(tally["evaluations"]),
                     full_evaluations=len(names) * (int(grid) - 1))
    return out



def sampled_curves(model: nn.Module, calib, grid: int = GRID, distortion: str = "mse", *,
                   tol: float = 0.1, group: int = 8, min_groups: int = 2, **options) -> pd.DataFrame:
    """RD curves on as few of ``calib``'s samples as their precision needs: groups of ``group``
    samples (in order), each measured with :func:`rdprune.rd.curves` (``options`` go there),
    until the standard error of every nonzero point's mean over the groups is at most ``tol``
    times that mean (at least ``min_groups`` groups), or every sample is used. ``attrs``:
    ``approximate`` ("fewer samples"), ``samples`` (used), ``of`` (given), ``max_rel_se``.
    For a measure reduced by a mean (``mse``, ``kl``); ``worst_case`` needs every sample."""
    calib = B.gather(calib)
    D.check_inputs(model, calib, grid, distortion)
    if D.check(distortion).reduce != "mean":
        raise ValueError(f"sampled_curves needs a distortion averaged over samples; "
                         f"{distortion!r} takes the {D.check(distortion).reduce}: use rd.curves")
    if tol < 0 or int(group) < 1 or int(min_groups) < 2:
        raise ValueError(f"tol must be >= 0, group >= 1 and min_groups >= 2 (got {tol}, "
                         f"{group}, {min_groups})")
    parts = B.split(calib, int(group))
    means, sizes, rel = [], [], np.inf
    for part in parts:
        c = curves(model, part, grid, distortion, **options)
        means.append(c["distortion"].to_numpy())
        sizes.append(B.size(part))
        if len(means) >= min_groups and sizes[-1] == sizes[0]:
            m = np.stack(means)
            mean, se = m.mean(0), m.std(0, ddof=1) / np.sqrt(len(m))
            nonzero = mean > 0
            rel = float((se[nonzero] / mean[nonzero]).max()) if nonzero.any() else 0.0
            if rel <= tol:
                break
    out = c.copy()
    out["distortion"] = np.average(np.stack(means), axis=0, weights=sizes)
    out.attrs.update(c.attrs)
    out.attrs.update(approximate="fewer samples", samples=int(sum(sizes)),
                     of=B.size(calib), max_rel_se=rel, cache=None)
    return out

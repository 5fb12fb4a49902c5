"""The one allocate → apply path: every mask or allocator-driven pruning in the package goes through
:func:`allocate_and_apply` (``rp.prune``, ``pipeline.run``'s rounds, ``pipeline.zero_shot``, the
CLI and the notebooks), so the rules live in one place (:func:`check`).

    net, info = allocate_and_apply(model, "rd", 0.9, calib=calib, criterion="wanda")

Steps: curves when the allocator needs them (measured with the criterion they will be applied
with), :func:`rdprune.allocate`, :func:`rdprune.rd.refine` when asked (RD only), then masks in the
criterion's removal order, or the allocator's own surgery for a structured one.
"""
from __future__ import annotations

import pandas as pd
from torch import nn

from . import allocators as A
from . import criteria as C
from . import masks as M
from .curves import GRID
from .curves import curves as rd_curves
from .refine import refine as rd_refine


def check(method: str, criterion: str = C.DEFAULT, refine: int = 0,
          curves: pd.DataFrame | None = None) -> A.Allocator:
    """The rules every path shares, checked before any work: a known allocator and criterion,
    no criterion for filter removal, refinement for RD and magnitude only, curves measured with
    the criterion asked for. Returns the allocator's registry entry."""
    entry = A.get(method)
    C.get(criterion)
    if criterion != C.DEFAULT and entry.structured:
        raise ValueError(f"{method!r} removes whole filters; criterion={criterion!r} applies to "
                         "mask methods")
    if refine and method != "rd":
        raise ValueError(f"refine applies to method 'rd' only (got {method!r}); set refine=0")
    if refine and criterion != C.DEFAULT:
        raise ValueError("refine measures magnitude-pruned neighbours; use refine=0 with "
                         f"criterion={criterion!r}")
    if curves is not None and not entry.structured \
            and curves.attrs.get("criterion", C.DEFAULT) != criterion:
        raise ValueError(f"these curves were measured with criterion "
                         f"{curves.attrs.get('criterion')!r}, not {criterion!r}; recompute them")
    return entry


def allocate_and_apply(model: nn.Module, method: str, target: float, budget: str = "params", *,
                       calib=None, curves: pd.DataFrame | None = None, grid: int | None = None,
                       distortion: str = "mse", criterion: str = C.DEFAULT, refine: int = 0,
                       exclude=(), output=None, head: str | None = None, orders=None,
                       inplace: bool = False,
                       progress: bool = False, **options):
    """Prune ``model`` (a copy, unless ``inplace``) with allocator ``method`` to ``target`` of
    ``budget``. ``curves``: given, or computed here when the allocator needs them (``grid``
    amounts, default :data:`rdprune.core.curves.GRID`; ``head``: measured without the model's
    unpruned Linear head, exactly, :func:`rdprune.rd.curves`); ``orders``: each layer's removal order
    when already known (:func:`rdprune.core.criteria.orders`, e.g. computed once for several
    targets); ``options`` go to the allocator. Returns ``(network, info)`` with ``amounts``,
    ``criterion`` and the ``curves`` used (None for allocators without)."""
    entry = check(method, criterion, refine, curves)
    if entry.needs_curves and curves is None:
        if calib is None:
            raise ValueError(f"method {method!r} computes curves: pass calib= (a batch of inputs)")
        if entry.curves is not None:
            curves = entry.curves(model, calib, grid=grid, distortion=distortion,
                                  progress=progress)
        else:
            curves = rd_curves(model, calib, grid=grid or GRID, distortion=distortion,
                               progress=progress, criterion=criterion, output=output, head=head)
    extra = {"calib": calib} if entry.needs_calib else {}
    amounts = A.allocate(method, model, target, budget, curves=curves, exclude=exclude,
                         **extra, **options)
    if refine:
        refined = rd_refine(model, calib, amounts, target, budget, exclude=exclude,
                            grid=int(curves["amount"].nunique()), distortion=distortion,
                            max_iter=refine, progress=progress)
        amounts = A.Allocation(refined, getattr(amounts, "passes", 0.0) + refined.passes)
    info = {"amounts": amounts, "criterion": criterion, "curves": curves}
    if entry.structured:
        return entry.apply(model, amounts), info
    net = model if inplace else M.clone(model)
    if orders is None:
        orders = C.orders(model, criterion, calib, list(amounts))
    return M.apply(net, amounts, orders=orders), info

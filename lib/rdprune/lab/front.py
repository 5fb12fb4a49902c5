"""One front door for every pruning method, and one evaluation helper.

    net, record = rp.prune(model, "rd", 0.5, budget="flops", calib=calib)
    net, record = rp.prune(model, "HBGS-B", 0.5, budget="flops", calib=selection, k=0.25)
    net, record = rp.prune(model, "jointpruning", 0.5, budget="flops", calib=calib,
                           train_loader=loader)
    row = rp.evaluate_pruned(net, model, test_loader, calib=calib, finetune_loader=loader,
                             finetune_steps=40)

``target`` is always the fraction *removed* (of weights for ``budget="params"``, of FLOPs for
``"flops"``). Every registered allocator (:func:`rdprune.allocation.register_allocator`: the six
mask allocators, ``rd``, ``rd_filter`` and a user's own) goes through one path: curves when it
needs them, :func:`rdprune.allocate`, then masks or its own surgery. Methods that are not
per-layer allocations (HBGS and its variants, JointPruning, the width baselines) are registered
here with :func:`register_method`. The record says what was achieved, counted on the pruned
network itself (:func:`rdprune.masks.count`: masked weights as removed and their FLOPs
scaled by density, the RD authors' accounting; channel removal as real).
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Callable

import torch
from torch import nn

from ..core import allocators as A
from ..core import batch as B
from ..core import masks as M
from ..core.loops import evaluate, fine_tune, recalibrate_bn
from ..core.pruning import allocate_and_apply
from ..structured import hbgs as H
from ..structured import jointpruning as J
from ..structured import surgery as S
from ..util import check_choice, check_target

_METHODS: dict[str, Callable] = {}


def register_method(name: str, fn: Callable) -> None:
    """Make ``name`` a method of :func:`prune`: ``fn(model, target, budget, calib, **options)``
    returns ``(pruned network, details)``, details a dict (e.g. ``{"trace": DataFrame}``)."""
    if not isinstance(name, str) or not name or not callable(fn):
        raise ValueError("register_method needs a name and a callable")
    if name in A.names():
        raise ValueError(f"{name!r} is an allocator already (rdprune.allocation)")
    _METHODS[name] = fn


def methods() -> list[str]:
    """Everything :func:`prune` accepts: the registered allocators, then the other methods."""
    return A.names() + list(_METHODS)


def prune(model: nn.Module, method: str, target: float, budget: str = "params", *,
          calib: torch.Tensor | None = None, **options):
    """Prune a copy of ``model`` with ``method`` to ``target`` (the fraction of ``budget``
    removed). ``calib``: the calibration (or, for HBGS, selection) inputs the method reads.
    Returns ``(pruned network, record)``; the record holds ``method, target, budget,
    params_reduction, flops_reduction, seconds`` and ``amounts`` (allocators) or
    ``kept_channels`` (physically pruned networks), plus what the method reports (a trace).
    ``train_steps``: training steps the method itself spent on the network's weights (HBGS's
    fine-tunes between rounds, JointPruning's supernet; 0 for the allocators), so that a
    comparison can give every method the same total (:func:`rdprune.lab.experiments.final_steps`)."""
    check_choice("method", method, methods())
    if method in _METHODS and method in A.names():  # an allocator registered after the method
        raise ValueError(f"{method!r} is both a method of rp.prune and an allocator "
                         "(rdprune.allocation.register_allocator); unregister one of them")
    check_target(target, "weights" if budget == "params" else "FLOPs")
    check_choice("budget", budget, A.BUDGETS)
    example = None
    if calib is not None and method not in _METHODS:  # allocators read any batch
        calib = B.gather(calib)
        B.check(calib)  # a batch we cannot read fails here, before any work
        B.check_tokens(model, calib)
    if calib is not None and (method not in _METHODS or isinstance(calib, torch.Tensor)
                              and len(calib)):
        example = B.take(calib, 0, 1)
        M.remember(model, calib)  # FLOPs of a model without input_size
    tic = time.perf_counter()
    if method in _METHODS:
        net, details = _METHODS[method](model, float(target), budget, calib, **options)
    else:
        net, details = _allocated(model, method, float(target), budget, calib, **options)
    seconds = time.perf_counter() - tic
    total = M.architecture_flops(model, example)
    before = M.count(model, total=total)
    # a mask method's copy keeps the architecture: its count needs no second FLOPs pass
    after = M.count(net, example, total=total if "amounts" in details
                    and not A.get(method).structured else None)
    record = dict(method=method, target=float(target), budget=budget,
                  params_reduction=1 - after["params"] / before["params"],
                  flops_reduction=1 - after["flops"] / before["flops"],
                  params=after["params"], flops=after["flops"], seconds=seconds,
                  **{"train_steps": 0, **details})
    if "amounts" not in record:
        record["kept_channels"] = S.widths(net)
    return net, record


def _allocated(model, method, target, budget, calib, **options):
    """Every registered allocator, through the one allocate → apply path."""
    net, info = allocate_and_apply(model, method, target, budget, calib=calib, **options)
    return net, {"amounts": info["amounts"]} if A.get(method).structured else \
        {"amounts": info["amounts"], "criterion": info["criterion"]}


# ----------------------------------------------------------------------------- other methods
def _hbgs(variant):
    def run(model, target, budget, calib, *, selection=None, k=5, finetune_steps=0,
            train_loader=None, progress=False, **options):
        data = selection if selection is not None else calib
        if data is None:
            raise ValueError(f"{variant} scores candidates on held-out training inputs: pass "
                             "calib= (or selection=), e.g. rp.data.selection_split(...)[0]")
        net, trace = H.prune(model, data, target, budget, k=k, finetune_steps=finetune_steps,
                             train_loader=train_loader, progress=progress,
                             **H.METHODS[variant], **options)
        return net, {"trace": trace, "train_steps": trace.attrs["train_steps"]}
    return run


def _jointpruning(model, target, budget, calib, *, train_loader=None, finish="inherit",
                  progress=False, **options):
    if budget != "flops":
        raise ValueError("JointPruning searches under a FLOPs constraint; use budget='flops'")
    if train_loader is None:
        raise ValueError("JointPruning trains a supernet: pass train_loader= (training batches)")
    check_choice("finish", finish, ("inherit", "build"))
    vector, trace, supernet = J.search(model, train_loader, 1 - target, progress=progress,
                                       return_supernet=True, **options)
    net = J.inherit(supernet, vector, calib) if finish == "inherit" else J.build(model, vector)
    return net, {"trace": trace, "vector": vector,
                 "train_steps": options.get("supernet_steps", _SUPERNET_STEPS)}


_SUPERNET_STEPS = inspect.signature(J.search).parameters["supernet_steps"].default


# the width baselines are one search over a closed form: a progress flag (which every method
# takes, so callers need not tell methods apart) has nothing to show
def _uniform_width(model, target, budget, calib, *, progress=False, **options):
    return S.uniform_width(model, target, budget, example=_one(calib), **options), {}


def _l1_filter(model, target, budget, calib, *, scope="global", progress=False, **options):
    return S.l1_filters(model, target, budget, scope=scope, example=_one(calib), **options), {}


def _one(calib):
    return calib[:1] if isinstance(calib, torch.Tensor) and len(calib) else None


for _variant in H.METHODS:
    register_method(_variant, _hbgs(_variant))
register_method("jointpruning", _jointpruning)
register_method("uniform_width", _uniform_width)
register_method("l1_filter", _l1_filter)


# ----------------------------------------------------------------------------- evaluation
def evaluate_pruned(net: nn.Module, dense: nn.Module, test_loader, *,
                    calib: torch.Tensor | None = None, finetune_loader=None,
                    finetune_steps: int = 0, teacher: nn.Module | None = None, val=None,
                    lr: float = 3e-4, dev="auto", example: torch.Tensor | None = None,
                    progress: bool = False):
    """Count → evaluate → BN re-estimation → fine-tune → evaluate, on copies of ``net``.

    Returns ``(row, tuned network)``: ``row`` has params, flops, params_reduction and
    flops_reduction against ``dense``, ``top1_before`` (straight after pruning), ``top1_recal``
    (BatchNorm statistics re-estimated on ``calib``; NaN without ``calib``) and ``top1_after``.
    The fine-tune (``finetune_steps`` of :func:`rdprune.train.fine_tune` at ``lr`` on
    ``finetune_loader``, KL distillation from ``teacher``, default ``dense``) starts from the
    re-estimated network and re-estimates the statistics again at its end, so that they belong to
    the final weights. With ``val=(inputs, labels)`` (held-out *training* images) the fine-tuned
    network is kept only if its top-1 there is at least the starting network's, else the start is
    returned: fine-tuning never makes a network worse on data it was not trained on (row:
    ``val_before``, ``val_after``, ``finetune_kept``)."""
    example = example if example is not None else _one(calib)
    full, c = S.count(dense, example), S.count(net, example)
    row = dict(params=int(c["params"]), flops=float(c["flops"]),
               params_reduction=1 - c["params"] / full["params"],
               flops_reduction=1 - c["flops"] / full["flops"],
               top1_before=evaluate(net, test_loader)["top1"], top1_recal=float("nan"))
    start = net
    if calib is not None:
        start = recalibrate_bn(M.clone(net), calib)
        row["top1_recal"] = evaluate(start, test_loader)["top1"]
    tuned = start
    if finetune_steps:
        if finetune_loader is None:
            raise ValueError("finetune_steps > 0 needs finetune_loader= (training batches)")
        tuned = fine_tune(M.clone(start), finetune_loader, finetune_steps, lr=lr,
                          teacher=dense if teacher is None else teacher, dev=dev,
                          progress=progress)
        if calib is not None:
            recalibrate_bn(tuned, calib)
        if val is not None:
            loader = [(val[0], val[1])]
            row["val_before"] = evaluate(start, loader)["top1"]
            row["val_after"] = evaluate(tuned, loader)["top1"]
            row["finetune_kept"] = row["val_after"] >= row["val_before"]
            tuned = tuned if row["finetune_kept"] else start
    last = "top1_recal" if calib is not None else "top1_before"
    row["top1_after"] = evaluate(tuned, test_loader)["top1"] if tuned is not start else row[last]
    return row, tuned

"""The comparison harness of notebooks 05 and 06: prune a dense model with several methods to one
target, then fine-tune every result for **the same total number of training steps**.

Some methods train while they prune (HBGS and its variants fine-tune between rounds, as the paper
does; JointPruning trains a supernet whose weights the result inherits); the others prune a
trained network and stop. :func:`final_steps` gives each method the final fine-tune that brings it
to the same total: the most steps any method trained inside its pruning, plus the final budget.
Every row records ``round_steps`` (inside the method), ``final_steps`` and ``train_steps`` (their
sum, equal in every row of one comparison).

    pruned, notes = experiments.prune_each(dense, ["HBGS-B", "l1_filter"], 0.5, "flops",
                                           calib=calib, options={"HBGS-B": dict(k=0.25)})
    rows, tuned = experiments.evaluate_each(pruned, dense, test_loader, finetune_steps=40,
                                            finetune_loader=loader, calib=calib)
"""
from __future__ import annotations

from torch import nn

from ..util import NotApplicable
from .front import evaluate_pruned, prune


def final_steps(records: dict[str, dict], finetune_steps: int) -> dict[str, int]:
    """Each method's final fine-tune, so that all train the same total: the most ``train_steps``
    any record holds (steps spent inside the method) plus ``finetune_steps``, less its own."""
    if finetune_steps < 0:
        raise ValueError(f"finetune_steps must be >= 0, got {finetune_steps}")
    inside = {m: int(r.get("train_steps", 0)) for m, r in records.items()}
    total = max(inside.values(), default=0) + int(finetune_steps)
    return {m: total - s for m, s in inside.items()}


def prune_each(dense: nn.Module, methods, target: float, budget: str, *, calib=None,
               options: dict | None = None, progress: bool = False):
    """``rp.prune`` with each method (``options[method]``: its keyword arguments). Returns
    ``({method: (network, record)}, notes)``; a method that cannot prune this model
    (:class:`rdprune.NotApplicable`) gives a note ``{method: reason}`` instead of a network."""
    pruned, notes = {}, {}
    for method in methods:
        try:
            pruned[method] = prune(dense, method, target, budget, calib=calib, progress=progress,
                                   **(options or {}).get(method, {}))
        except NotApplicable as e:
            notes[method] = f"not applicable: {e.reason}"
    return pruned, notes


def evaluate_each(pruned: dict, dense: nn.Module, test_loader, *, finetune_steps: int,
                  finetune_loader=None, calib=None, val=None, dev="auto",
                  progress: bool = False):
    """:func:`rdprune.evaluate_pruned` on every ``{method: (network, record)}`` with the equal
    training budget of :func:`final_steps`. Returns ``(rows, {method: tuned network})``; each row
    adds ``method``, ``round_steps``, ``final_steps``, ``train_steps`` and ``prune_seconds``."""
    finals = final_steps({m: rec for m, (_, rec) in pruned.items()}, finetune_steps)
    rows, tuned = [], {}
    for method, (net, rec) in pruned.items():
        row, tuned[method] = evaluate_pruned(net, dense, test_loader, calib=calib,
                                             finetune_loader=finetune_loader,
                                             finetune_steps=finals[method], val=val, dev=dev,
                                             progress=progress)
        inside = int(rec.get("train_steps", 0))
        rows.append(dict(method=method, **row, round_steps=inside, final_steps=finals[method],
                         train_steps=inside + finals[method],
                         prune_seconds=float(rec.get("seconds", float("nan")))))
    return rows, tuned

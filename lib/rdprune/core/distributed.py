"""RD curves across the ranks of a ``torch.distributed`` process group (``torchrun``, or a
user's own ``init_process_group``): PyTorch's own engine, gloo on CPUs, NCCL on GPUs.

When a group is initialised, :func:`rdprune.rd.curves` checks that every rank holds the same
model and calibration batch (a hash of each), takes rank 0's view of which layers the cache
still lacks, shares those out by estimated cost (:func:`costs`: the multiply-adds a layer's
curve re-runs, its downstream FLOPs × the amounts still to compute, not the number of layers;
greedy longest-first onto the least-loaded rank, :func:`share`), and every rank computes and
caches its own layers, then gathers the others' values: each rank returns the same complete
DataFrame. The per-layer cache is written as each layer finishes, so a rank that dies loses only
its unfinished layers and a rerun computes just those. Without a group all of this is a no-op.
"""
from __future__ import annotations

import hashlib

import numpy as np
from torch import nn

from ..util import state_hash
from . import batch as B
from . import masks as M


def world() -> tuple[int, int]:
    """(rank, number of ranks); (0, 1) without an initialised process group."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    import torch.distributed as dist
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def from_rank0(obj):
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(model: nn.Module, calib, what: dict) -> None:
    """ValueError on every rank, before any work, unless all ranks hold the same model weights,
    calibration batch and settings ``what``; the message names what differs."""
    mine = {"model weights and masks": state_hash(model),
            "calibration batch": hashlib.sha256(B.tobytes(calib)).hexdigest()[:16],
            **{k: repr(v) for k, v in what.items()}}
    everyone = gather(mine)
    differ = [k for k in mine if len({e[k] for e in everyone}) > 1]
    if differ:
        raise ValueError(f"the ranks disagree on the {', '.join(differ)}; every rank must build "
                         "the same model and calibration set (same seed, same files)")


def costs(model: nn.Module, names, todo_amounts: dict[str, int], traced) -> dict[str, float]:
    """Estimated cost of each layer's curve: (its FLOPs + the prunable FLOPs downstream of it)
    × the amounts still to compute; the whole network's FLOPs per amount when there is no trace
    (``traced`` is a :class:`rdprune.core.downstream.Downstream` or None)."""
    flops = M.layer_flops(model)
    total = float(sum(flops.values())) or 1.0
    out = {}
    for name in names:
        if traced is not None and name in traced.layer_node:
            cone = {n.target for n in traced.cone(name) if n.op == "call_module"}
            per = flops.get(name, 0) + sum(v for k, v in flops.items() if k in cone)
        else:
            per = total
        out[name] = float(max(per, 1)) * max(1, todo_amounts.get(name, 1))
    return out


def share(cost: dict[str, float], ranks: int) -> list[list[str]]:
    """Layers per rank: longest first onto the least-loaded rank (ties: the lower rank, so every
    rank computes the same split); each rank's list keeps the given layer order."""
    load, parts = np.zeros(ranks), [[] for _ in range(ranks)]
    for name in sorted(cost, key=lambda k: (-cost[k], list(cost).index(k))):
        r = int(np.argmin(load))
        parts[r].append(name)
        load[r] += cost[name]
    order = {k: i for i, k in enumerate(cost)}
    return [sorted(p, key=order.__getitem__) for p in parts]


def by_count(names, ranks: int) -> list[list[str]]:
    """The naive split (equal numbers of layers, in order), for comparison in the benchmark."""
    return [list(names[i::ranks]) for i in range(ranks)]

"""Block-local RD curves: an approximation, opt-in (``rd.local_curves``).

RD measures a layer's distortion at the model's output, so every point of every curve pays for
the rest of the network after the layer (and, for a language model, the vocabulary-sized head).
:func:`local_curves` measures each layer inside a *block* (a transformer block, a residual
block) at the block's own output instead: the block runs on its dense input, captured once, so a
point costs at most one block. Probes bring the curves to the output's scale.
``scale="block"`` (default): one probe per block, every layer of it pruned at ``probe`` (0.5) by
the criterion; the ratio of the output distortion to the block-output MSE of that change
multiplies the block's curves. ``scale="layer"``: each layer measured exactly at the ``probe``
amounts (0.5, or a list), through the curve engine, its curve multiplied by the ratio of those
values to its block-local ones (interpolated between probes): closer, but one output pass per
layer and probe, which costs about as much as the exact curves where the engine stacks amounts
(traced CNNs and ViTs); it pays only where each amount is its own pass (replay: GPT-2). Layers
outside every block (a stem, a classifier) get exact curves.

What it gives up: the gain from a block's output to the model's output is read at one amount,
while the true gain depends on the change (how much; with ``scale="block"`` also which layer).
Where the rest of the network is a fixed linear map times a scalar, the curves are exact
(``tests/test_local.py``). ``tests/test_local.py`` holds the allocation's measured distortion to
:data:`TOLERANCE` of the exact curves' allocation on the zoo's ViT and GPT-2 (on ResNet-20 it
does not hold: one gain per residual block misses how its convolutions differ; nor on
torchvision's ViT-B/16 at 224 with random weights, ``benchmarks/bench_scale.py --paths agree``);
``benchmarks/bench_local.py`` measures the agreement and the cost.
"""
from __future__ import annotations

import copy
import sys
import warnings

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..util import check_choice, state_hash
from . import batch as B
from . import distortion as D
from . import masks as M
from .criteria import orders as criterion_orders
from .curves import COLUMNS, GRID, curves, swapped, without_head
from .sweep import sweep, variant

# the allocation's measured distortion may be up to (1 + TOLERANCE) × the exact curves'
# allocation's: a coarse approximation (benchmarks/bench_local.py measures it)
TOLERANCE = 1.0
PROBE = 0.5       # the amount a layer (or every layer of a block) is pruned at to read its scale
SCALES = ("block", "layer")  # one probe per block, or exact points per layer


def _layer_scales(body, calib, unscaled, orders, probes, kind, batch, max_batch, progress):
    """Per layer, a factor per grid amount: its output distortion measured exactly at the grid
    amounts nearest ``probes`` (one output pass each, through the curve engine; those that prune
    more than the layer already has) divided by its block-local values there, interpolated
    linearly between probes and held beyond them; all 1 for a layer with no such amount."""
    modules, scales, at = M.prunable(body), {}, {}
    for k, g in unscaled.items():
        amounts, dist = g["amount"].to_numpy(), g["distortion"].to_numpy()
        n, already = modules[k].weight.numel(), int((~M.mask_of(modules[k])).sum())
        near = sorted({int(np.argmin(np.abs(amounts - p))) for p in probes})
        at[k] = [i for i in near if M.n_pruned(amounts[i], n) > already and dist[i] > 0]
        if not at[k]:
            scales[k] = np.ones(len(amounts))

    def jobs():
        for k, idx in at.items():
            if idx:
                module, amounts = modules[k], unscaled[k]["amount"].to_numpy()
                order = orders[k] if orders[k] is not None else M.prune_order(module)
                yield k, module.weight, order, [M.n_pruned(amounts[i], module.weight.numel())
                                                for i in idx]
    x_all = B.to(calib, next(body.parameters()).device)
    for k, values in sweep(body, x_all, jobs(), sum(map(bool, at.values())), kind, batch,
                           max_batch, progress, "RD probes"):
        amounts, dist = unscaled[k]["amount"].to_numpy(), unscaled[k]["distortion"].to_numpy()
        ratio = np.asarray(values, dtype=float) / dist[at[k]]
        scales[k] = np.interp(amounts, amounts[at[k]], ratio)
    return scales


def default_blocks(model: nn.Module) -> list[str]:
    """The children of each ``nn.ModuleList`` or ``nn.Sequential`` that hold prunable layers in
    at least two children, none of which is itself a prunable layer (a transformer's blocks, a
    ResNet stage's residual blocks); outermost first, nothing inside a block found."""
    layers = M.prunable(model)
    found: list[str] = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or \
                any(name.startswith(b + ".") for b in found):
            continue
        prefix = f"{name}." if name else ""
        kids = [prefix + k for k, c in m.named_children()
                if any(n == prefix + k or n.startswith(prefix + k + ".") for n in layers)]
        if len(kids) >= 2 and not any(k in layers for k in kids):
            found += kids
    return found


class _Bound(nn.Module):
    """A block called on its captured per-sample inputs (``xs``, in the order of ``per``) with
    its other arguments (a shared mask, position ids, flags: ``consts``) bound; ``layout`` is
    the block's call, ``("arg", position)`` or ``("kw", name)`` per argument."""

    def __init__(self, block: nn.Module, layout: list, per: list, consts: dict):
        super().__init__()
        self.block, self.layout, self.per, self.consts = block, layout, per, consts

    def forward(self, *xs):
        given = dict(zip(self.per, xs))
        values = [given[key] if key in given else self.consts[key] for key in self.layout]
        args = [v for (where, _), v in zip(self.layout, values) if where == "arg"]
        kwargs = {key: v for (where, key), v in zip(self.layout, values) if where == "kw"}
        return self.block(*args, **kwargs)


def _capture(model: nn.Module, chunks: list, blocks: list[str]) -> tuple[dict, list]:
    """(each block's inputs on the calibration ``chunks`` as ``(layout, per-sample tensors,
    constants)``, the model's output per chunk), from one pass of the model per chunk. An input
    is per-sample when it is a tensor whose first axis has the first chunk's length; everything
    else is bound as a constant."""
    got: dict[str, list] = {b: [] for b in blocks}

    def hook(name):
        def pre(m, args, kwargs):
            got[name].append((args, kwargs))
        return pre
    handles = [model.get_submodule(b).register_forward_pre_hook(hook(b), with_kwargs=True)
               for b in blocks]
    try:
        with torch.no_grad():
            outputs = [B.call(model, x) for x in chunks]
    finally:
        for h in handles:
            h.remove()
    out, n0 = {}, B.size(chunks[0])
    for b, calls in got.items():
        if len(calls) != len(chunks):
            raise ValueError(f"block {b!r} ran {len(calls)} times in {len(chunks)} forward "
                             "passes; a block must run once per pass (name another block)")
        args, kwargs = calls[0]
        items = [(("arg", i), v) for i, v in enumerate(args)] + \
                [(("kw", k), v) for k, v in kwargs.items()]
        per = [key for key, v in items if isinstance(v, torch.Tensor) and v.dim() and
               len(v) == n0]
        consts = {key: _stateless(v) for key, v in items if key not in per}
        if not per:
            raise ValueError(f"block {b!r} takes no per-sample tensor; name another block")
        stacked = []
        for key in per:
            parts = [(a[key[1]] if key[0] == "arg" else kw[key[1]]) for a, kw in calls]
            stacked.append(torch.cat([p.detach() for p in parts]))
        out[b] = ([key for key, _ in items], per, consts, tuple(stacked))
    return out, outputs


def _stateless(value):
    """A constant argument as a block may be called with it again and again: a Hugging Face KV
    cache, which every call would grow, becomes None (no cache)."""
    cache = getattr(sys.modules.get("transformers.cache_utils"), "Cache", None)
    return None if cache is not None and isinstance(value, cache) else value


def _bound(block: nn.Module, captured) -> tuple[nn.Module, object, str]:
    """(a module on per-sample inputs, its calibration batch, the prefix of its layer names)."""
    layout, per, consts, xs = captured
    if layout == [("arg", 0)] and per == layout:
        return block, xs[0], ""
    return _Bound(block, layout, per, consts), xs, "block."


def _pruned(block: nn.Module, names: list[str], orders, amount: float) -> nn.Module:
    """A copy of ``block`` with every layer of ``names`` pruned at ``amount``."""
    twin = copy.deepcopy(block)
    layers = M.prunable(twin)
    with torch.no_grad():
        for k in names:
            w = layers[k].weight
            order = orders.get(k) if orders else None
            order = M.prune_order(layers[k]) if order is None else order
            w.copy_(variant(w, w, order, M.n_pruned(amount, w.numel())))
    return twin


def local_curves(model: nn.Module, calib, grid: int = GRID, distortion: str = "mse", *,
                 blocks: list[str] | None = None, probe=PROBE, scale: str = "block",
                 criterion: str = "magnitude", head: str | None = None, batch: int = 256,
                 max_batch: int | None = None, cache: bool = True,
                 progress: bool = False) -> pd.DataFrame:
    """RD curves with each layer of a block measured at the block's output and scaled by the
    block's probe (module doc), every other layer exact. Same columns as
    :func:`rdprune.rd.curves`; give them to ``rp.allocate("rd", ..., curves=...)``. ``blocks``:
    module names (default :func:`default_blocks`); ``head``: as in :func:`rdprune.rd.curves`,
    for the probes and the exact curves. ``attrs``: ``approximate`` ("block-local"),
    ``scales`` (layer → its factor per grid amount: output per block-output distortion),
    ``blocks``, ``scale``, ``probe``, ``paths``
    (how each layer's curve was measured, as in :func:`rdprune.rd.curves`). An approximation:
    see the module doc."""
    calib = B.gather(calib)
    D.check_inputs(model, calib, grid, distortion)
    probes = [float(p) for p in np.atleast_1d(probe)]
    if not probes or not all(0 < p < 1 for p in probes):
        raise ValueError(f"probe must be an amount in (0, 1) or a list of them, got {probe}")
    check_choice("scale", scale, SCALES)
    if scale == "block" and len(probes) > 1:
        raise ValueError("scale='block' reads one probe per block: give one probe amount")
    M.remember(model, calib)  # FLOPs of a model without input_size come from this sample
    layers = M.prunable(model)
    blocks = default_blocks(model) if blocks is None else list(blocks)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no blocks (module lists whose children "
                         "hold prunable layers): name them with blocks=[...], or use rd.curves")
    inside = {}
    for b in blocks:
        try:
            model.get_submodule(b)
        except AttributeError as e:
            raise ValueError(f"block {b!r} is not a submodule of {type(model).__name__}") from e
        mine = [k for k in layers if k.startswith(b + ".")]
        if not mine:
            raise ValueError(f"block {b!r} holds no prunable layer")
        for k in mine:
            if k in inside:
                raise ValueError(f"blocks {inside[k]!r} and {b!r} overlap (both hold {k!r})")
            inside[k] = b
    model.eval()
    kw = dict(grid=grid, criterion=criterion, batch=batch, max_batch=max_batch, cache=cache,
              progress=progress)
    outside = [k for k in layers if k not in inside]
    frames = {}
    if outside:
        exact = curves(model, calib, distortion=distortion, layers=outside, head=head, **kw)
        frames.update({k: g for k, g in exact.groupby("layer", sort=False)})
    body, kind = (model, distortion) if head is None else without_head(model, head, distortion)
    scales, paths = {}, dict(exact.attrs["paths"]) if outside else {}
    unscaled, orders = {}, {}  # layer → its block-local curve; its removal order (or None)
    try:
        chunks = B.split(calib, batch)  # one pass of the body (no head): inputs and outputs
        captured_all, y_refs = _capture(body, chunks, blocks)
        for b, captured in captured_all.items():
            block = model.get_submodule(b)
            unit, x_local, prefix = _bound(block, captured)
            names = [k[len(b) + 1:] for k in layers if inside.get(k) == b]
            with warnings.catch_warnings():  # the paths are in attrs; FLOPs are the model's
                warnings.simplefilter("ignore")
                local = curves(unit, x_local, distortion="mse",
                               layers=[prefix + k for k in names], **kw)
            found = criterion_orders(unit, criterion, x_local, [prefix + k for k in names])
            for k in names:
                g = local[local.layer == prefix + k].sort_values("amount").copy()
                g["layer"] = f"{b}.{k}"
                unscaled[f"{b}.{k}"] = g
                orders[f"{b}.{k}"] = found[prefix + k] if found else None
                paths[f"{b}.{k}"] = local.attrs["paths"][prefix + k]
            if scale == "block":
                twin = _pruned(block, names, {k: orders[f"{b}.{k}"] for k in names}, probes[0])
                out = D.measure(y_refs, swapped(body, b, twin), chunks, kind)
                local_chunks = B.split(x_local, batch)
                with torch.no_grad():
                    refs = [B.call(unit, x) for x in local_chunks]
                near = D.measure(refs, swapped(unit, "block", twin) if prefix else twin,
                                 local_chunks, "mse")
                factor = out / near if near > 0 else 1.0
                scales.update({f"{b}.{k}": np.full(len(unscaled[f"{b}.{k}"]), factor)
                               for k in names})
        if scale == "layer":
            scales = _layer_scales(body, calib, unscaled, orders, probes, kind, batch,
                                   max_batch, progress)
    finally:
        if head is not None:
            D.unregister_distortion(kind)
    for k, g in unscaled.items():
        g["distortion"] = g["distortion"] * scales[k]
        frames[k] = g
    flops = M.layer_flops(model)
    out = pd.concat([frames[k] for k in layers], ignore_index=True)[COLUMNS]
    out["flops"] = out["layer"].map(flops)
    out.attrs.update(model_hash=state_hash(model), distortion=distortion, grid=int(grid),
                     criterion=criterion, approximate="block-local", blocks=blocks, scale=scale,
                     scales=scales, probe=probes, head=head, paths=paths)
    return out

"""Rate–distortion curves and the additivity check (Xu et al., ICCV 2023).

``D_l(a)``: output distortion when only layer ``l`` is pruned (by magnitude) to absolute amount
``a``, measured against the current model's logits on a calibration tensor, with any measure of
:mod:`rdprune.core.distortion` (``mse`` by default, ``worst_case``, or one a user registered).

Fast path (default): the dense network runs once per calibration chunk and keeps every
intermediate value; for each layer only the downstream part is recomputed
(:mod:`rdprune.core.downstream`), several amounts at once (:func:`sweep`). It degrades per layer,
not per model: a layer the trace cannot perturb alone (used through a functional call, shared),
or every layer of a model ``torch.fx`` cannot trace or whose trace fails when run, is measured by
full forward passes instead, with one warning naming those layers; ``curves.attrs["paths"]``
says which layer went which way. Under ``torchrun`` (an initialised process group) the layers
are shared out across ranks by cost (:mod:`rdprune.core.distributed`). Amounts at or below a
layer's current sparsity change nothing: their distortion is exactly 0 and they are not computed.
The reference path runs one full forward pass per (layer, amount), as the authors do, for tests
and benchmarks. On the CPU both paths run a channels-last copy of a conv net (about 20 % faster
per pass, results identical between the two paths on our zoo).

Curves are cached under ``data/curves/<key>/`` (one CSV per layer, written atomically, so an
interrupted run resumes from the layers already done), keyed by a hash of the weights and masks,
the calibration tensor, the grid, the distortion measure and the method.
"""
from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..util import atomic_write_bytes, check_choice, data_dir, state_hash
from . import batch as B
from . import distortion as D
from . import distributed as DI
from . import masks as M
from .criteria import get as criterion_entry
from .criteria import orders as criterion_orders
from .downstream import Downstream, Untraceable
from .sweep import (
    fast_curves,
    pruned_counts,
    reference_curves,
)

GRID = 101  # amounts per layer unless told otherwise: 0, 0.01, ..., 1, the RD authors' grid
PATHS = ("fast", "reference")  # how curves are computed (same numbers, different cost)
COLUMNS = ["layer", "amount", "n_weights", "flops", "distortion"]
_VERSION = 3  # bump when the computation changes, so old caches are not reused


def grid_amounts(grid: int) -> np.ndarray:
    """``grid`` evenly spaced amounts from 0 to 1 (101 → 0, 0.01, …, 1)."""
    return np.round(np.linspace(0.0, 1.0, int(grid)), 12)


def _cache_dir(model, weights_hash, calib, grid, distortion, method, layers) -> Path:
    h = hashlib.sha256()
    h.update(json.dumps([_VERSION, getattr(model, "arch", type(model).__name__), grid,
                         D.identity(distortion), method, layers]).encode())
    h.update(weights_hash.encode())
    h.update(B.tobytes(calib))
    return data_dir() / "curves" / h.hexdigest()[:20]


def _read_layer(path: Path, name: str, n_amounts: int) -> pd.DataFrame | None:
    try:
        df = pd.read_csv(path)
        ok = (list(df.columns) == COLUMNS and len(df) == n_amounts
              and (df["layer"] == name).all() and np.isfinite(df["distortion"]).all())
        if ok:
            return df
        problem = "unexpected contents"
    except Exception as e:
        problem = f"{type(e).__name__}: {e}"
    warnings.warn(f"curve cache {path} is corrupt ({problem}); recomputing that layer")
    return None


def curves(model: nn.Module, calib: torch.Tensor, grid: int = GRID, distortion: str = "mse",
           layers: list[str] | None = None, *, method: str = "fast", batch: int = 256,
           max_batch: int | None = None, cache: bool = True, progress: bool = True,
           criterion: str = "magnitude", output=None, head: str | None = None) -> pd.DataFrame:
    """Per-layer rate–distortion curves as a long-form DataFrame with columns
    ``layer, amount, n_weights, flops, distortion`` (one row per layer and grid amount).

    ``batch`` calibration samples go through the network at a time; up to ``max_batch``
    samples (amounts × batch) through a layer's downstream part at once. Default
    (:func:`rdprune.core.sweep.default_max_batch`): on a CPU 256 samples (on 2 cores the time
    per sample is flat up to ~256 and grows beyond), fewer for images larger than 3 × 32 × 32
    (five at 224 × 224); 4096 on a GPU, where a pass of a small network costs about the same whatever
    the batch (the GPU default is not benchmarked yet). ``criterion`` picks which weights a layer loses
    first (:mod:`rdprune.core.criteria`: ``magnitude``, the paper's, or ``wanda``); the curves
    are measured, cached and labelled (``attrs["criterion"]``) under it. ``output`` picks what
    is compared in the model's output (:func:`rdprune.core.distortion.reading`; default: the
    tensor, a tuple's first item or ``.logits``).

    ``head``: the name of the model's last layer, a Linear that is not pruned (a language model's
    tied ``lm_head``). The curves are then measured on its input h, with the logits' squared error
    computed exactly as Δhᵀ (WᵀW) Δh / V (:func:`without_head`): the same numbers without the
    vocabulary-sized matmul after every pruned layer. For ``mse`` and ``worst_case``; KL needs the
    whole softmax and has no such identity."""
    if head is None:
        with D.reading(output):
            return _curves(model, calib, grid, distortion, layers, method, batch, max_batch,
                           cache, progress, criterion, output)
    body, kind = without_head(model, head, distortion)
    try:
        with D.reading(output):  # keyed and labelled by the whole model, head included
            out = _curves(body, calib, grid, kind, layers, method, batch, max_batch, cache,
                          progress, criterion, output, weights_hash=state_hash(model))
    finally:
        D.unregister_distortion(kind)  # it holds this model's Gram matrix
    out.attrs.update(distortion=distortion, head=head)
    return out


def swapped(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """A shallow copy of ``root`` whose submodule ``path`` is ``new``; every other module (and
    every parameter) is shared, the user's model is left as it is."""
    top = copy.copy(root)
    top._modules = dict(root._modules)
    node, parts = top, path.split(".")
    for p in parts[:-1]:
        child = copy.copy(node._modules[p])
        child._modules = dict(child._modules)
        node._modules[p] = child
        node = child
    node._modules[parts[-1]] = new
    return top


def without_head(model: nn.Module, head: str, distortion: str = "mse"):
    """(the model with its Linear ``head`` replaced by the identity, a distortion on the head's
    input equal to ``distortion`` on its output). The head's bias cancels in a difference, and
    mean_v ((Δh · w_v)²) = Δhᵀ G Δh / V with G = WᵀW (d × d, once), so ``mse`` and
    ``worst_case`` are exact; ValueError for another distortion, a head that is not a Linear, or
    one that is pruned (a masked head changes G)."""
    try:
        module = model.get_submodule(head)
    except AttributeError as e:
        raise ValueError(f"head={head!r} is not a submodule of {type(model).__name__}") from e
    if not isinstance(module, nn.Linear):
        raise ValueError(f"head={head!r} is a {type(module).__name__}; the Gram identity needs a "
                         "Linear last layer")
    if head in M.prunable(model):
        raise ValueError(f"head={head!r} is a prunable layer here; its curve (and a masked head's "
                         "Gram matrix) needs the logits: leave head=None")
    measure = D.check(distortion)
    if distortion not in ("mse", "worst_case"):
        raise ValueError(f"head= is exact for 'mse' and 'worst_case'; {distortion!r} needs the "
                         "whole output (KL: the softmax over the vocabulary): leave head=None")
    w = module.weight.detach().double()
    gram, vocab = w.t() @ w, w.shape[0]

    def gram_error(y_ref, y):
        d = (y - y_ref).double()
        q = ((d @ gram.to(d.device)) * d).sum(-1) / vocab
        return q.reshape(len(q), -1).mean(1)
    name = f"{distortion}@{head}"  # registered for the call (curves() removes it after)
    D.register_distortion(name, gram_error, measure.reduce)
    return swapped(model, head, nn.Identity()), name


def _curves(model, calib, grid, distortion, layers, method, batch, max_batch, cache, progress,
            criterion, output, weights_hash=None):
    calib = B.gather(calib)
    D.check_inputs(model, calib, grid, distortion)
    check_choice("curve method", method, PATHS)
    M.remember(model, calib)  # FLOPs of a model without input_size come from this sample
    all_layers = M.prunable(model)
    names = list(layers) if layers is not None else list(all_layers)
    unknown = [k for k in names if k not in all_layers]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; prunable layers: {', '.join(all_layers)}")
    model.eval()
    amounts = grid_amounts(grid)
    flops = M.layer_flops(model)
    criterion_entry(criterion)
    key = f"{method}+{criterion}"
    if output is not None:
        key += f"+output={output!r}" if not callable(output) else \
            f"+output={getattr(output, '__module__', '')}.{getattr(output, '__qualname__', output)}"
    weights_hash = weights_hash or state_hash(model)  # once: the cache key and the label
    folder = _cache_dir(model, weights_hash, calib, int(grid), distortion, key, names) \
        if cache else None
    rank, ranks = DI.world()
    if ranks > 1:
        if ranks > len(names):
            raise ValueError(f"{ranks} ranks for {len(names)} layers: launch at most "
                             f"{len(names)} processes")
        DI.agree(model, calib, dict(grid=int(grid), distortion=D.identity(distortion),
                                    method=method, layers=names, criterion=criterion))
    frames, todo, paths = {}, [], {}
    for name in names:
        path = folder / f"{name or 'model'}.csv" if folder else None
        df = _read_layer(path, name, len(amounts)) if path and path.exists() else None
        if df is not None:
            frames[name], paths[name] = df, "cached"
        else:
            todo.append(name)

    def frame(name, dist):
        return pd.DataFrame({"layer": name, "amount": amounts,
                             "n_weights": all_layers[name].weight.numel(), "flops": flops[name],
                             "distortion": dist})[COLUMNS]
    mine = todo
    if ranks > 1:  # rank 0's view of the cache (its cached curves too), shared out by cost
        todo, frames = DI.from_rank0((todo, frames))
        paths = {k: "cached" for k in frames}
        mine = _my_layers(model, todo, amounts, method, rank, ranks) if todo else []
    done = {}
    if mine:
        dev = next(model.parameters()).device
        x_all = B.to(calib, dev)
        compute = fast_curves if method == "fast" else reference_curves
        orders = criterion_orders(model, criterion, x_all, mine)
        for name, dist in compute(model, x_all, mine, amounts, distortion, batch, max_batch,
                                  progress, paths=paths, orders=orders):
            df = frame(name, dist)
            if folder:
                atomic_write_bytes(folder / f"{name or 'model'}.csv", df.to_csv(index=False).encode())
            frames[name], done[name] = df, dist
    if ranks > 1 and todo:  # every rank gets every layer
        for r, part in enumerate(DI.gather({k: (v, paths.get(k)) for k, v in done.items()})):
            for name, (dist, how) in part.items():
                frames.setdefault(name, frame(name, dist))
                paths[name] = f"{how} (rank {r})"
    out = pd.concat([frames[k] for k in names], ignore_index=True)
    out.attrs.update(model_hash=weights_hash, distortion=distortion, grid=int(grid),
                     paths={k: paths[k] for k in names}, cache=str(folder) if folder else None,
                     criterion=criterion)
    return out


def _my_layers(model, todo, amounts, method, rank, ranks):
    """This rank's share of ``todo`` (:func:`rdprune.core.distributed.share`)."""
    traced = None
    if method == "fast":
        try:
            traced = Downstream(model)
        except Untraceable:
            pass
    layers, left = M.prunable(model), {}
    for k in todo:
        already, counts = pruned_counts(layers[k], amounts)
        left[k] = sum(1 for c in counts if c > already)
    return DI.share(DI.costs(model, todo, left, traced), ranks)[rank]


def check_curves(model: nn.Module, curves: pd.DataFrame, layers=None) -> None:
    """Raise ValueError unless ``curves`` were computed on this model's prunable layers (and, when
    they carry a weights hash, on its current weights and masks)."""
    needed = {"layer", "amount", "n_weights", "distortion"}
    if not isinstance(curves, pd.DataFrame) or not needed <= set(curves.columns):
        raise ValueError(f"curves must be a DataFrame with columns {sorted(needed)} "
                         "(from rdprune.rd.curves)")
    all_layers = M.prunable(model)
    names = layers or list(all_layers)
    sizes = {k: m.weight.numel() for k, m in all_layers.items()}
    got = curves.groupby("layer", sort=False)["n_weights"].first().to_dict()
    missing = [k for k in names if k not in got]
    wrong = [k for k in names if k in got and got[k] != sizes[k]]
    if missing or wrong:
        raise ValueError("these curves come from another model: "
                         + (f"no curve for {missing[:5]} " if missing else "")
                         + (f"wrong layer sizes for {wrong[:5]}" if wrong else "")
                         + "; recompute them with rdprune.rd.curves(model, calib)")
    want = curves.attrs.get("model_hash")
    if want is not None and state_hash(model) != want:
        raise ValueError("these curves were computed on different weights or masks than the "
                         "model now has; recompute them with rdprune.rd.curves(model, calib)")

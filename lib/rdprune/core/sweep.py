"""The curve engine: the distortion of a model with one layer's weight replaced, for many pruned
counts of that layer (:func:`sweep`), through the layer's downstream cone when the trace serves it
(:mod:`rdprune.core.downstream`, several counts stacked into one pass), else by forward passes
that replay what finishes before the weight is read (:mod:`rdprune.core.replay`). The fast and
reference paths of :func:`rdprune.core.curves.curves` (:func:`fast_curves`,
:func:`reference_curves`) and :func:`rdprune.core.refine` run on it; filter-level curves, which
mask the outputs of several coupled modules at once, run on :func:`output_sweep`.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from . import batch as B
from . import distortion as D
from . import masks as M
from . import replay as R
from .downstream import Downstream, Untraceable


def default_max_batch(device: torch.device, x=None) -> int:
    """Samples through a downstream part at once: 4096 on a GPU (a small network's pass costs
    about the same whatever the batch; not benchmarked yet); on a CPU, 256 samples of images up to
    3 × 32 × 32 and of anything else (tokens), and for larger images ``x`` as many as hold the
    same number of values: five at 3 × 224 × 224, so a batch of more than five such images
    passes each amount on its own (stacking amounts at 224 × 224 made the fast path slower than
    the reference: ``docs/benchmarks.md``, ``bench_scale.py --max-batch``)."""
    if torch.device(device).type != "cpu":
        return 4096
    if x is not None and B.is_images(x):
        return max(1, min(CPU_SAMPLES, CPU_VALUES // x[0].numel()))
    return CPU_SAMPLES


CPU_SAMPLES = 256  # samples stacked through one downstream pass on a CPU
CPU_VALUES = CPU_SAMPLES * 3 * 32 * 32  # and at most as many image values


def pruned_counts(module, amounts):
    """(weights already pruned, weights pruned at each amount)."""
    n = module.weight.numel()
    return int((~M.mask_of(module)).sum()), [M.n_pruned(a, n) for a in amounts]


def variant(like, weight, order, k):
    """``weight`` with ``order[:k]`` zeroed (or, for a criterion that updates weights, the weight
    ``order(k)`` gives), in the memory format of ``like``."""
    if callable(order):
        return torch.empty_like(like).copy_(order(k)[0])
    w = weight.detach().flatten().clone()  # logical order, whatever the memory format
    w[order[:k]] = 0
    return torch.empty_like(like).copy_(w.view_as(like))


@torch.no_grad()
def sweep(model, x_all, jobs, total, distortion, batch, max_batch, progress, desc, y_refs=None,
          paths=None):
    """The fast path. ``jobs`` yields ``(layer, source weight, prune order, counts)``; for each,
    yields ``(layer, distortions)``: ``model`` with that layer's weight replaced by the source with
    ``order[:k]`` zeroed, for every ``k`` in ``counts``, against ``y_refs`` (logits per calibration
    chunk; default ``model``'s own). Only the layer's downstream cone is recomputed, several
    counts at once. The dense pass of a chunk is kept across layers when the calibration set is a
    single chunk, else recomputed per layer: 1/grid of the work the reference does anyway.
    Layers the trace cannot serve (:func:`fast_plan`) get full forward passes, one warning, and
    ``paths[layer]`` (when a dict is given) says ``"fast"`` or ``"reference"``."""
    max_batch = max_batch or default_max_batch(next(model.parameters()).device, x_all)
    model, x_all = D.channels_last(model, x_all)
    modules = M.prunable(model)
    chunks = B.split(x_all, batch)
    ds, why = fast_plan(model, chunks[0])
    kept = ds.run(chunks[0]) if ds is not None and len(chunks) == 1 else None
    refs, plans, replayed, warned = None, None, None, False
    stack = max(1, max_batch // B.size(chunks[0]))  # amounts per downstream pass
    for name, weight, order, counts in tqdm(jobs, total=total, desc=desc, disable=not progress):
        module = modules[name]
        values = None
        if name not in why and counts:
            try:
                values = _cone_distortions(ds, kept, chunks, module, name, weight, order, counts,
                                           distortion, y_refs, stack)
            except RuntimeError:  # e.g. a size read outside the cone, an output that cannot
                # be stacked: one amount at a time (a user's ValueError goes on up)
                try:
                    values = _cone_distortions(ds, kept, chunks, module, name, weight, order,
                                               counts, distortion, y_refs, 1)
                except Exception as e:  # this layer only: full passes
                    why[name] = f"its downstream part fails when re-run ({type(e).__name__})"
        elif name not in why:
            values = np.zeros(0)
        if values is None:  # forward passes for what the trace cannot serve
            slow = [k for k in modules if k in why]
            if not warned:
                warnings.warn(f"the fast curve path cannot serve {len(slow)} layer(s) of this "
                              f"model ({_reasons(why, slow)}); they are measured with forward "
                              "passes that replay the modules which finish before the layer's "
                              "weight is read (same numbers, slower)")
                warned = True
            if plans is None:  # per chunk: a data-dependent path is planned on its own data
                watch = {k: m.weight for k, m in modules.items()}  # a later fallback too
                plans = [R.plan(model, x, watch) for x in chunks]
                if len(chunks) == 1:  # one dense pass: the logits and what the layers replay
                    y, replayed = R.capture(model, chunks[0], {m for k in slow
                                                               for m in plans[0][k]})
                    refs = y_refs if y_refs is not None else [y]
            if refs is None:
                refs = y_refs if y_refs is not None else [B.call(model, x) for x in chunks]
            values = _passes(model, module, weight, order, counts, refs, chunks, distortion,
                             [p[name] for p in plans], replayed)
        if paths is not None:
            paths[name] = ("fast" if name not in why else
                           "replay" if plans and any(p[name] for p in plans) else "reference")
        yield name, values


def _cone_distortions(ds, kept, chunks, module, name, weight, order, counts, distortion, y_refs,
                      stack):
    """The fast path for one layer: ``stack`` amounts at a time through its downstream cone."""
    reducer = D.Reducer(distortion, len(counts))
    for c, x in enumerate(chunks):
        env = kept if kept is not None else ds.run(x)
        y_ref = ds.output(env) if y_refs is None else y_refs[c]
        if c == 0 and stack > 1 and not ds.stacks(env, name, module):
            stack = 1
        parts = []
        for s in range(0, len(counts), stack):
            group = counts[s:s + stack]
            out = ds.perturbed(env, name, module, [variant(module.weight, weight, order, k)
                                                   for k in group])
            parts.append(D.per_sample(distortion, y_ref,
                                      ds.rerun(env, name, out, copies=len(group)), len(group)))
        reducer.add(torch.cat(parts))
        del env
    return reducer.value()


def fast_plan(model, x) -> tuple[Downstream | None, dict[str, str]]:
    """(the traced model, or None when it cannot be traced or its trace fails on ``x``;
    {layer: why the fast path cannot serve it}: every layer in the first case)."""
    try:
        ds = Downstream(model, B.take(x, 0, 2))  # checks its trace on the example
    except Untraceable as e:
        return None, {k: str(e) for k in M.prunable(model)}
    return ds, dict(ds.unserved)


def _reasons(why, slow):
    if len({why[k] for k in slow}) == 1:
        return f"{', '.join(slow[:6])}{', ...' if len(slow) > 6 else ''}: {why[slow[0]]}"
    return "; ".join(f"{k}: {why[k]}" for k in slow[:6]) + ("; ..." if len(slow) > 6 else "")


def _passes(model, module, weight, order, counts, refs, chunks, distortion, prefixes=None,
            kept=None):
    """Distortion of ``model`` with ``module``'s weight set to ``weight`` less ``order[:k]``, for
    each ``k`` in ``counts``, by forward passes (the reference way). With ``prefixes``, each
    chunk's modules there are replayed from one dense pass (:mod:`rdprune.core.replay`): they
    finish before the layer's weight is first read, so the numbers are the full passes'
    exactly. ``kept``: the outputs of a single chunk's modules, kept across layers; else each
    chunk's dense pass runs here."""
    prefixes = prefixes or [[] for _ in chunks]
    if not counts:
        return np.zeros(0)
    original = module.weight.detach().clone()
    reducer = D.Reducer(distortion, len(counts))
    try:
        for x, y_ref, prefix in zip(chunks, refs, prefixes):
            mine = ({m: kept[m] for m in prefix if m in kept} if kept is not None else
                    R.capture(model, x, prefix)[1] if prefix else {})
            errors = []
            with R.replaying(mine):
                for k in counts:
                    module.weight.copy_(variant(original, weight, order, k))
                    errors.append(D.per_sample(distortion, y_ref, B.call(model, x)))
            module.weight.copy_(original)
            reducer.add(torch.cat(errors))
    finally:
        module.weight.copy_(original)
    return reducer.value()


def fast_curves(model, x_all, names, amounts, distortion, batch, max_batch, progress,
                paths=None, orders=None):
    """Layer by layer (so each finished layer is cached at once): every amount above the layer's
    current sparsity, through :func:`sweep`."""
    todo = {}

    def jobs():
        for name in names:
            module = M.prunable(model)[name]
            already, counts = pruned_counts(module, amounts)
            todo[name] = [i for i, k in enumerate(counts) if k > already]
            order = orders[name] if orders else M.prune_order(module)
            yield name, module.weight, order, [counts[i] for i in todo[name]]
    for name, values in sweep(model, x_all, jobs(), len(names), distortion, batch, max_batch,
                               progress, "RD curves", paths=paths):
        dist = np.zeros(len(amounts))
        dist[todo[name]] = values
        yield name, dist


@torch.no_grad()
def reference_curves(model, x_all, names, amounts, distortion, batch, max_batch, progress,
                     paths=None, orders=None):
    """One full forward pass per (layer, amount), as in the authors' code."""
    model, x_all = D.channels_last(model, x_all)
    chunks = B.split(x_all, batch)
    refs = [B.call(model, x) for x in chunks]
    for name in tqdm(names, desc="RD curves (reference)", disable=not progress):
        module = M.prunable(model)[name]
        already, counts = pruned_counts(module, amounts)
        order = orders[name] if orders else M.prune_order(module)
        original = module.weight.detach().clone()
        dist = np.zeros(len(amounts))
        todo = [i for i, k in enumerate(counts) if k > already]
        dist[todo] = _passes(model, module, original, order, [counts[i] for i in todo], refs,
                             chunks, distortion)
        if paths is not None:
            paths[name] = "reference"
        yield name, dist


def scaled(output, scale):
    """``output`` (``copies`` batches stacked along the batch axis) times per-copy channel
    multipliers ``scale`` of shape (copies, channels)."""
    c, sh = scale.shape[0], output.shape
    view = scale.view(c, 1, sh[1], *[1] * (output.dim() - 2))
    return (output.reshape(c, -1, *sh[1:]) * view).reshape(sh)


@torch.no_grad()
def output_sweep(model, x_all, jobs, distortion, batch, max_batch, progress, desc,
                 fast: bool = True):
    """The engine for perturbed module *outputs* (a filter group: channels zeroed at the output
    of each module the surgery slices). ``jobs`` yields ``(label, modules, scales, counts)``:
    ``scales(ks)`` gives {module name: (len(ks), channels) multipliers of its output}; yields
    ``(label, distortions)``, one per count. With ``fast`` and modules each called once in the
    trace, the modules no other feeds are replaced in the kept dense pass and only their cones
    re-run (several counts stacked); the others, and every module otherwise, are scaled by
    forward hooks during full passes."""
    max_batch = max_batch or default_max_batch(next(model.parameters()).device, x_all)
    model, x_all = D.channels_last(model, x_all)
    chunks = B.split(x_all, batch)
    ds = fast_plan(model, chunks[0])[0] if fast else None
    kept = ds.run(chunks[0]) if ds is not None and len(chunks) == 1 else None
    refs, mods = None, dict(model.named_modules())
    for label, names, scales, counts in tqdm(jobs, desc=desc, disable=not progress):
        if not counts:
            yield label, []
            continue
        nodes = ds.module_nodes(names) if ds is not None else None
        starts = ds.sources(nodes) if nodes is not None else set()
        if nodes is None and refs is None:
            refs = [B.call(model, x) for x in chunks]
        reducer = D.Reducer(distortion, len(counts))
        for c, x in enumerate(chunks):
            env = (kept if kept is not None else ds.run(x)) if nodes is not None else None
            y_ref = ds.output(env) if nodes is not None else refs[c]
            parts, stack = [], max(1, max_batch // B.size(x))
            for s in range(0, len(counts), stack):
                group = counts[s:s + stack]
                scale = scales(group)
                hooks = [mods[k].register_forward_hook(lambda m, i, o, k=k: scaled(o, scale[k]))
                         for k in names if k not in starts]
                try:
                    y = (ds.rerun_from(env, {nodes[k]: scaled(B.tile(env[nodes[k]], len(group)),
                                                              scale[k]) for k in starts},
                                       len(group))
                         if nodes is not None else B.call(model, B.tile(x, len(group))))
                finally:
                    for h in hooks:
                        h.remove()
                parts.append(D.per_sample(distortion, y_ref, y))
            reducer.add(torch.cat(parts))
        yield label, list(reducer.value())

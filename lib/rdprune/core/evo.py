"""An EvoPress-style search (Sieberling et al., ICML 2025) over per-layer amounts: a (1 + λ)
evolution whose fitness is the **measured** end-to-end distortion of the pruned model on the
calibration batch, not the sum of per-layer curves. EvoPress argues that additivity ("error
monotonicity") fails for language models; this search needs no such assumption, at the price of
many forward passes.

As the authors' ``evo_prune_search.py``:

- **Mutation** ("level switch"): min(U{1..3}, U{1..3}) switches; each raises one random layer's
  amount and lowers another's by the same cost (weights for ``params``, FLOPs for ``flops``), so
  every offspring meets the budget exactly as its parent. The authors' levels are a fixed number
  of weights in every (equal-sized) layer; with layers of very different sizes here, a switch
  moves the smaller of the two layers by one ``step`` (default: one step of the curves' grid) and
  the other by the same cost. Duplicates are drawn again.
- **Selection in stages**: all ``offspring`` are scored on a fresh random subset of
  ``samples[0]`` calibration samples, the best ``survivors[0]`` go on to ``samples[1]``, and so on;
  the parent joins only the last stage and is scored there again (elitism), and the last stage's
  best is the next parent. With the last stage on the whole batch (the default) the fitness of
  the parent never rises.
- **Start**: any allocation (``uniform`` as the authors'; ``rd+evo`` starts from RD's DP).

Its cost is reported (:class:`Search`): candidates scored, forward passes in calibration-batch
equivalents, seconds.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import allocators as A
from . import batch as B
from . import criteria as C
from . import masks as M
from .distortion import check as check_distortion
from .distortion import measure


@dataclass
class Search:
    """The result of :func:`search`: ``amounts`` (the best allocation), ``fitness`` (its
    distortion on the whole calibration batch), ``start_fitness``, ``trace`` (per generation:
    the parent's fitness on the last stage), ``candidates`` scored, ``passes`` (forward passes in
    calibration-batch equivalents) and ``seconds``."""
    amounts: dict
    fitness: float
    start_fitness: float
    trace: pd.DataFrame = field(repr=False)
    candidates: int = 0
    passes: float = 0.0
    seconds: float = 0.0


def _mutate(counts, layers, step_counts, lo, hi, rng):
    """One offspring: 1–3 level switches, each moving the same cost up in one layer and down in
    another (counts are real-valued here; rounded up when applied)."""
    child = counts.copy()
    cost = layers.unit
    for _ in range(min(rng.randint(1, 3), rng.randint(1, 3))):
        up, down = rng.randrange(len(child)), rng.randrange(len(child))
        if up == down:
            continue
        moved = min(step_counts[up] * cost[up], step_counts[down] * cost[down])
        new_up = child[up] + moved / cost[up]
        new_down = child[down] - moved / cost[down]
        if new_up <= hi[up] + 1e-9 and new_down >= lo[down] - 1e-9:
            child[up], child[down] = min(new_up, hi[up]), max(new_down, lo[down])
    return child


def search(model: nn.Module, calib, start: dict, target: float, budget: str = "params", *,
           exclude=(), distortion: str = "mse", criterion: str = C.DEFAULT,
           generations: int = 50, offspring: int = 16, survivors=(4, 1), samples=None,
           step: float = 0.05, seed: int = 0, progress: bool = False) -> Search:
    """Evolve the allocation ``start`` ({layer: amount}, meeting ``target`` of ``budget``) to lower
    the measured ``distortion`` of ``model`` pruned with ``criterion`` on ``calib``.
    ``samples``: calibration samples per stage (default: a quarter of the batch, then all of it;
    one per ``survivors`` entry); ``step``: a switch's move, as a fraction of the smaller layer."""
    from tqdm.auto import tqdm
    check_distortion(distortion)
    calib = B.gather(calib)
    B.check(calib)
    n = B.size(calib)
    survivors = [int(s) for s in survivors]
    samples = [max(1, n // 4), n][-len(survivors):] if samples is None else [int(s) for s in samples]
    if len(samples) != len(survivors) or survivors[-1] != 1 or any(s > n for s in samples):
        raise ValueError(f"survivors {survivors} and samples {samples}: one samples count (at most "
                         f"the {n} calibration samples) per stage, and the last stage keeps 1")
    if generations < 0 or offspring < 1 or not 0 < step <= 1:
        raise ValueError("generations >= 0, offspring >= 1 and 0 < step <= 1, please")
    layers = A.Layers(model, budget, exclude)
    counts = np.array([max(M.n_pruned(float(start.get(k, 0.0)), int(nk)), int(p))
                       for k, nk, p in zip(layers.names, layers.n, layers.pruned)], dtype=float)
    lo, hi = layers.pruned.astype(float), layers.n.astype(float)
    step_counts = np.maximum(1.0, step * layers.n)
    orders = C.orders(model, criterion, calib, layers.names)
    dev = next(model.parameters()).device
    x_all = B.to(calib, dev)
    model.eval()
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    refs_cache = {}
    tally = dict(candidates=0, passes=0.0)

    def amounts_of(c):
        return layers.amounts(np.ceil(c - 1e-9))

    @torch.no_grad()
    def fitness(c, idx):
        key = tuple(idx.tolist())
        x = B.index(x_all, idx)
        if key not in refs_cache:
            refs_cache.clear()
            refs_cache[key] = [B.call(model, x)]
        net = M.apply(M.clone(model), amounts_of(c), orders=orders)
        tally["candidates"] += 1
        tally["passes"] += len(idx) / n
        return measure(refs_cache[key], net, [x], distortion)

    tic = time.perf_counter()
    everything = torch.arange(n)
    parent = counts
    start_fitness = best = fitness(parent, everything)
    rows = [dict(generation=0, fitness=best)]
    for g in tqdm(range(1, generations + 1), desc="evo search", disable=not progress):
        seen, pool = {tuple(parent)}, []
        for _ in range(20 * offspring):
            if len(pool) == offspring:
                break
            child = _mutate(parent, layers, step_counts, lo, hi, rng)
            if tuple(child) not in seen:
                seen.add(tuple(child))
                pool.append(child)
        if not pool:
            break
        for s, (keep, m) in enumerate(zip(survivors, samples)):
            last = s == len(survivors) - 1
            if last:
                pool = pool + [parent]
            idx = everything if m == n else torch.randperm(n, generator=gen)[:m]
            scores = [fitness(c, idx) for c in pool]
            ranked = np.argsort(scores, kind="stable")[:keep]
            pool = [pool[i] for i in ranked]
            if last:
                parent, best = pool[0], scores[ranked[0]]
        rows.append(dict(generation=g, fitness=best))
    if samples[-1] != n:  # the last stage saw a subset: score the result on everything
        best = fitness(parent, everything)
    return Search(amounts_of(parent), float(best), float(start_fitness), pd.DataFrame(rows),
                  tally["candidates"], tally["passes"], time.perf_counter() - tic)


def _evo(model, target, budget, *, layers, calib, exclude=(), start="uniform", curves=None,
         distortion="mse", criterion=C.DEFAULT, **options):
    if isinstance(start, str):
        start_amounts = A.allocate(start, model, target, budget, exclude=exclude,
                                   **({"curves": curves} if A.get(start).needs_curves else {}),
                                   **({"calib": calib} if A.get(start).needs_calib else {}))
    else:
        start_amounts = dict(start)
    found = search(model, calib, start_amounts, target, budget, exclude=exclude,
                   distortion=distortion, criterion=criterion, **options)
    return A.Allocation(found.amounts, getattr(start_amounts, "passes", 0.0) + found.passes)


def _rd_evo(model, target, budget, *, layers, calib, curves, exclude=(), **options):
    grid = int(curves["amount"].nunique())
    options.setdefault("step", 1 / max(1, grid - 1))
    options.setdefault("distortion", curves.attrs.get("distortion", "mse"))
    options.setdefault("criterion", curves.attrs.get("criterion", C.DEFAULT))
    return _evo(model, target, budget, layers=layers, calib=calib, exclude=exclude, start="rd",
                curves=curves, **options)


A.register_allocator("evo", _evo, needs_calib=True)
A.register_allocator("rd+evo", _rd_evo, needs_curves=True, needs_calib=True)

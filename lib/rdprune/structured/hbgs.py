"""HBGS / HBGTS whole-network filter pruning (Purohit et al., TMLR 2024); method notes in
``docs/hbgs.md`` (§), filter selection (FP-OMP, FP-Backward, compensation) in
:mod:`rdprune.structured.filters`.

    sel, train_loader = rp.data.selection_split("fashion_mnist", n=1024)  # held-out TRAINING images
    small, trace = prune(model, sel, 0.63, budget="params", **METHODS["HBGTS-B"])
    small, info = uniform(model, 0.63, budget="params", selector="backward")   # FP-Backward

* **LRF-style wrappers (§1), used.** Every K×K conv (K > 1, groups 1, zero padding) but the stem
  (first conv) becomes ``P (1×1, identity) → W → Q (1×1, identity)`` under its own name, before
  its BN. Candidates: ``out`` drops rows of W and compensates into Q, ``in`` drops columns of W
  and compensates into P. Outer channel counts never change: residual additions need no handling.
* **Cost against the original model, with folding.** P and Q are exact linear maps, so a wrapper
  folds back to W·P, Q·W or Q·W·P (a plain conv). Each counts as the cheapest of the four forms
  in the budget's metric (ties: fewer modules): untouched it costs exactly the original conv, and
  a pruned side pays for its 1×1 only when that beats folding. The cost is analytic and the
  result is folded into exactly those forms, so ``structured.count(result)`` equals the trace's
  last row (tested). Reductions are against ``structured.count`` of the original model.
* **Scores (§5).** HBGS (``criterion="layer"``): sqrt(Σ‖Y⁰_c − Ŷ_c‖² / Σ‖Y⁰_c‖²) over the
  selection set, Y⁰_c the original network's conv output, Ŷ_c the candidate wrapper on the
  current network's true input to c. HBGTS (``"output"``): the same relative L2 error of the
  logits against the original's logits (no labels needed; the authors used the last BN output).
* **Shared prefix and caches.** A probe forward records when each module starts and ends. For
  HBGTS, one forward per batch and round stores the outputs of the largest modules that finish
  before each wrapper starts; a candidate at c replays them (``forward`` patched to return a
  copy), so only the suffix from c runs. HBGS hooks capture each wrapper's input once per batch.
  Selections (S, λ, weights) are reused until their wrapper is committed or a fine-tune runs, and
  HBGS errors of wrappers that run before the committed one are reused.
* **Loop.** Each round tries every candidate with k filters removed (fewer when ≤ k remain; one
  always stays; a fractional ``k`` in (0, 1) removes max(1, round(k·width)) of a side's
  *original* width per step, hbgs.md's "about 10 % of the layer", so narrow and wide layers move
  in comparable steps), commits the lowest error, and optionally fine-tunes ``finetune_steps`` batches on
  ``train_loader`` (``train.fine_tune``: AdamW, CE + KL distillation from the original, T = 2),
  until cost ≤ (1 − target) × original; an unreachable target raises ValueError upfront.
  Selection data: held-out *training* images (:func:`selection_split`), never the test set.
* **Uniform baselines.** :func:`uniform` removes the same fraction floor(f·n) of every wrapped
  conv's output filters (least f meeting the target, by bisection), chosen by FP-OMP or
  FP-Backward with compensation into Q, or at random without compensation (``"random"``).
"""
from __future__ import annotations

import bisect
import copy
import math
import time
import weakref

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..core import masks as M
from ..core import replay as R
from ..core.loops import fine_tune
from ..util import NotApplicable
from . import filters as FL
from .surgery import BUDGETS, count, removed
from .wrappers import Wrapped, run, set_module, wrap, wrappable, wrappers  # API

__all__ = ["METHODS", "SELECTORS", "CRITERIA", "Wrapped", "wrap", "wrappable", "wrappers", "fold",
           "cost", "remove", "prune", "uniform"]
SELECTORS = ("omp", "backward")
CRITERIA = ("layer", "output")
METHODS = {"HBGS": dict(criterion="layer", selector="omp"),
           "HBGS-B": dict(criterion="layer", selector="backward"),
           "HBGTS": dict(criterion="output", selector="omp"),
           "HBGTS-B": dict(criterion="output", selector="backward")}
_HW: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # wrapped net -> {layer: (h, w)}
_COLUMNS = ["round", "layer", "side", "filters_left", "error", "flops", "params", "seconds"]


# ----------------------------------------------------------------------------- wrappers
def _shape(w: Wrapped):
    """(m, s_in, s_out, n, kh·kw, has bias) of a wrapper (1×1 sides count when folded)."""
    W = w.conv.weight
    return ((W if w.p is None else w.p).shape[1], W.shape[1], W.shape[0],
            (W if w.q is None else w.q).shape[0], W[0, 0].numel(), w.conv.bias is not None)


def _side(w: Wrapped, side: str) -> int:
    return w.conv.weight.shape[0 if side == "out" else 1]


def _best(shape, hw, budget):
    """(fold_p, fold_q, params, flops) of the cheapest form (module doc)."""
    m, si, so, n, kk, bias = shape
    opts = []
    for fp, fq in ((True, True), (True, False), (False, True), (False, False)):
        i, o = (m if fp else si), (n if fq else so)
        params = o * i * kk + bias * o + (not fp) * m * si + (not fq) * so * n
        flops = o * i * kk * hw[1] + (not fp) * m * si * hw[0] + (not fq) * so * n * hw[1]
        opts.append((fp, fq, params, flops))
    key = (lambda o: (o[2], o[3])) if budget == "params" else (lambda o: (o[3], o[2]))
    return min(opts, key=key)


def cost(model, hw, base, budget="flops", shapes=None) -> dict[str, int]:
    """Analytic cost: ``base`` (unwrapped layers) + each wrapper's cheapest form (or ``shapes``)."""
    best = [_best((shapes or {}).get(n) or _shape(w), hw[n], budget)
            for n, w in wrappers(model).items()]
    return {"params": base["params"] + sum(b[2] for b in best),
            "flops": base["flops"] + sum(b[3] for b in best)}


def fold(model: nn.Module, budget: str = "flops") -> nn.Module:
    """A copy with each wrapper folded into its cheapest exact form (a plain conv if both)."""
    hw = _HW.get(model)
    model = M.clone(model)
    for name, w in wrappers(model).items():
        fp, fq, _, _ = _best(_shape(w), hw[name] if hw else (1, 1), budget)
        p, W, b, q = (None if t is None else t.detach().double() for t in w.tensors())
        if fp and p is not None:
            W, p = torch.einsum("olhw,lc->ochw", W, p[:, :, 0, 0]), None
        if fq and q is not None:
            W, b, q = (torch.einsum("no,oihw->nihw", q[:, :, 0, 0], W),
                       None if b is None else q[:, :, 0, 0] @ b, None)
        c, dt = w.conv, w.conv.weight.dtype
        new = nn.Conv2d(W.shape[1], W.shape[0], c.kernel_size, c.stride, c.padding, c.dilation,
                        bias=b is not None).to(c.weight.device, dt)
        new.weight, new.bias = (None if t is None else nn.Parameter(t.to(dt)) for t in (W, b))
        if p is None and q is None:
            set_module(model, name, new)
        else:
            w.conv, w.p, w.q = new, *(None if t is None else nn.Parameter(t.to(dt)) for t in (p, q))
    return model


def _candidate(w: Wrapped, side, k, selector, gen=None):
    """Remove k filters on ``side``: returns ((p, W, b, q) tensors, weight-space rel. error)."""
    p, W, b, q = w.tensors()
    B = FL.filter_matrix(W, side, bias=b if side == "out" else None)
    keep = B.shape[1] - k
    if selector == "random":
        S = sorted(torch.randperm(B.shape[1], generator=gen)[:keep].tolist())
        lam = torch.zeros(keep, B.shape[1], dtype=torch.float64)
        lam[range(keep), S] = 1.0
    else:
        S, lam = (FL.fp_omp if selector == "omp" else FL.fp_backward)(B, keep)
    err = math.sqrt(FL.error(B, S, lam) / max(B.square().sum().item(), 1e-300))
    new = ((p, W[S], None if b is None else b[S], FL.compensate_out(q, S, lam, dim=1))
           if side == "out" else (FL.compensate_in(p, S, lam, dim=0), W[:, S], b, q))
    return tuple(None if t is None else t.detach() for t in new), err


def _commit(w: Wrapped, new):
    w.p, w.conv.weight, b, w.q = (None if t is None else nn.Parameter(t.clone()) for t in new)
    w.conv.bias = w.conv.bias if b is None else b
    w.conv.out_channels, w.conv.in_channels = w.conv.weight.shape[:2]


def remove(model: nn.Module, name: str, side: str, k: int, selector: str = "omp", seed: int = 0):
    """Remove k filters on ``side`` of wrapper ``name`` with compensation, in place; returns the
    weight-space relative error ‖B − B_Sλ‖/‖B‖ of the selection."""
    w = wrappers(model)[name]
    new, err = _candidate(w, side, k, selector, torch.Generator().manual_seed(seed))
    _commit(w, new)
    return err


# ----------------------------------------------------------------------------- scoring
def _probe(net, x):
    """Spatial sizes (in, out) of each wrapper the forward pass calls, in call order, and per
    wrapper the prefix modules to replay (:func:`rdprune.core.replay.plan`)."""
    ws, hw, hooks = wrappers(net), {}, []
    for name, w in ws.items():
        hooks.append(w.register_forward_hook(lambda m, i, o, name=name: hw.__setitem__(
            name, (i[0].shape[-2] * i[0].shape[-1], o.shape[-2] * o.shape[-1]))))
    try:
        probed = R.probe(net.eval(), x[:1])
    finally:
        [h.remove() for h in hooks]
    hw = {k: hw[k] for k in sorted(hw, key=lambda k: probed[0][ws[k]][0])}
    return hw, R.plan(net, x[:1], {k: ws[k] for k in hw}, probed=probed)


def _layer_errors(net, orig, batches, names, cands, done):
    """HBGS: {cand: relative error of wrapper output vs the original conv output}."""
    ws, convs = wrappers(net), dict(orig.named_modules())
    done = {c: e for c, e in done.items() if c in cands}
    num, den = {c: 0.0 for c in cands if c not in done}, {}
    ref, hooks = {}, []
    for n in names:
        hooks.append(convs[n].register_forward_hook(lambda m, i, o, n=n: ref.__setitem__(n, o)))

        def cap(m, i, o, n=n):
            for c in (c for c in num if c[0] == n):
                num[c] += (ref[n] - run(i[0], m.conv, *cands[c])).square().sum().item()
            den[n] = den.get(n, 0.0) + ref[n].square().sum().item()
        hooks.append(ws[n].register_forward_hook(cap))
    with torch.no_grad():
        for xb in batches:
            orig(xb), net(xb)
    [h.remove() for h in hooks]
    return {**done, **{c: math.sqrt(v / max(den[c[0]], 1e-300)) for c, v in num.items()}}


def _output_errors(net, batches, logits0, plan, cands):
    """HBGTS: {cand: relative L2 error of the logits vs the original's}, prefix replayed."""
    ws = wrappers(net)
    num, keep = {c: 0.0 for c in cands}, {m for c in cands for m in plan[c[0]]}
    with torch.no_grad():
        for xb, l0 in zip(batches, logits0):
            kept = R.capture(net, xb, keep)[1]
            for c in cands:
                ws[c[0]].override = cands[c]
                try:
                    with R.replaying({m: kept[m] for m in plan[c[0]]}):
                        num[c] += (net(xb) - l0).square().sum().item()
                finally:
                    ws[c[0]].override = None
    den = sum(l.square().sum().item() for l in logits0)
    return {c: math.sqrt(v / max(den, 1e-300)) for c, v in num.items()}


def _check(target, budget, **choices):
    for kind, (value, valid) in {"budget": (budget, BUDGETS), **choices}.items():
        if value not in valid:
            raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(valid)}")
    if isinstance(target, bool) or not 0.0 < float(target) < 1.0:
        raise ValueError(f"target is the fraction of {budget} to remove; it must lie in (0, 1), "
                         f"got {target!r}")


def _setup(model, data, target, budget, sides=("out", "in")):
    """Wrapped copy, sizes, replay plan, original cost, cost of the unwrapped layers and the
    budget limit; raises if one filter per pruned side of every wrapper cannot meet it."""
    x = data[0] if isinstance(data, (tuple, list)) and len(data) else data
    if not torch.is_tensor(x) or x.dim() < 2 or len(x) == 0:
        raise ValueError("data must be a non-empty tensor of selection inputs (or an (x, y) pair)")
    ok, skipped = wrappable(model)
    net, x = (wrap(model).eval() if ok else model), x.to(next(model.parameters()).device)
    hw, plan = _probe(net, x) if ok else ({}, None)  # nothing to wrap: no copy, no probe pass
    for n in set(wrappers(net)) - set(hw):  # never executed: unwrap
        set_module(net, n, wrappers(net)[n].conv)
    if not wrappers(net):
        why = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:8])
        raise NotApplicable(
            "HBGS prunes K×K convs (K > 1, groups 1, zero padding, not the stem) and this model "
            f"has none it could wrap ({why or 'no Conv2d at all'}"
            f"{'; ...' if len(skipped) > 8 else ''}); use rd_filter or a mask method",
            reason="no conv HBGS can prune (only " + ", ".join(dict.fromkeys(
                v.split(" (")[0] for v in skipped.values())) + " convs)" if skipped
            else "no Conv2d to prune")
    _HW[net], full = hw, count(model, x[:1])
    base = {key: full[key] - cost(net, hw, {"params": 0, "flops": 0})[key] for key in full}
    limit = (1.0 - float(target)) * full[budget]
    least = {n: (m, 1 if "in" in sides else si, 1, o, kk, b)
             for n, (m, si, _, o, kk, b) in ((n, _shape(w)) for n, w in wrappers(net).items())}
    if (low := cost(net, hw, base, budget, least)[budget]) > limit:
        raise ValueError(f"a {budget} reduction of {target:.3g} is out of reach: one filter per "
                         f"pruned side of every wrapped conv still costs {low} > {limit:.0f} "
                         f"({len(wrappers(net))} convs wrapped, "
                         f"{len(wrappable(model)[1])} left whole: see hbgs.wrappable(model))")
    return x, net, hw, plan, full, base, limit


def prune(model: nn.Module, data, target: float, budget: str = "flops", selector: str = "omp",
          criterion: str = "layer", k: int = 5, finetune_steps: int = 0, train_loader=None,
          progress: bool = True, *, batch_size: int = 128, fold_result: bool = True,
          max_rounds: int | None = None):
    """Greedy whole-network filter pruning (module doc). ``data``: held-out training inputs;
    ``target``: fraction of the original ``budget`` to remove; ``max_rounds`` stops early
    (``trace.attrs["reached"]`` says whether the target was met). Returns (pruned copy, trace)."""
    _check(target, budget, selector=(selector, SELECTORS), criterion=(criterion, CRITERIA))
    fraction = isinstance(k, float) and 0 < k < 1
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not (fraction or int(k) == k >= 1) \
            or (finetune_steps and train_loader is None):
        raise ValueError(f"k must be a positive integer or a fraction in (0, 1) of each layer "
                         f"(got {k!r}) and finetune_steps > 0 needs a train_loader")
    dev = next(model.parameters()).device
    x, net, hw, plan, full, base, limit = _setup(model, data, target, budget)
    orig = copy.deepcopy(model).eval()
    ws, names = wrappers(net), list(hw)
    batches = list(x.split(batch_size))
    with torch.no_grad():
        logits0 = [orig(xb) for xb in batches] if criterion == "output" else None
    sel, errs, rows, rnd = {}, {}, [], 0
    bar = tqdm(desc=f"{criterion}/{selector}", disable=not progress, leave=False)
    now = cost(net, hw, base, budget)
    step = {(n, side): max(1, round(k * _side(ws[n], side))) if fraction else int(k)
            for n in names for side in ("out", "in")}
    while now[budget] > limit and rnd < (max_rounds or math.inf):
        t0, rnd = time.perf_counter(), rnd + 1
        for n, side in ((n, side) for n in names for side in ("out", "in")):
            if (s := _side(ws[n], side)) > 1 and (n, side) not in sel:
                sel[n, side] = _candidate(ws[n], side, min(step[n, side], s - 1), selector)[0]
        errs = (_layer_errors(net, orig, batches, names, sel, errs) if criterion == "layer"
                else _output_errors(net, batches, logits0, plan, sel))
        best = min(sel, key=lambda c: (errs[c], names.index(c[0])))
        _commit(ws[best[0]], sel[best])
        row = dict(round=rnd, layer=best[0], side=best[1], error=errs[best],
                   filters_left=_side(ws[best[0]], best[1]))
        sel = {c: v for c, v in sel.items() if c[0] != best[0]}  # HBGS: inputs before best kept
        errs = {c: e for c, e in errs.items() if names.index(c[0]) < names.index(best[0])}
        if finetune_steps:
            fine_tune(net, train_loader, finetune_steps, teacher=orig, dev=dev, progress=False)
            sel, errs = {}, {}
        now = cost(net, hw, base, budget)
        rows.append(dict(row, **now, seconds=time.perf_counter() - t0))
        bar.set_postfix({budget: f"{1 - now[budget] / full[budget]:.3f}"}, refresh=False)
        bar.update()
    bar.close()
    trace = pd.DataFrame(rows, columns=_COLUMNS)
    trace.attrs.update(original=full, target=float(target), budget=budget, selector=selector,
                       criterion=criterion, k=k, selection_size=len(x),
                       reached=bool(now[budget] <= limit), train_steps=rnd * finetune_steps)
    return (fold(net, budget) if fold_result else net), trace


def uniform(model: nn.Module, target: float, budget: str = "flops", selector: str = "omp", *,
            seed: int = 0, example: torch.Tensor | None = None, fold_result: bool = True):
    """FP-OMP / FP-Backward / random uniform baseline (module doc): the least fraction f of every
    wrapped conv's output filters meeting the target. Returns (pruned copy, one row per layer;
    ``error`` is the weight-space relative error of the selection)."""
    _check(target, budget, selector=(selector, SELECTORS + ("random",)))
    p = next(model.parameters())
    x = example if example is not None else M.example_input(model).to(p.device)
    _, net, hw, _, full, base, limit = _setup(model, x, target, budget, sides=("out",))
    ws = wrappers(net)
    shape0 = {n: _shape(w) for n, w in ws.items()}
    fracs = sorted({j / s[3] for s in shape0.values() for j in range(s[3])})

    def cost_at(i):
        shapes = {n: (m, si, n_ - removed(fracs[i], n_), n_, kk, b)
                  for n, (m, si, _, n_, kk, b) in shape0.items()}
        return cost(net, hw, base, budget, shapes)[budget]

    hi = bisect.bisect_left(range(len(fracs)), True, key=lambda i: cost_at(i) <= limit)
    gen, rows = torch.Generator().manual_seed(seed), []
    for n, w in ws.items():
        t0, r = time.perf_counter(), removed(fracs[hi], shape0[n][3])
        new, err = _candidate(w, "out", r, selector, gen) if r else (w.tensors(), 0.0)
        _commit(w, new)
        rows.append(dict(round=0, layer=n, side="out", filters_left=shape0[n][3] - r, error=err,
                         seconds=time.perf_counter() - t0))
    now = cost(net, hw, base, budget)
    info = pd.DataFrame(rows).assign(**now)[_COLUMNS]
    info.attrs.update(original=full, target=float(target), budget=budget, selector=selector,
                      fraction=fracs[hi])
    return (fold(net, budget) if fold_result else net), info

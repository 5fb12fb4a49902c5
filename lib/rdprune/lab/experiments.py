"""What the notebooks share, so that each reads as its story: :func:`setup` (the dense models of
every seed, the test images, a one-line header), RD's zero-shot and iterative comparisons
(:func:`zero_shot_seeds`, :func:`iterative_runs`, notebook 03), and the comparison harness of
notebooks 05 and 06: prune a dense model with several methods to one target, then fine-tune every
result for **the same total number of training steps**.

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

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch import nn

from ..core import allocators as A
from ..core import masks as M
from ..core import rd
from ..structured import rd_filter
from ..structured import surgery as S
from ..structured.hbgs import METHODS as HBGS_METHODS
from ..util import NotApplicable
from . import data as D
from . import pipeline, train
from .front import evaluate_pruned, prune


@dataclass
class Setup:
    """A notebook's starting point: ``out`` (its folder), ``test_loader``, ``denses`` (a trained
    dense model per seed) and ``dense`` (their top-1 and loss on the test images, by seed)."""
    out: Path
    label: str
    test_loader: object
    denses: dict
    dense: pd.DataFrame
    model: str = ""

    def header(self) -> str:
        """One Markdown line: the model, its dense top-1 (a language model: perplexity) over the
        seeds, size and test set."""
        from .report import fmt
        n, full = len(self.denses), S.count(next(iter(self.denses.values())))
        metric = "perplexity" if "perplexity" in self.dense else "top1"
        value = fmt(self.dense[metric].mean(), self.dense[metric].std(), 4 if metric == "top1" else 3)
        data = self.test_loader.dataset
        shown = (f"{len(data)} test images" if metric == "top1" else
                 f"{data.numel():,} held-out tokens")
        return (f"**{self.label}**: dense {metric.replace('top1', 'top-1')} {value}"
                f" ({n} seed{'s' if n > 1 else ''}, {shown}), "
                f"{full['params']:,} parameters, {full['flops'] / 1e6:.2f} MFLOPs")


def setup(model: str, dataset: str, recipe: str, seeds, *, out_dir, eval_subset=None,
          test_batch: int = 512, device="auto", progress: bool = True) -> Setup:
    """Train (or load) ``model`` on ``dataset`` for every seed and evaluate it on the test images
    (``eval_subset`` of them, all when None; a text data set's held-out windows), in batches of
    ``test_batch``; ``out_dir`` is created."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pd.set_option("display.precision", 4)
    _, test_loader = D.loaders(dataset, batch_size=test_batch, subset=eval_subset)
    denses = {seed: train.pretrained(model, dataset, recipe=recipe, seed=seed, dev=device,
                                     progress=progress) for seed in seeds}
    dense = pd.DataFrame([dict(seed=seed, **train.evaluate(net, test_loader))
                          for seed, net in denses.items()]).set_index("seed", drop=False)
    return Setup(out, f"{model} on {dataset}", test_loader, denses, dense, model)


def calibrations(s: Setup, dataset: str, n: int) -> dict:
    """Each seed's calibration batch (``n`` training samples drawn with that seed), on the device
    of its dense model."""
    return {seed: D.calibration(dataset, n=n, seed=seed).to(next(net.parameters()).device)
            for seed, net in s.denses.items()}


def zero_shot_seeds(s: Setup, dataset: str, methods, targets, *, calib_n: int, grid: int,
                    distortion="mse", budget="params", refine=0, criterion="magnitude",
                    curves_of: dict | None = None, options: dict | None = None, progress=True):
    """Every method at every target on each seed's dense model, zero-shot
    (:func:`rdprune.pipeline.zero_shot` with ``criterion`` and each method's ``options``), RD's
    curves from ``calib_n`` calibration samples of that seed (or ``curves_of[seed]``), with a
    ``dense`` row per seed (``schedule`` "dense"; the others "zero-shot"). Rows carry the
    allocation's ``seconds`` and ``passes`` and the seed's ``curve_seconds`` (0 when given).
    Notebooks 03, 07 and 08. Returns (rows, {seed: RD curves or None})."""
    rows, curves_of = [], dict(curves_of or {})
    for seed, calib in calibrations(s, dataset, calib_n).items():
        net = s.denses[seed]
        tic = time.perf_counter()
        if seed not in curves_of:
            curves_of[seed] = (rd.curves(net, calib, grid=grid, distortion=distortion,
                                         criterion=criterion, progress=progress)
                               if any(A.get(m).needs_curves for m in methods) else None)
        curve_seconds = time.perf_counter() - tic
        d = s.dense.loc[seed]
        rows.append(dict(method="dense", schedule="dense", round=0, target=0.0, sparsity=0.0,
                         flops_left=1.0, distortion=0.0, seed=seed,
                         **{k: d[k] for k in ("top1", "perplexity", "loss") if k in d}))
        shot = pipeline.zero_shot(net, methods, targets, calib, s.test_loader, budget=budget,
                                  curves=curves_of[seed], distortion=distortion, refine=refine,
                                  criterion=criterion, options=options)
        rows += (shot.assign(schedule="zero-shot", round=1, seed=seed,
                             curve_seconds=curve_seconds).to_dict("records"))
    return pd.DataFrame(rows), curves_of


def zero_shot_table(s: Setup, dataset: str, methods, targets, *, criteria=("magnitude",),
                    curves_of: dict | None = None, **options):
    """:func:`zero_shot_seeds` once per within-layer criterion (``curves_of[seed]``: magnitude
    curves already measured), its zero-shot rows labelled with ``criterion``, ``model``,
    ``dataset`` and the test set's size (``n_test`` images, a text set's ``n_tokens``).
    Returns (rows, {(seed, criterion): RD curves or None}). Notebook 07."""
    tables, curves = [], {}
    for c in criteria:  # rd+refine measures magnitude-pruned neighbours: magnitude only
        df, got = zero_shot_seeds(s, dataset, methods, targets, criterion=c,
                                  curves_of=curves_of if c == "magnitude" else None,
                                  **dict(options, **({} if c == "magnitude" else {"refine": 0})))
        tables.append(df[df.schedule == "zero-shot"].assign(criterion=c))
        curves.update({(seed, c): v for seed, v in got.items()})
    data = s.test_loader.dataset
    size = ({"n_tokens": data.numel()} if "perplexity" in s.dense else {"n_test": len(data)})
    rows = (pd.concat(tables, ignore_index=True).drop(columns=["schedule", "round"])
            .assign(model=s.model, dataset=dataset, **size))
    return rows, curves


# ----------------------------------------------------------------------------- notebook 08
def arena(s: Setup, dataset: str, methods, targets, criteria, *, calib_n: int, grid: int,
          distortion="mse", refine=0, options: dict | None = None, progress=True):
    """Every allocator × criterion × target, zero-shot, on each seed (:func:`zero_shot_table`),
    with each allocator's cost: ``seconds`` (RD's: its curves' too) and ``passes``, forward
    passes over the calibration batch (RD's curves: one per layer and amount above 0, as the
    reference path runs them). Returns (rows, {(seed, criterion): curves})."""
    rows, curves = zero_shot_table(s, dataset, methods, targets, criteria=criteria,
                                   calib_n=calib_n, grid=grid, distortion=distortion,
                                   refine=refine, options=options, progress=progress)
    uses = rows.method.str.removesuffix("+refine").map(lambda m: A.get(m).needs_curves)
    n_layers = len(M.prunable(next(iter(s.denses.values()))))
    return rows.assign(
        seconds=rows.seconds + uses * rows.curve_seconds,
        passes=rows.passes + uses * n_layers * (grid - 1)), curves


def iterative_runs(model: str, dataset: str, methods, seeds, target: float, out: Path, *,
                   refine=0, progress=True, **run_options) -> pd.DataFrame:
    """Notebook 03's iterative part: :func:`rdprune.pipeline.run` per method and seed (each in
    ``out/runs/<method>-iterative-s<seed>``, so an interrupted notebook resumes), the rounds'
    rows with ``distortion`` measured right after each round's pruning."""
    runs = []
    for seed in seeds:
        for method in methods:
            t = pipeline.run(model, dataset, method, "iterative", target, seed=seed,
                             out=Path(out) / "runs" / f"{method}-iterative-s{seed}",
                             progress=progress, refine=refine if method == "rd" else 0,
                             **run_options)
            runs.append(t[t["round"] > 0].rename(columns={"actual": "distortion"})
                        .assign(seed=seed))
    return pd.concat(runs, ignore_index=True) if runs else pd.DataFrame()


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
    adds ``method``, ``round_steps``, ``final_steps``, ``train_steps``, ``prune_seconds`` and
    ``n_test`` (the test images it was scored on)."""
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
                         prune_seconds=float(rec.get("seconds", float("nan"))),
                         n_test=len(test_loader.dataset)))
    return rows, tuned


def flops_comparison(s: Setup, dataset: str, methods, targets, *, calib_n: int,
                     selection_n: int, finetune_steps: int, k=0.25, round_finetune_steps=5,
                     grid=21, filter_grid=None, distortion="mse", jointpruning=None,
                     latency_batch=256, latency_repeats=5, device="auto", progress=True):
    """Notebook 06: every method at every FLOPs target on each seed's dense model, with the same
    total training steps (:func:`evaluate_each`), CPU latency against the dense network and the
    pruning time (RD's curves, computed once per seed, added to each RD row).
    ``jointpruning``: JointPruning's search options. Returns (rows, {(method, target, seed):
    tuned network}); a method that cannot prune the model gives a row with a ``note``."""
    rows, nets = [], {}
    for seed, dense in s.denses.items():
        calib = D.calibration(dataset, n=calib_n, seed=seed).to(next(dense.parameters()).device)
        (sel, sel_labels), ft_loader = D.selection_split(dataset, n=selection_n, seed=seed,
                                                         labels=True)
        search_loader, _ = D.loaders(dataset, batch_size=64, seed=seed)  # JointPruning's supernet
        options = {m: dict(selection=sel, k=k, finetune_steps=round_finetune_steps,
                           train_loader=ft_loader) for m in HBGS_METHODS}
        options["jointpruning"] = dict(train_loader=search_loader, seed=seed, dev=device,
                                       **(jointpruning or {}))
        curves = {"rd": lambda: rd.curves(dense, calib, grid=grid, distortion=distortion,
                                          cache=False, progress=progress),
                  "rd_filter": lambda: rd_filter.curves(dense, calib, grid=filter_grid,
                                                        distortion=distortion, progress=progress)}
        curve_seconds = {}
        for method in [m for m in curves if m in methods]:
            tic = time.perf_counter()
            options[method] = dict(curves=curves[method]())
            curve_seconds[method] = time.perf_counter() - tic
        for t in targets:
            pruned, notes = prune_each(dense, methods, t, "flops", calib=calib, options=options,
                                       progress=progress)
            rows += [dict(method=m, target=t, seed=seed, note=n) for m, n in notes.items()]
            got, tuned = evaluate_each(pruned, dense, s.test_loader, calib=calib,
                                       val=(sel, sel_labels), finetune_steps=finetune_steps,
                                       finetune_loader=ft_loader, dev=device, progress=progress)
            for r in got:
                ms, base_ms = S.latency_ms(tuned[r["method"]], dense, latency_batch,
                                           latency_repeats)
                nets[r["method"], t, seed] = tuned[r["method"]]
                rows.append({"target": t, "seed": seed, **r, "latency_ms": ms,
                             "speedup": base_ms / ms,
                             "prune_seconds": r["prune_seconds"] + curve_seconds.get(r["method"], 0)})
    return rows, nets


def removed_per_layer(nets: dict, dense: nn.Module) -> pd.DataFrame:
    """The fraction of each prunable layer's weights every network removed (rows: layers, columns:
    the dict's keys), physically pruned channels and masks alike."""
    layers = M.prunable(dense)
    out = {}
    for key, net in nets.items():
        kept = S.kept_weights(net, dense)
        out[key] = {n: 1 - kept[n] / m.weight.numel() for n, m in layers.items()}
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- parameters
def per_model(value, model: str, default=None):
    """A parameter given as one value or per model (``{"*": the rest, "<model>": its own}``)."""
    return value.get(model, value.get("*", default)) if isinstance(value, dict) else value

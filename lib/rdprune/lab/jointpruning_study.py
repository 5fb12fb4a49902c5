"""Notebook 04's harness: JointPruning's searches on one model and every network they find, or a
uniform baseline, trained from scratch for the same steps (:class:`JointPruningStudy`), and our
gains beside the papers' (:func:`jointpruning_side_by_side`)."""
from __future__ import annotations

import time

import pandas as pd
import torch
from torch import nn

from ..structured import jointpruning as J
from ..structured import surgery as S
from . import data as D
from . import train
from .experiments import Setup, per_model
from .front import evaluate_pruned, prune


class JointPruningStudy:
    """Notebook 04 for one model: JointPruning's searches (cached by target, dimensions and seed)
    and every network they find, or a uniform baseline, **trained from scratch** with the same
    ``retrain_steps`` and batch, as the paper and MetaPruning evaluate.

    ``plan``: the FLOPs reductions to meet, each with the width multiplier it comes from. A
    CIFAR ResNet meets ``targets`` (its uniform baseline: every ratio of the pruning vector
    equal); a MobileNet meets the FLOPs of the ``widths`` multiplier networks (its baseline: that
    multiplier, the papers' comparison)."""

    def __init__(self, s: Setup, model: str, dataset: str, *, targets, widths, supernet_steps,
                 search_steps: int, samples: int, retrain_steps, retrain_batch, device="auto",
                 progress: bool = True):
        self.s, self.model, self.dataset = s, model, dataset
        self.device, self.progress = device, progress
        self.search_options = dict(supernet_steps=per_model(supernet_steps, model),
                                   search_steps=search_steps, samples=samples)
        self.retrain_steps = per_model(retrain_steps, model)
        self.retrain_batch = per_model(retrain_batch, model, 128)
        first = next(iter(s.denses.values()))
        self.space = J.space(first)
        if self.space.kind == "mobilenet":
            if not widths or not all(0 < w < 1 for w in widths):
                raise ValueError(f"{model}'s targets are the FLOPs of width multipliers: give "
                                 f"widths= a non-empty list of multipliers in (0, 1), not {widths}")
            full = S.count(first)["flops"]
            self.plan = [(1 - S.count(self._width_network(w))["flops"] / full, w) for w in widths]
        else:
            self.plan = [(t, None) for t in targets]
        self._searches, self._rows = {}, {}

    def header(self) -> str:
        """One Markdown line: :meth:`Setup.header` and the FLOPs targets."""
        return (self.s.header() + "; FLOPs targets "
                + ", ".join(f"{t:.3f} removed" + (f" (the {w}× network's)" if w else "")
                            for t, w in self.plan))

    def _width_network(self, width: float) -> nn.Module:
        from . import models
        info = D.info(self.dataset)
        return models.build(self.model, info.num_classes, info.in_channels,
                            image_size=info.image_size, width=width)

    def search(self, target: float, dims, seed: int):
        """``rp.prune(dense, "jointpruning", target, "flops", dims=dims)`` on ``seed``'s dense
        model, once: (the network that inherits the supernet's weights, its record)."""
        key = (target, tuple(dims), seed)
        if key not in self._searches:
            loader, _ = D.loaders(self.dataset, batch_size=64, seed=seed)  # the supernet's
            self._searches[key] = prune(self.s.denses[seed], "jointpruning", target, "flops",
                                        train_loader=loader, dims=list(dims), seed=seed,
                                        dev=self.device, progress=self.progress,
                                        **self.search_options)
        return self._searches[key]

    def trace(self, dims, seed: int) -> pd.DataFrame:
        """The search trace at the first target."""
        t = self.plan[0][0]
        return self.search(t, dims, seed)[1]["trace"].assign(model=self.model, target=t, seed=seed)

    def row(self, method: str, target: float, seed: int, *, dims=None, width=None) -> dict:
        """One row (once per arguments): the network found by the search over ``dims`` (or, with
        ``dims=None``, the uniform baseline: the ``width`` multiplier network, or equal ratios
        meeting ``target``), trained from scratch and evaluated on the test images."""
        key = (method, target, seed, None if dims is None else tuple(dims), width)
        if key not in self._rows:
            self._rows[key] = self._row(method, target, seed, dims, width)
        return self._rows[key]

    def _row(self, method, target, seed, dims, width) -> dict:
        dense = self.s.denses[seed]
        found = self.search(target, dims, seed) if dims is not None else None
        vector = (found[1]["vector"] if found else
                  None if width else J.uniform_for_flops(dense, 1 - target))
        loader, _ = D.loaders(self.dataset, batch_size=self.retrain_batch, seed=seed)
        torch.manual_seed(seed)
        net = J.build(dense, vector) if vector is not None else self._width_network(width)
        tic = time.perf_counter()
        net = train.fit(net, loader, self.retrain_steps, dev=self.device, progress=self.progress)
        seconds = time.perf_counter() - tic
        r, _ = evaluate_pruned(net, dense, self.s.test_loader)
        cfg = J.decode(dense, vector) if vector is not None else None
        sp = self.space
        return dict(dataset=self.dataset, model=self.model, method=method, target=target,
                    seed=seed, n_test=len(self.s.test_loader.dataset), width_multiplier=width,
                    flops=r["flops"], flops_reduction=r["flops_reduction"], params=r["params"],
                    width=float(vector[:sp.nc].mean()) if cfg else width,
                    depth=sum(cfg.depths) if cfg else sum(len(st) for st in sp.stages),
                    resolution=cfg.resolution if cfg else sp.full,
                    inherited_top1=(train.evaluate(found[0], self.s.test_loader)["top1"]
                                    if found else float("nan")),
                    top1=r["top1_after"],
                    search_seconds=found[1]["seconds"] if found else 0.0, retrain_seconds=seconds)

    def ablation(self, dims_list) -> pd.DataFrame:
        """Each set of searched dimensions at the first target, every seed."""
        t = self.plan[0][0]
        return pd.DataFrame([self.row(" + ".join(d), t, seed, dims=d)
                             for seed in self.s.denses for d in dims_list])

    def targets(self, dims) -> pd.DataFrame:
        """JointPruning over ``dims`` against the uniform baseline at every planned target (rows
        already computed by :meth:`ablation` are reused)."""
        name = " + ".join(dims)
        rows = []
        for seed in self.s.denses:
            for t, w in self.plan:
                rows.append(self.row(name, t, seed, dims=dims))
                rows.append(self.row("uniform width", t, seed, width=w))
        return pd.DataFrame(rows)

    def gain(self, table: pd.DataFrame) -> pd.DataFrame:
        """JointPruning minus uniform width, in top-1 points, per target (mean, sd over seeds)."""
        from .report import gap
        top = table.assign(method=table.method.where(table.method == "uniform width",
                                                     "jointpruning"))
        rows = []
        for t, w in self.plan:
            g = gap(top[top.target == t], "jointpruning", "uniform width")
            rows.append(dict(model=self.model, target=t, width_multiplier=w, gain_pts=g["mean"],
                             gain_sd_pts=g["sd"], n_seeds=g["n"]))
        return pd.DataFrame(rows)


def jointpruning_side_by_side(gain: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Our JointPruning-minus-uniform gains beside the papers' (MetaPruning's over uniform width,
    JointPruning's over its 'state of the art'), each row naming its source."""
    from .reproduce import paper_numbers
    reported = paper_numbers(("MetaPruning", "JointPruning"), wide=True)
    meta = reported[reported.method.isin(["metapruning", "uniform_width"])]
    cols = ["dataset", "model", "method", "gain_pts", "source"]
    theirs = (meta.pivot_table(index=["dataset", "model", "source"], columns="method",
                               values="top1_pct").reset_index()
              .assign(gain_pts=lambda d: d["metapruning"] - d["uniform_width"],
                      method="MetaPruning vs uniform width"))[cols]
    jp = reported[reported.method == "jointpruning"]
    theirs = pd.concat([theirs, jp.assign(method="JointPruning vs 'state of the art'",
                                          gain_pts=jp["top1_gain_over_sota_pts"])[cols]])
    ours = gain.assign(dataset=dataset, source="ours (this run)",
                       method=[f"JointPruning vs uniform width, {t:.0%} FLOPs removed"
                               + (f" (the {w}× network's)" if w == w and w else "")
                               for t, w in zip(gain.target, gain.width_multiplier)])
    return pd.concat([ours[cols], theirs], ignore_index=True)

"""The additivity check of Xu et al. (ICCV 2023): the distortion of pruning several layers at
once against the sum of their single-layer RD curves (:func:`predicted`), on random joint
configurations (:func:`additivity`)."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import distortion as D
from . import masks as M
from .curves import check_curves


def predicted(curves: pd.DataFrame, amounts: dict[str, float]) -> float:
    """Sum of the single-layer curve values at ``amounts`` (linear interpolation on the grid)."""
    total = 0.0
    for name, g in curves.groupby("layer", sort=False):
        if name in amounts:
            total += float(np.interp(amounts[name], g["amount"], g["distortion"]))
    return total


def additivity(model: nn.Module, calib: torch.Tensor, curves: pd.DataFrame, n: int = 50,
               seed: int = 0, max_amount: float = 0.5, kind: str | None = None) -> pd.DataFrame:
    """Random joint pruning configurations: measured joint distortion against the sum of the
    single-layer curve values. Half the configurations prune every layer at a random grid amount
    in [0, ``max_amount``], half a random subset of layers. Columns: ``config, kind, n_layers,
    predicted, actual, rel_error``; ``df.attrs`` holds Pearson and Spearman correlations (of the
    logs) and the median relative error (also :func:`additivity_stats`)."""
    check_curves(model, curves)
    kind = kind or curves.attrs.get("distortion", "mse")
    rng = np.random.default_rng(seed)
    grid = np.sort(curves["amount"].unique())
    grid = grid[grid <= max_amount + 1e-12]
    names = list(curves["layer"].unique())
    rows = []
    for i in range(n):
        subset = i % 2 == 1
        chosen = [k for k in names if rng.random() < 0.5] if subset else names
        chosen = chosen or [names[rng.integers(len(names))]]
        amounts = {k: float(rng.choice(grid)) for k in chosen}
        pruned = M.apply(copy.deepcopy(model), amounts)
        actual = D.distortion(model, pruned, calib, kind)
        pred = predicted(curves, amounts)
        rows.append(dict(config=i, kind="subset" if subset else "all", n_layers=len(chosen),
                         predicted=pred, actual=actual,
                         rel_error=abs(actual - pred) / max(actual, 1e-30)))
    df = pd.DataFrame(rows)
    df.attrs.update(additivity_stats(df))
    return df


def additivity_stats(df: pd.DataFrame) -> dict[str, float]:
    """Pearson and Spearman correlation of log predicted vs log actual, median relative error."""
    ok = (df["predicted"] > 0) & (df["actual"] > 0)
    lp, la = np.log(df.loc[ok, "predicted"]), np.log(df.loc[ok, "actual"])
    return {"pearson_log": float(np.corrcoef(lp, la)[0, 1]) if ok.sum() > 1 else float("nan"),
            "spearman": float(df["predicted"].rank().corr(df["actual"].rank())),
            "median_rel_error": float((df["actual"] - df["predicted"]).abs()
                                      .div(df["actual"].clip(lower=1e-30)).median())}

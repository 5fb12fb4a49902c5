"""Rate–distortion curves and the additivity check (Xu et al., ICCV 2023).

``D_l(a)``: output distortion when only layer ``l`` is pruned (by magnitude) to absolute amount
``a``, measured against the current model's logits on a calibration tensor:
- ``mse``: ``mean((Y − Ŷ)²)`` over samples and classes (library default);
- ``worst_case``: per-sample mean over classes, then the max over samples (the authors' README).

Fast path (default): the dense network runs once per calibration chunk and keeps every
intermediate value; for each layer only the downstream part is recomputed
(:mod:`rdprune.downstream`), several amounts at once. Amounts at or below a layer's current
sparsity change nothing: their distortion is exactly 0 and they are not computed. The reference
path runs one full forward pass per (layer, amount), as the authors do, for tests and benchmarks.
On the CPU both paths run a channels-last copy of a conv net (about 20 % faster per pass, results
identical between the two paths).

Curves are cached under ``data/curves/<key>/`` (one CSV per layer, written atomically, so an
interrupted run resumes from the layers already done), keyed by a hash of the weights and masks,
the calibration tensor, the grid, the distortion type and the method.
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
from tqdm.auto import tqdm

from . import masks as M
from .allocation import check_curves
from .data import data_dir
from .downstream import Downstream, layer_forward
from .knapsack import solve  # noqa: F401 - part of the public rd API (rp.rd.solve)
from .train import atomic_write_bytes, state_hash

DISTORTIONS = ("mse", "worst_case")
METHODS = ("fast", "reference")
COLUMNS = ["layer", "amount", "n_weights", "flops", "distortion"]
_VERSION = 2  # bump when the computation changes, so old caches are not reused


def _check_inputs(model, calib, grid, distortion, method):
    if distortion not in DISTORTIONS:
        raise ValueError(f"unknown distortion {distortion!r}; choose one of {', '.join(DISTORTIONS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(calib, torch.Tensor) or calib.dim() < 2 or len(calib) == 0:
        raise ValueError("calib must be a non-empty tensor of inputs (N, ...); "
                         "use rdprune.data.calibration(...)")
    if not torch.isfinite(calib).all():
        raise ValueError("calibration inputs contain NaN or infinite values")
    if int(grid) < 2:
        raise ValueError(f"grid must have at least 2 points (0 and 1), got {grid}")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise ValueError(f"model parameter {name!r} has NaN or infinite values")


def grid_amounts(grid: int) -> np.ndarray:
    """``grid`` evenly spaced amounts from 0 to 1 (101 → 0, 0.01, …, 1)."""
    return np.round(np.linspace(0.0, 1.0, int(grid)), 12)


def _per_sample(y_ref: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over the output dims, for ``copies`` stacked batches."""
    copies = len(y) // len(y_ref)
    diff = y.view(copies, *y_ref.shape) - y_ref.unsqueeze(0)
    return diff.pow(2).flatten(2).mean(2).double()  # (copies, N)


class _Reducer:
    """Accumulates per-sample errors over calibration chunks into mse or worst-case values."""

    def __init__(self, kind, m):
        self.kind, self.n = kind, 0
        self.acc = torch.zeros(m, dtype=torch.float64)

    def add(self, per_sample):  # (m, n_chunk)
        if self.kind == "mse":
            self.acc += per_sample.sum(1)
        else:
            self.acc = torch.maximum(self.acc, per_sample.max(1).values)
        self.n += per_sample.shape[1]

    def value(self):
        return (self.acc / self.n if self.kind == "mse" else self.acc).numpy()


def _cache_dir(model, calib, grid, distortion, method, layers) -> Path:
    h = hashlib.sha256()
    h.update(json.dumps([_VERSION, getattr(model, "arch", type(model).__name__), grid, distortion,
                         method, layers]).encode())
    h.update(state_hash(model).encode())
    h.update(calib.detach().cpu().contiguous().numpy().tobytes())
    return data_dir() / "curves" / h.hexdigest()[:20]


def _read_layer(path: Path, name: str, n_amounts: int) -> pd.DataFrame | None:
    try:
        df = pd.read_csv(path)
        ok = (list(df.columns) == COLUMNS and len(df) == n_amounts
              and (df["layer"] == name).all() and np.isfinite(df["distortion"]).all())
        if ok:
            return df
        problem = "unexpected contents"
    except Exception as e:  # noqa: BLE001
        problem = f"{type(e).__name__}: {e}"
    warnings.warn(f"curve cache {path} is corrupt ({problem}); recomputing that layer")
    return None


def curves(model: nn.Module, calib: torch.Tensor, grid: int = 101, distortion: str = "mse",
           layers: list[str] | None = None, *, method: str = "fast", batch: int = 256,
           max_batch: int | None = None, cache: bool = True, progress: bool = True) -> pd.DataFrame:
    """Per-layer rate–distortion curves as a long-form DataFrame with columns
    ``layer, amount, n_weights, flops, distortion`` (one row per layer and grid amount).

    ``batch`` calibration samples go through the network at a time; up to ``max_batch``
    samples (amounts × batch) through a layer's downstream part at once. Default: 256 on a CPU
    (on 2 cores the time per sample is flat up to ~256 and grows beyond, so larger batches do
    not pay); 4096 on a GPU, where a pass of a small network costs about the same whatever the
    batch (not yet timed here: we had no GPU)."""
    _check_inputs(model, calib, grid, distortion, method)
    all_layers = M.prunable(model)
    names = list(layers) if layers is not None else list(all_layers)
    unknown = [k for k in names if k not in all_layers]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; prunable layers: {', '.join(all_layers)}")
    model.eval()
    amounts = grid_amounts(grid)
    flops = M.layer_flops(model)
    folder = _cache_dir(model, calib, int(grid), distortion, method, names) if cache else None
    frames, todo = {}, []
    for name in names:
        path = folder / f"{name or 'model'}.csv" if folder else None
        df = _read_layer(path, name, len(amounts)) if path and path.exists() else None
        if df is not None:
            frames[name] = df
        else:
            todo.append(name)
    if todo:
        dev = next(model.parameters()).device
        x_all = calib.to(dev)
        compute = _fast if method == "fast" else _reference
        for name, dist in compute(model, x_all, todo, amounts, distortion, batch, max_batch,
                                  progress):
            module = all_layers[name]
            df = pd.DataFrame({"layer": name, "amount": amounts, "n_weights": module.weight.numel(),
                               "flops": flops[name], "distortion": dist})[COLUMNS]
            if folder:
                atomic_write_bytes(folder / f"{name or 'model'}.csv", df.to_csv(index=False).encode())
            frames[name] = df
    out = pd.concat([frames[k] for k in names], ignore_index=True)
    out.attrs.update(model_hash=state_hash(model), distortion=distortion, grid=int(grid))
    return out


def default_max_batch(device: torch.device) -> int:
    """Samples through a downstream part at once: 256 on a CPU (time per sample is flat up to
    about that on 2 cores), 4096 on a GPU (a small network's pass costs about the same whatever
    the batch; not yet timed here)."""
    return 256 if torch.device(device).type == "cpu" else 4096


def _channels_last(model, x):
    """On the CPU, a channels-last copy of a conv net and its inputs (about 20 % faster per pass
    here, and used by both the fast and the reference path so that they stay comparable);
    anything else unchanged."""
    if x.device.type != "cpu" or x.dim() != 4 or \
            not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model, x
    return (copy.deepcopy(model).to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last))


def _pruned_counts(module, amounts):
    """(weights already pruned, weights pruned at each amount)."""
    n = module.weight.numel()
    return int((~M.mask_of(module)).sum()), [M.n_pruned(a, n) for a in amounts]


def _variant(like, weight, order, k):
    """``weight`` with ``order[:k]`` zeroed, in the memory format of ``like``."""
    w = weight.detach().flatten().clone()  # logical order, whatever the memory format
    w[order[:k]] = 0
    return torch.empty_like(like).copy_(w.view_as(like))


@torch.no_grad()
def _sweep(model, x_all, jobs, total, distortion, batch, max_batch, progress, desc, y_refs=None):
    """The fast path. ``jobs`` yields ``(layer, source weight, prune order, counts)``; for each,
    yields ``(layer, distortions)``: ``model`` with that layer's weight replaced by the source with
    ``order[:k]`` zeroed, for every ``k`` in ``counts``, against ``y_refs`` (logits per calibration
    chunk; default ``model``'s own). Only the layer's downstream cone is recomputed, several
    counts at once. The dense pass of a chunk is kept across layers when the calibration set is a
    single chunk, else recomputed per layer: 1/grid of the work the reference does anyway."""
    max_batch = max_batch or default_max_batch(x_all.device)
    model, x_all = _channels_last(model, x_all)
    ds = Downstream(model)
    modules = M.prunable(model)
    chunks = list(torch.split(x_all, batch))
    kept = ds.run(chunks[0]) if len(chunks) == 1 else None
    for name, weight, order, counts in tqdm(jobs, total=total, desc=desc, disable=not progress):
        module = modules[name]
        reducer = _Reducer(distortion, len(counts))
        for c, x in enumerate(chunks if counts else []):
            env = kept if kept is not None else ds.run(x)
            y_ref = ds.output(env) if y_refs is None else y_refs[c]
            inp = ds.layer_input(env, name)
            per = max(1, max_batch // len(x))
            parts = []
            for s in range(0, len(counts), per):
                group = counts[s:s + per]
                out = torch.cat([layer_forward(module, inp, _variant(module.weight, weight, order, k))
                                 for k in group])
                parts.append(_per_sample(y_ref, ds.rerun(env, name, out, copies=len(group))))
            reducer.add(torch.cat(parts))
            del env
        yield name, reducer.value() if counts else np.zeros(0)


def _fast(model, x_all, names, amounts, distortion, batch, max_batch, progress):
    """Layer by layer (so each finished layer is cached at once): every amount above the layer's
    current sparsity, through :func:`_sweep`."""
    todo = {}

    def jobs():
        for name in names:
            module = M.prunable(model)[name]
            already, counts = _pruned_counts(module, amounts)
            todo[name] = [i for i, k in enumerate(counts) if k > already]
            yield name, module.weight, M.prune_order(module), [counts[i] for i in todo[name]]
    for name, values in _sweep(model, x_all, jobs(), len(names), distortion, batch, max_batch,
                               progress, "RD curves"):
        dist = np.zeros(len(amounts))
        dist[todo[name]] = values
        yield name, dist


@torch.no_grad()
def _reference(model, x_all, names, amounts, distortion, batch, max_batch, progress):
    """One full forward pass per (layer, amount), as in the authors' code."""
    model, x_all = _channels_last(model, x_all)
    chunks = list(torch.split(x_all, batch))
    refs = [model(x) for x in chunks]
    for name in tqdm(names, desc="RD curves (reference)", disable=not progress):
        module = M.prunable(model)[name]
        already, counts = _pruned_counts(module, amounts)
        order = M.prune_order(module)
        original = module.weight.detach().clone()
        dist = np.zeros(len(amounts))
        try:
            for i, k in enumerate(counts):
                if k <= already:
                    continue
                module.weight.copy_(_variant(original, original, order, k))
                dist[i] = _distortion_to(refs, model, chunks, distortion)
                module.weight.copy_(original)
        finally:
            module.weight.copy_(original)
        yield name, dist


# ----------------------------------------------------------------------------- distortion
@torch.no_grad()
def distortion(model: nn.Module, pruned: nn.Module, calib: torch.Tensor, kind: str = "mse",
               batch: int = 256) -> float:
    """Measured output distortion of ``pruned`` against ``model`` on ``calib``."""
    if kind not in DISTORTIONS:
        raise ValueError(f"unknown distortion {kind!r}; choose one of {', '.join(DISTORTIONS)}")
    model.eval()
    chunks = torch.split(calib.to(next(model.parameters()).device), batch)
    return _distortion_to([model(x) for x in chunks], pruned, chunks, kind)


@torch.no_grad()
def _distortion_to(y_refs, pruned, chunks, kind) -> float:
    """Distortion of ``pruned`` on calibration ``chunks`` against the logits ``y_refs``."""
    pruned.eval()
    r = _Reducer(kind, 1)
    for x, y in zip(chunks, y_refs):
        r.add(_per_sample(y, pruned(x)))
    return float(r.value()[0])


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
        actual = distortion(model, pruned, calib, kind)
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
            "median_rel_error": float(df["rel_error"].median())}


from .refine import refine  # noqa: E402,F401 - public as rp.rd.refine (refine.py uses this module)

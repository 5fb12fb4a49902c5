"""Three one-pass layer-wise allocators of 2024–25, as their authors' code computes them, each
meeting the ``params`` or ``flops`` target exactly (one shared shift or scale found by bisection,
:func:`rdprune.core.allocators.shared_amount`; a layer clipped to [its current sparsity, 1]).
Notes and the authors' repositories: ``docs/methods.md``.

- ``alphapruning`` (Lu et al., NeurIPS 2024), data-free. Each weight matrix's empirical spectral
  density (the eigenvalues of WᵀW; a convolution as (out, in·k·k)) gets a power-law exponent α
  (:func:`hill_alpha` at the ``xmin`` of :func:`fit_alpha`); α is averaged per block, scaled
  linearly to factors in [1 − ε, 1 + ε], and the factors times one common scale are the
  sparsities. A heavier tail (smaller α) marks a better-trained layer, so it is pruned less.
  ε = 0.3, the authors' default.
- ``atp`` (ICML 2025): block i of L prunes s + β·(i − (L − 1)/2), rising with depth. β is the
  best of ``trials`` evenly spaced values in (0, β_max], β_max = min(2s, 2(1 − s)) / (L − 1), by
  the output distortion on the calibration batch (the authors pick by test perplexity; a test
  split is never read here), or given.
- ``dlp`` (ICML 2025): a block's unimportance U is the mean of the Wanda scores |W|·‖X‖ of all its
  weights (the authors' unstructured code; their paper says median: ``statistic="median"``);
  R = 1 − U / ΣU, min-max scaled to [0, 2α] and centred, raises the density of important blocks
  by up to α (OWL's mapping with R in place of the outlier ratio). α = 0.15, the authors'.

A *block* is a layer's path up to its first numeric part (``transformer.h.3``, ``layer1.0``,
``blocks.2``); a layer without one is a block of its own. ``blocks=`` (a function of the layer
name) groups otherwise, ``blocks=str`` makes every layer its own.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from . import masks as M
from .allocators import Allocation, around_one_level, register_allocator, rounded_up, shared_amount
from .criteria import input_norms, scores


def block_of(name: str) -> str:
    """The block a layer belongs to: its path up to its first numeric part, else the name."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[:i + 1])
    return name


def _groups(names, blocks: Callable | None):
    """Block index of every layer (blocks numbered in the order their first layer comes)."""
    keys = [(blocks or block_of)(k) for k in names]
    first = {}
    for key in keys:
        first.setdefault(key, len(first))
    return np.array([first[k] for k in keys]), len(first)


def _per_block(values, index, n_blocks):
    """Unweighted mean of ``values`` within each block, given back per layer."""
    sums = np.bincount(index, weights=values, minlength=n_blocks)
    return (sums / np.bincount(index, minlength=n_blocks))[index]


# ----------------------------------------------------------------------------- AlphaPruning
def spectrum(weight: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of WᵀW, ascending (squared singular values in float32, as the authors compute
    them, returned in float64; a convolution as (out, in·k·k))."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    return torch.linalg.svdvals(w).double().square().sort().values


def hill_alpha(eigs: torch.Tensor, i: int) -> float:
    """The power-law exponent of the eigenvalues from ``eigs[i]`` up (maximum likelihood, Clauset
    et al. 2009): α = 1 + n / Σ_{j≥i} ln(λ_j / λ_i), n = len(eigs) − i."""
    tail = eigs[i:]
    return float(1 + len(tail) / torch.log(tail / eigs[i]).sum())


def fit_alpha(eigs: torch.Tensor, xmin: str = "peak") -> float:
    """α of an ascending spectrum. ``xmin="median"``: the tail starts at the median eigenvalue.
    ``"peak"`` (the authors' default): every start up to 1.5 × the left edge of the fullest of 100
    log-spaced bins is tried, and the one whose fit has the smallest Kolmogorov–Smirnov distance
    wins. Their code compares the lower bound log10(0.95 × edge) with the eigenvalues themselves;
    it is kept so, as it shaped their results."""
    eigs = eigs[eigs > 0]
    n = len(eigs)
    if n < 3:
        return float("nan")
    if xmin == "median":
        return hill_alpha(eigs, n // 2)
    if xmin != "peak":
        raise ValueError(f"xmin must be 'peak' or 'median', got {xmin!r}")
    logs = torch.log10(eigs)
    counts = torch.histc(logs, bins=100, min=float(logs.min()), max=float(logs.max()))
    edges = torch.linspace(float(logs.min()), float(logs.max()), 101, dtype=logs.dtype)
    peak = 10 ** float(edges[int(counts.argmax())])
    lo, hi = np.log10(0.95 * peak), 1.5 * peak
    best, best_d = float("nan"), float("inf")
    for i in range(n - 1):
        x = float(eigs[i])
        if x < lo:
            continue
        if x > hi:
            break
        a = hill_alpha(eigs, i)
        if not a > 1:
            continue
        tail = eigs[i:]
        seq = torch.arange(len(tail), dtype=tail.dtype) / len(tail)
        d = float((1 - (tail / eigs[i]) ** (1 - a) - seq).abs().max())
        if d < best_d:
            best, best_d = a, d
    return best


def alphas(model, names=None, xmin: str = "peak") -> dict[str, float]:
    """:func:`fit_alpha` of every named prunable weight (all when None)."""
    layers = M.prunable(model)
    return {k: fit_alpha(spectrum(layers[k].weight), xmin) for k in (names or layers)}


def _alphapruning(model, target, budget, *, layers, exclude=(), epsilon: float = 0.3,
                  xmin: str = "peak", blocks: Callable | None = None):
    if not 0 <= epsilon < 1:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    a = np.array(list(alphas(model, layers.names, xmin).values()))
    if np.isnan(a).any():  # a matrix too small to fit: the mean of the others
        a = np.where(np.isnan(a), np.nanmean(a) if (~np.isnan(a)).any() else 0.0, a)
    index, nb = _groups(layers.names, blocks)
    a = _per_block(a, index, nb)
    spread = a.max() - a.min()
    factor = (1 - epsilon) + ((a - a.min()) / spread * 2 * epsilon if spread > 0 else epsilon)
    floor = layers.pruned / layers.n
    scale = shared_amount(layers.unit * layers.n, 1.0, floor, layers.need(target), scale=factor,
                          lo=0.0, hi=1.0 / factor.min())
    return rounded_up(layers, scale * factor)


# ----------------------------------------------------------------------------- ATP
def atp_offsets(names, blocks: Callable | None = None) -> np.ndarray:
    """i − (L − 1)/2 for every layer of block i (L blocks in order)."""
    index, nb = _groups(names, blocks)
    return index - (nb - 1) / 2


def _atp_amounts(layers, target, beta, offsets):
    floor = layers.pruned / layers.n
    shift = shared_amount(layers.unit * layers.n, 1.0, floor, layers.need(target),
                          offset=-beta * offsets, lo=-1.0 - abs(beta) * np.abs(offsets).max(),
                          hi=1.0 + abs(beta) * np.abs(offsets).max())
    return rounded_up(layers, shift + beta * offsets)


def _atp(model, target, budget, *, layers, calib=None, exclude=(), beta: float | None = None,
         trials: int = 9, distortion: str = "mse", blocks: Callable | None = None):
    offsets = atp_offsets(layers.names, blocks)
    if beta is not None:
        return _atp_amounts(layers, target, float(beta), offsets)
    n_blocks = int(offsets.max() * 2 + 1)
    if n_blocks < 2 or trials < 1:
        return _atp_amounts(layers, target, 0.0, offsets)
    if calib is None:
        raise ValueError("atp picks β by the output distortion on a calibration batch: pass calib= "
                         "(or beta=)")
    from .distortion import distortion as measure
    beta_max = min(2 * target, 2 * (1 - target)) / (n_blocks - 1)
    best = None
    for beta in beta_max * np.arange(1, trials + 1) / trials:
        amounts = _atp_amounts(layers, target, beta, offsets)
        d = measure(model, M.apply(M.clone(model), amounts), calib, distortion)
        if best is None or d < best[0]:
            best = (d, amounts)
    return Allocation(best[1], passes=trials)


# ----------------------------------------------------------------------------- DLP
def block_unimportance(model, calib, names, statistic: str = "mean",
                       blocks: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each block's ``statistic`` ("mean" or "median") of the Wanda scores of all its weights,
    pooled; and every layer's block index."""
    if statistic not in ("mean", "median"):
        raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    layers = M.prunable(model)
    norms = input_norms(model, calib, names)
    index, nb = _groups(names, blocks)
    pooled = [[] for _ in range(nb)]
    for k, b in zip(names, index):
        pooled[b].append(scores(layers[k], norms[k]).flatten())
    stat = [getattr(torch.cat(p).double(), statistic)().item() for p in pooled]
    return np.array(stat), index


def _dlp(model, target, budget, *, layers, calib, exclude=(), alpha: float = 0.15,
         statistic: str = "mean", blocks: Callable | None = None):
    u, index = block_unimportance(model, calib, layers.names, statistic, blocks)
    return Allocation(around_one_level(layers, target, (1 - u / u.sum())[index], alpha), passes=1)

register_allocator("alphapruning", _alphapruning)
register_allocator("atp", _atp, needs_calib=True)
register_allocator("dlp", _dlp, needs_calib=True)

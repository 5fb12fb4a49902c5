"""The ``owl`` allocator (Yin et al., ICML 2024, "Outlier Weighed Layerwise Sparsity"): each
layer's outlier ratio D_l is the fraction of its Wanda scores above ``M`` × the layer's mean
score; the ratios, min-max scaled to [0, 2λ] and centred, raise the density of outlier-rich
layers by up to λ and lower the others' by as much. The authors give every decoder block one
ratio and average the densities over equal-sized blocks; with layers of unequal sizes the
centring is done so that the *weighted* budget is met exactly (one shift,
:func:`rdprune.core.allocators.shared_amount`, each layer clipped to [0, 1] and never below its
current sparsity). Defaults M = 5, λ = 0.08, the paper's.
"""
from __future__ import annotations

from torch import nn

from . import masks as M
from .allocators import Allocation, around_one_level, register_allocator
from .criteria import input_norms, scores


def outlier_ratios(model: nn.Module, calib, names, m: float = 5.0) -> dict[str, float]:
    """Fraction of each layer's Wanda scores above ``m`` × the layer's mean score."""
    layers = M.prunable(model)
    norms = input_norms(model, calib, names)
    out = {}
    for k in names:
        s = scores(layers[k], norms[k])
        out[k] = float((s > m * s.mean()).float().mean())
    return out


def _owl(model, target, budget, *, layers, calib, exclude=(), m: float = 5.0, lam: float = 0.08):
    if not layers.names:
        raise ValueError("owl needs matrix weights to allocate over")
    ratios = outlier_ratios(model, calib, layers.names, m)
    return Allocation(around_one_level(layers, target, [ratios[k] for k in layers.names], lam),
                      passes=1)

register_allocator("owl", _owl, needs_calib=True)

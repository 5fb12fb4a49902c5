"""``rp.rd``: rate–distortion pruning in one namespace (Xu et al., ICCV 2023).

    curves = rp.rd.curves(model, calib)                 # per-layer D_l(a), cached
    add = rp.rd.additivity(model, calib, curves)        # predicted vs measured joint distortion
    choice = rp.rd.solve(costs, distortions, budget)    # the exact multiple-choice knapsack
    amounts = rp.rd.refine(model, calib, amounts, 0.9)  # our measured-distortion refinement
    fewer = rp.rd.adaptive_curves(model, calib, [0.5, 0.7])  # an approximation: fewer amounts
    near = rp.rd.local_curves(model, calib)             # an approximation: block outputs
    some = rp.rd.sampled_curves(model, calib, tol=0.1)  # an approximation: fewer samples
    rp.rd.register_distortion("kl", per_sample_fn)      # a new measure, usable everywhere

What lives where: curves and additivity in :mod:`rdprune.core.curves` (their engine in
:mod:`rdprune.core.sweep`), measures in
:mod:`rdprune.core.distortion`, the DP in :mod:`rdprune.core.knapsack`, refinement in
:mod:`rdprune.core.refine`, the adaptive grid and block-local curves (approximations) in
:mod:`rdprune.core.adaptive` and :mod:`rdprune.core.local`.
"""
from .adaptive import adaptive_curves, sampled_curves
from .additivity import additivity, additivity_stats, predicted
from .curves import COLUMNS, PATHS, check_curves, curves, grid_amounts, without_head
from .distortion import distortion, register_distortion, unregister_distortion
from .distortion import identity as distortion_identity
from .distortion import names as distortions
from .knapsack import solve
from .local import local_curves
from .refine import refine
from .sweep import default_max_batch, fast_curves, pruned_counts, reference_curves, sweep

__all__ = ["COLUMNS", "PATHS", "adaptive_curves", "additivity", "additivity_stats", "check_curves", "curves",
           "default_max_batch", "distortion", "distortion_identity", "distortions", "fast_curves", "grid_amounts",
           "local_curves", "predicted", "pruned_counts", "reference_curves", "refine", "register_distortion",
           "sampled_curves", "solve", "sweep", "unregister_distortion", "without_head"]

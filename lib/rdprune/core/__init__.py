"""The core: math on any model, knowing no dataset and no zoo. Prunable weights (:mod:`.weights`)
and masks (:mod:`.masks`), distortion measures (:mod:`.distortion`), the downstream recompute
(:mod:`.downstream`), RD curves (:mod:`.curves`; their engine :mod:`.sweep`) and their
additivity (:mod:`.additivity`), the knapsack (:mod:`.knapsack`), allocators
(:mod:`.allocators`; OWL in :mod:`.owl`; AlphaPruning, ATP and DLP in :mod:`.layerwise`; the
EvoPress-style search in :mod:`.evo`), within-layer criteria (:mod:`.criteria`, SparseGPT in
:mod:`.sparsegpt`), the one allocate → apply path (:mod:`.pruning`), calibration batches
(:mod:`.batch`), ranks (:mod:`.distributed`), refinement (:mod:`.refine`) and generic training
loops (:mod:`.loops`). Nothing here imports :mod:`rdprune.structured` or :mod:`rdprune.lab`."""
from . import (
    additivity,
    allocators,
    batch,
    criteria,
    curves,
    distortion,
    distributed,
    downstream,
    evo,
    knapsack,
    layerwise,
    loops,
    masks,
    owl,
    pruning,
    rd,
    refine,
    sparsegpt,
    sweep,
    weights,
)

__all__ = ["additivity", "allocators", "batch", "criteria", "curves", "distortion", "distributed",
           "downstream", "evo", "knapsack", "layerwise", "loops", "masks", "owl", "pruning", "rd",
           "refine", "sparsegpt", "sweep", "weights"]

"""The core: math on any model, knowing no dataset and no zoo. Weights and masks
(:mod:`.masks`), distortion measures (:mod:`.distortion`), the downstream recompute
(:mod:`.downstream`), RD curves (:mod:`.curves`), the knapsack (:mod:`.knapsack`), allocators
(:mod:`.allocators`), refinement (:mod:`.refine`) and generic training loops (:mod:`.loops`).
Nothing here imports :mod:`rdprune.structured` or :mod:`rdprune.lab`."""
from . import allocators, curves, distortion, downstream, knapsack, loops, masks, rd, refine

__all__ = ["allocators", "curves", "distortion", "downstream", "knapsack", "loops", "masks", "rd",
           "refine"]

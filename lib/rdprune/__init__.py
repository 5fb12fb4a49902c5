"""rdprune: layer-adaptive neural-network pruning — rate–distortion allocation (Xu et al. 2023),
JointPruning (Liu et al. 2021) and HBGS/HBGTS (Purohit et al. 2024) — as a notebook lab.

    import rdprune as rp
    model = rp.train.pretrained("resnet20", "fashion_mnist")
    calib = rp.data.calibration("fashion_mnist", n=1024)
    net, record = rp.prune(model, "rd", 0.9, budget="params", calib=calib)

Three floors, each importing only those below it (a test checks): :mod:`rdprune.core` (weights and
masks, distortion, curves, the downstream recompute, the knapsack, allocators, refinement, training
loops), :mod:`rdprune.structured` (surgery, RD-filter, filter selection, HBGS, JointPruning) and
:mod:`rdprune.lab` (data, zoo, checkpoints, presets, the front door, schedules, reproduction,
plots, widgets; the CLI in ``__main__``). :mod:`rdprune.util` sits under all three.
"""
from . import core, lab, structured, util
from .core import allocators as allocation
from .core import criteria, distortion, masks, rd
from .core.allocators import allocate, register_allocator, unregister_allocator
from .core.criteria import register_criterion, unregister_criterion
from .lab import data, models, pipeline, plots, presets, reproduce, train, widgets
from .lab.front import evaluate_pruned, methods, prune, register_method
from .structured import filters, hbgs, jointpruning, rd_filter
from .util import NotApplicable

__all__ = ["NotApplicable", "allocate", "allocation", "core", "criteria", "data", "distortion",
           "evaluate_pruned", "filters", "hbgs", "jointpruning", "lab", "masks", "methods", "models",
           "pipeline", "plots", "presets", "prune", "rd", "rd_filter", "register_allocator",
           "register_criterion", "register_method", "reproduce", "structured", "train",
           "unregister_allocator", "unregister_criterion", "util", "widgets"]
__version__ = "0.1.0"

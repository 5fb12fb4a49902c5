"""Structured methods on top of the core: physical filter surgery and the width baselines
(:mod:`.surgery`, by Torch-Pruning), RD at filter granularity (:mod:`.rd_filter`, registered as the
``rd_filter`` allocator), filter selection with compensation (:mod:`.filters`), HBGS / HBGTS
(:mod:`.hbgs`) and JointPruning (:mod:`.jointpruning`). Imports the core, never the lab.

``rp.structured.count`` and the other surgery names are re-exported here."""
from . import filters, hbgs, jointpruning, rd_filter, surgery
from .surgery import (
    BUDGETS,
    check_convs,
    count,
    coupled_groups,
    dependency_graph,
    filter_scores,
    groups,
    kept_weights,
    l1_filters,
    latency_ms,
    output_convs,
    remove_filters,
    removed,
    uniform_width,
    widths,
)

__all__ = ["BUDGETS", "check_convs", "count", "coupled_groups", "dependency_graph", "filter_scores", "filters",
           "groups", "hbgs", "jointpruning", "kept_weights", "l1_filters", "latency_ms",
           "output_convs", "rd_filter", "remove_filters", "removed", "surgery", "uniform_width", "widths"]

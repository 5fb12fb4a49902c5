"""Figures of the structured methods (notebooks 04–06): JointPruning's search trace, accuracy
against FLOPs or parameters removed per method, HBGS's selection order and pruning time. Part of
:mod:`rdprune.plots`, which re-exports them."""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .layout import n_seeds, pyplot


def search_trace(trace: pd.DataFrame, title: str | None = None):
    """JointPruning search (:func:`rdprune.jointpruning.search`'s trace), one panel per quantity
    against the v-update: held-out loss (the 2N-sample mean during the search, and each vector
    re-scored with the final supernet), FLOPs / full, mean width ratio, blocks and input side.
    The returned vector (``best``) is starred."""
    plt, _ = pyplot()
    cols = [("loss", "held-out loss"), ("flops_ratio", "FLOPs / full network"),
            ("width", "mean width ratio"), ("depth", "blocks run"), ("resolution", "input side (px)")]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.4 * len(cols), 3.5))
    best = trace[trace["best"].astype(bool)] if "best" in trace else trace.iloc[0:0]
    for ax, (col, label) in zip(axes, cols):
        ax.plot(trace["iteration"], trace[col], marker=".", lw=1.2,
                label="during search (2N-sample mean)" if col == "loss" else None)
        y = "val_loss" if col == "loss" and "val_loss" in trace else col
        if y != col:
            ax.plot(trace["iteration"], trace[y], marker=".", lw=1.2,
                    label="re-scored with the final supernet")
        ax.scatter(best["iteration"], best[y], marker="*", s=180, color="crimson", zorder=5,
                   label="returned vector" if col == "loss" else None)
        ax.set_xlabel("v-update")
        ax.set_ylabel(label)
        if col == "loss":
            ax.legend(fontsize=7, frameon=False)
    fig.suptitle(title or "JointPruning search trace", y=1.02)
    fig.tight_layout()
    return fig


def method_scatter(df: pd.DataFrame, panels, *, hue: str = "method", dense: float | None = None,
                   title: str | None = None):
    """One scatter panel per ``(x, y, xlabel, ylabel)`` of ``panels``, a colour and marker per
    ``hue`` value (the comparison figures); ``dense`` draws the unpruned top-1 as a dotted line
    on panels whose y is a top-1 column."""
    plt, sns = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
    order = list(dict.fromkeys(df[hue]))
    seeds = n_seeds(df)
    colours = dict(zip(order, sns.color_palette(n_colors=len(order))))
    for i, (ax, (x, y, xlabel, ylabel)) in enumerate(zip(axes[0], panels)):
        shown = df
        if seeds > 1:  # means over seeds, with ± one standard deviation as error bars
            keys = [hue, "target"] if "target" in df else [hue]
            g = df.groupby(keys, sort=False)[[x, y]]
            shown, sd = g.mean().reset_index(), g.std().reset_index()
            for h, part in shown.groupby(hue, sort=False):
                err = sd[sd[hue] == h]
                ax.errorbar(part[x], part[y], xerr=err[x], yerr=err[y], fmt="none",
                            ecolor=colours[h], elinewidth=1.2, capsize=3, alpha=0.8)
            ylabel = f"{ylabel} (mean ± sd, {seeds} seeds)"
        sns.scatterplot(shown, x=x, y=y, hue=hue, style=hue, hue_order=order, style_order=order,
                        palette=colours, s=110, ax=ax, legend=i == len(panels) - 1)
        if dense is not None and "top1" in y:
            ax.axhline(dense, color="k", ls=":", lw=1, label="dense")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def selection_order(traces: Mapping[str, pd.DataFrame], layers: list[str] | None = None,
                    title: str | None = None):
    """HBGS/HBGTS layer selection: for each method's trace (:func:`rdprune.hbgs.prune`), which
    wrapped conv (y, forward order) lost filters in which round (x); circles prune output
    filters, crosses input channels."""
    plt, _ = pyplot()
    names = layers or list(dict.fromkeys(l for t in traces.values() for l in t["layer"]))
    pos = {n: i for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(traces), figsize=(4.2 * len(traces), 0.25 * len(names) + 2),
                             sharey=True, squeeze=False)
    for ax, (method, t) in zip(axes[0], traces.items()):
        for side, marker in (("out", "o"), ("in", "x")):
            g = t[t["side"] == side]
            ax.scatter(g["round"], g["layer"].map(pos), marker=marker, s=28, label=f"{side} side")
        ax.set_title(method)
        ax.set_xlabel("round")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=7)
    axes[0, 0].invert_yaxis()  # shared: the first layer on top
    axes[0, 0].legend(fontsize=7, frameon=False)
    fig.suptitle(title or "Which layer each greedy round pruned", y=1.02)
    fig.tight_layout()
    return fig


def pruning_time(results: pd.DataFrame, title: str | None = None):
    """Each method's pruning wall time (``prune_seconds``, mean over seeds) per target, as bars on
    a log scale; returns (figure, the table drawn)."""
    plt, _ = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    timing = results.pivot_table(index="method", columns="target", values="prune_seconds",
                                 sort=False)
    timing.plot.bar(ax=ax, logy=True)
    ax.set_ylabel("pruning wall time (s, log; mean over seeds)")
    ax.set_title(title or "Pruning time")
    ax.legend(title="removed", frameon=False)
    fig.tight_layout()
    return fig, timing

"""Figures for the notebooks: RD curves (also by transformer weight type), heat-map, allocation
bars, additivity scatter, accuracy (or a language model's perplexity) against sparsity, the
JointPruning search trace, HBGS selection order and per-method
comparison scatters. Every function returns a matplotlib ``Figure``; :func:`save` writes it
as PNG and SVG. Distortion spans decades, so it is always drawn on a log scale (zero distortion,
e.g. at amount 0, cannot be shown there and is left out).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import masks as M
from .layout import (  # noqa: F401 - plots' API
    LABEL_CHARS,
    LABEL_PT,
    MAX_FIG_WIDTH,
    PLOT_SHARE,
    WEIGHT_TYPES,
    keep_plot_area,
    n_seeds,
    pyplot,
    shade_blocks,
    short_count,
    short_names,
    thin_labels,
    weight_type,
)


def _layer_order(curves: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(curves["layer"]))


def rd_curves(curves: pd.DataFrame, layers: list[str] | None = None, title: str | None = None):
    """Log distortion against amount, one line per layer (colour runs from the first layer to
    the last)."""
    plt, sns = pyplot()
    names = layers or _layer_order(curves)
    df = curves[curves["layer"].isin(names) & (curves["distortion"] > 0)]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    palette = sns.color_palette("viridis", len(names))
    for color, name in zip(palette, names):
        g = df[df["layer"] == name].sort_values("amount")
        ax.plot(g["amount"], g["distortion"], color=color, lw=1.4,
                label=f"{name} ({int(g['n_weights'].iloc[0]):,} w)" if len(g) else name)
    ax.set_yscale("log")
    ax.set_xlabel("amount pruned in the layer (fraction of its weights)")
    ax.set_ylabel(f"output distortion ({curves.attrs.get('distortion', 'mse')}, log scale)")
    ax.set_xlim(0, 1)
    ax.set_title(title or "Rate–distortion curves: output distortion when one layer is pruned")
    ncol = 1 if len(names) <= 18 else 2
    ax.legend(title="layer (weights)", fontsize=7, title_fontsize=8, ncol=ncol,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


# a transformer weight's role from its name, first match wins (torchvision ViT, Hugging Face
# GPT-2 / BERT / ViT, timm): (role, name fragments)
def rd_curves_by_type(curves: pd.DataFrame, title: str | None = None):
    """One panel per weight role (:func:`weight_type`), a line per layer coloured from the first
    block to the last: do the qkv projections of every block behave alike, and are MLP weights
    cheaper to prune than attention's?"""
    plt, sns = pyplot()
    names = _layer_order(curves)
    roles = {k: weight_type(k) for k in names}
    shown = [r for r, _ in WEIGHT_TYPES + (("other", ()),) if r in roles.values()]
    df = curves[curves["distortion"] > 0]
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), sharex=True,
                             sharey=True, squeeze=False)
    for ax, role in zip(axes.flat, shown):
        members = [k for k in names if roles[k] == role]
        for color, name in zip(sns.color_palette("viridis", len(members)), members):
            g = df[df["layer"] == name].sort_values("amount")
            ax.plot(g["amount"], g["distortion"], color=color, lw=1.3, label=name)
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_title(f"{role} ({len(members)} layer{'s' if len(members) > 1 else ''})",
                     fontsize=10)
        if len(members) <= 8:
            ax.legend(fontsize=6, frameon=False, loc="lower right")
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("amount pruned in the layer")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"distortion ({curves.attrs.get('distortion', 'mse')})")
    fig.suptitle(title or "RD curves by weight type (colour: first block → last)")
    fig.tight_layout()
    return fig


# readable per-layer axes: a figure no wider than a notebook's output area (wider ones are shown
# shrunk, their labels with them), tick labels of at least LABEL_PT, at most LABEL_CHARS long


def rd_heatmap(curves: pd.DataFrame, title: str | None = None):
    """Layer × amount heat-map of log10 distortion (blank where the distortion is 0; an amount
    at which every layer's distortion is 0, such as 0 itself, is left out). Layers carry their
    :func:`short_names`; with more layers than lines fit, every k-th is labelled."""
    plt, sns = pyplot()
    names = _layer_order(curves)
    table = curves.pivot_table(index="layer", columns="amount", values="distortion",
                               aggfunc="first").reindex(names)
    logd = np.log10(table.where(table > 0))
    logd = logd.loc[:, logd.notna().any(axis=0)]
    logd.index = list(short_names(names).values())
    fig, ax = plt.subplots(figsize=(min(MAX_FIG_WIDTH, 9.5), min(14.0, 0.2 * len(names) + 2.6)))
    amounts = np.asarray(logd.columns, dtype=float)
    step = max(1, len(amounts) // 10)
    sns.heatmap(logd, ax=ax, cmap="magma", cbar_kws={"label": "log10 output distortion"},
                xticklabels=[f"{a:.2f}" if i % step == 0 else "" for i, a in enumerate(amounts)],
                yticklabels=True)
    ax.set_xlabel("amount pruned in the layer" + (" (from the first with a distortion)"
                                                  if len(amounts) < table.shape[1] else ""))
    ax.set_ylabel("layer (forward order)")
    ax.tick_params(axis="y", labelsize=LABEL_PT, labelrotation=0)
    ax.tick_params(axis="x", labelsize=LABEL_PT, labelrotation=90)
    ax.grid(False)
    ax.set_title(title or "Which layers are sensitive: log10 distortion per layer and amount")
    keep_plot_area(fig, ax)
    thin_labels(fig, ax, "y")
    return fig


def allocation_bars(amounts_by_method: Mapping[str, Mapping[str, float]], model,
                    title: str | None = None):
    """Per-layer amounts of several allocations (e.g. ``{"rd": ..., "lamp": ...}``) as grouped
    bars, layers in forward order on alternating bands per block. The x labels are the layers'
    :func:`short_names` with their weight counts (every k-th layer's when there are more than
    fit); the figure keeps a notebook's width and gives the bars more than half its height."""
    plt, sns = pyplot()
    every = M.prunable(model)
    layers = {k: every[k] for k in M.forward_order(model)}
    short = short_names(layers)
    rows = [dict(layer=name, method=method, amount=float(amounts.get(name, 0.0)))
            for method, amounts in amounts_by_method.items() for name in layers]
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(min(MAX_FIG_WIDTH, max(7.0, 0.16 * len(layers) + 4)), 5.0))
    sns.barplot(df, x="layer", y="amount", hue="method", order=list(layers), ax=ax)
    labels = [f"{short[k]} · {short_count(m.weight.numel())}" for k, m in layers.items()]
    shade_blocks(ax, list(short.values()))
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(labels, rotation=90, ha="center", fontsize=LABEL_PT)
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer (forward order) · weights")
    ax.set_ylabel("amount pruned (fraction of the layer)")
    ax.set_title(title or "Per-layer pruning amounts by allocation method")
    ax.legend(title="method", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    keep_plot_area(fig, ax)
    thin_labels(fig, ax, "x")
    return fig


def additivity_scatter(df: pd.DataFrame, title: str | None = None):
    """Log–log predicted (sum of single-layer curves) against measured joint distortion, with the
    identity line; the Pearson correlation of the logs is in the title. A ``model`` column, when
    present, colours the points by architecture."""
    plt, sns = pyplot()
    from ..core.additivity import additivity_stats
    ok = df[(df["predicted"] > 0) & (df["actual"] > 0)]
    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    hue = "model" if "model" in ok.columns else None
    style = "kind" if "kind" in ok.columns else None
    sns.scatterplot(ok, x="predicted", y="actual", hue=hue, style=style, ax=ax, s=36, alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if len(ok):
        lo = min(ok["predicted"].min(), ok["actual"].min()) / 1.5
        hi = max(ok["predicted"].max(), ok["actual"].max()) * 1.5
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity (perfectly additive)")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted distortion: sum of single-layer curves (log)")
    ax.set_ylabel("measured joint distortion (log)")
    parts = []
    groups = ok.groupby("model") if hue else [("all", ok)]
    for name, g in groups:
        s = additivity_stats(g) if len(g) > 1 else {"pearson_log": float("nan")}
        r = f"r = {s['pearson_log']:.3f}"
        parts.append(f"{name}: {r}" if hue else r)
    ax.set_title((title or "Additivity of layer distortions") + "\nPearson r of logs — "
                 + ", ".join(parts), fontsize=11)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def accuracy_vs_sparsity(table: pd.DataFrame, reference: pd.DataFrame | None = None,
                         title: str | None = None, label: str | None = None):
    """Top-1 against achieved sparsity, one line per method (line style per ``schedule`` when
    the table has one). ``reference``: the papers' numbers in wide form
    (``rdprune.reproduce.paper_numbers("RD", wide=True)``); its sparsity/top-1 pairs are drawn in
    a separate panel, labelled by dataset and model, because they are not comparable with ours."""
    plt, sns = pyplot()
    ref = _reference_points(reference) if reference is not None else None
    ncols = 2 if ref is not None and len(ref) else 1
    fig, axes = plt.subplots(1, ncols, figsize=(8.5 * ncols, 5.2), squeeze=False)
    ax = axes[0, 0]
    dense = table[table["method"] == "dense"]
    runs = table[table["method"] != "dense"]
    style = "schedule" if "schedule" in runs.columns and runs["schedule"].nunique() > 1 else None
    seeds = n_seeds(runs)
    if seeds > 1:  # the mean over seeds at each target, its standard deviation as a band
        sns.lineplot(runs.sort_values("target"), x="target", y="top1", hue="method", style=style,
                     markers=True, dashes=True, ax=ax, estimator="mean", errorbar="sd",
                     err_style="band")
    else:
        sns.lineplot(runs.sort_values("sparsity"), x="sparsity", y="top1", hue="method",
                     style=style, markers=True, dashes=True, ax=ax, estimator=None, sort=False)
    if len(dense):
        ax.axhline(float(dense["top1"].mean()), color="k", ls=":", lw=1, label="dense")
    ax.set_xlabel("sparsity (fraction of prunable weights removed)" if seeds == 1 else
                  f"target: fraction removed of the budget (mean ± sd over {seeds} seeds)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title or f"Our runs{f' — {label}' if label else ''}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if ncols == 2:
        ax2 = axes[0, 1]
        sns.scatterplot(ref, x="sparsity", y="top1", hue="setting", style="schedule", s=70, ax=ax2)
        ax2.set_xlabel("sparsity (fraction)")
        ax2.set_ylabel("top-1 accuracy")
        ax2.set_title("Reported by the RD authors (CIFAR-10 / ImageNet)\nnot comparable with "
                      "the left panel", fontsize=11)
        ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def perplexity_vs_sparsity(results: pd.DataFrame, dense: float | None = None,
                           title: str | None = None):
    """A language model's held-out perplexity (log scale) against achieved sparsity: colour per
    method, line style per within-layer ``criterion``; with several seeds, against the target
    (achieved sparsities differ a little per seed), means and ± one sd bands. ``dense``: the
    unpruned model's perplexity, dotted."""
    plt, sns = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    seeds = n_seeds(results)
    x = "target" if seeds > 1 else "sparsity"
    style = "criterion" if "criterion" in results else None
    sns.lineplot(results, x=x, y="perplexity", hue="method", style=style, markers=True,
                 errorbar="sd" if seeds > 1 else None, ax=ax)
    if dense is not None:
        ax.axhline(dense, color="k", ls=":", lw=1, label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (fraction of the prunable weights removed)" if seeds == 1 else
                  f"target sparsity (mean ± sd over {seeds} seeds)")
    ax.set_ylabel("held-out perplexity (log scale, lower is better)")
    ax.set_title(title or "Perplexity against sparsity")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def arena(results: pd.DataFrame, value: str, title: str | None = None):
    """One panel per within-layer criterion: ``value`` (top-1, or perplexity on a log scale)
    against the target sparsity, a line per allocator (means, ± one sd band over seeds)."""
    plt, sns = pyplot()
    crits = list(dict.fromkeys(results.criterion))
    fig, axes = plt.subplots(1, len(crits), figsize=(4.2 * len(crits) + 2.2, 4.4), sharey=True,
                             squeeze=False)
    seeds = n_seeds(results)
    for ax, c in zip(axes[0], crits):
        sns.lineplot(results[results.criterion == c], x="target", y=value, hue="method",
                     style="method", markers=True, dashes=False, ax=ax,
                     errorbar="sd" if seeds > 1 else None, legend=ax is axes[0][-1])
        ax.set_title(c)
        ax.set_xlabel("target sparsity")
        if value == "perplexity":
            ax.set_yscale("log")
    axes[0][0].set_ylabel(("held-out perplexity (log, lower is better)" if value == "perplexity"
                           else "top-1, zero-shot") + (f", mean ± sd of {seeds} seeds"
                                                       if seeds > 1 else ""))
    axes[0][-1].legend(title="allocator", fontsize=8, loc="upper left",
                       bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(title or "Allocators × criteria")
    fig.tight_layout()
    return fig


def _reference_points(wide: pd.DataFrame) -> pd.DataFrame:
    """Sparsity/top-1 pairs (fractions) of the settings that report both."""
    if not {"sparsity_pct", "top1_pct"} <= set(wide.columns):
        return pd.DataFrame(columns=["sparsity", "top1", "setting", "schedule"])
    wide = wide.dropna(subset=["sparsity_pct", "top1_pct"])
    return pd.DataFrame({"sparsity": wide["sparsity_pct"] / 100, "top1": wide["top1_pct"] / 100,
                         "setting": wide["model"] + ", " + wide["dataset"],
                         "schedule": wide["schedule"].replace("", "unstated")})


def save(fig, folder: str | Path, name: str) -> list[Path]:
    """Write ``fig`` as ``<folder>/<name>.png`` (150 dpi) and ``.svg``; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


# the structured methods' figures live in their own module; rp.plots is the one door
from .structured_plots import method_scatter, pruning_time, search_trace, selection_order  # noqa: E402,F401

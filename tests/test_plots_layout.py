"""rdprune.lab.plots: the per-layer figures stay readable on any model.

Each figure is drawn (Agg) for a small CNN, a ViT with long module paths, a small GPT-2 and a
48-matrix GPT-2; the plotting area must keep at least half the figure's height, visible tick
labels must not overlap one another nor run off the figure, and the figure must be narrow enough
to be shown unscaled in a notebook (wider figures are shrunk, and their labels with them).
"""
import itertools
import warnings

import numpy as np
import pandas as pd
import pytest

import rdprune as rp
from rdprune import masks as M
from rdprune.lab import plots
from rdprune.lab.widgets import Explorer

MAX_WIDTH_IN = 11  # about the width of a JupyterLab output area at 100 dpi
MIN_FONT_PT = 8


def gpt2_48():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=12, n_embd=64, n_head=2, vocab_size=256, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    import torch
    model = transformers.GPT2LMHeadModel(cfg).eval()
    M.remember(model, torch.randint(0, 256, (2, 32)))  # token ids: what its FLOPs are counted on
    return model


BUILDERS = {"resnet20": lambda: rp.models.build("resnet20"),
            "vit_tiny": lambda: rp.models.build("vit_tiny"),
            "lm_tiny": lambda: (pytest.importorskip("transformers"), rp.models.build("lm_tiny"))[1],
            "gpt2_48": gpt2_48}


def curves_for(model, grid=21, seed=0):
    """Convex increasing curves with zero distortion at amount 0, as measured curves have."""
    rng = np.random.default_rng(seed)
    amounts = np.linspace(0, 1, grid)
    return pd.concat([pd.DataFrame({"layer": k, "amount": amounts, "n_weights": m.weight.numel(),
                                    "distortion": rng.uniform(0.2, 5) * (np.exp(5 * amounts) - 1)})
                      for k, m in M.prunable(model).items()], ignore_index=True)


@pytest.fixture(scope="module", params=list(BUILDERS))
def case(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tied weights, FLOPs coverage
        model = BUILDERS[request.param]()
        M.layer_flops(model)
    return request.param, model, curves_for(model)


def figures(model, curves):
    """Each notebook's per-layer figure for ``model``."""
    amounts = {k: float(a) for k, a in zip(M.prunable(model), np.linspace(0.1, 0.95, len(M.prunable(model))))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = Explorer(model, curves, max_states=1 << 12)  # a coarse DP: the figure is what counts
        yield "allocation_bars", plots.allocation_bars({"rd": amounts, "lamp": amounts}, model, title="bars")
        yield "explorer", ex.view(0.8, "params", "lamp")[0]
        yield "rd_heatmap", plots.rd_heatmap(curves)


def visible_labels(axis):
    """The tick labels drawn: visible, not blank, at a tick inside the axis' view."""
    lo, hi = sorted(axis.get_view_interval())
    eps = 1e-9 * max(1.0, hi - lo)
    return [t for t, x in zip(axis.get_ticklabels(), axis.get_majorticklocs())
            if t.get_visible() and t.get_text().strip() and lo - eps <= x <= hi + eps]


def overlaps(a, b, tol=0.5):
    """Whether two window extents share more than ``tol`` pixels in both directions."""
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > tol) and (min(a.y1, b.y1) - max(a.y0, b.y0) > tol)


def test_per_layer_figures_are_readable(case):
    import matplotlib.pyplot as plt
    name, model, curves = case
    for fig_name, fig in figures(model, curves):
        where = f"{name}, {fig_name}"
        try:
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            fig_box = fig.bbox
            ax = fig.axes[0]
            share = ax.get_window_extent(renderer).height / fig_box.height
            assert share >= 0.5, f"{where}: the plotting area is {share:.0%} of the figure's height"
            assert fig.get_figwidth() <= MAX_WIDTH_IN, f"{where}: {fig.get_figwidth():.1f} in wide"
            for axis in (ax.xaxis, ax.yaxis):
                labels = visible_labels(axis)
                boxes = [t.get_window_extent(renderer) for t in labels]
                for t, b in zip(labels, boxes):
                    assert t.get_fontsize() >= MIN_FONT_PT, f"{where}: {t.get_text()!r} in {t.get_fontsize()} pt"
                    assert (b.x0 >= fig_box.x0 - 1 and b.x1 <= fig_box.x1 + 1 and b.y0 >= fig_box.y0 - 1
                            and b.y1 <= fig_box.y1 + 1), f"{where}: {t.get_text()!r} runs off the figure"
                for (ta, a), (tb, b) in itertools.combinations(zip(labels, boxes), 2):
                    assert not overlaps(a, b), f"{where}: {ta.get_text()!r} overlaps {tb.get_text()!r}"
            if fig_name != "rd_heatmap":  # every layer is on the x axis, by name or by tick
                assert len(ax.get_xticks()) == len(M.prunable(model))
                assert len(visible_labels(ax.xaxis)) >= min(len(M.prunable(model)), 20)
        finally:
            plt.close(fig)


def test_heatmap_has_no_blank_column():
    """Amount 0 has zero distortion everywhere, which a log scale cannot show: it is left out
    rather than drawn as an empty first column."""
    import matplotlib.pyplot as plt
    model = rp.models.build("resnet20")
    fig = plots.rd_heatmap(curves_for(model))
    try:
        data = fig.axes[0].collections[0].get_array()
        columns = np.asarray(data).reshape(len(M.prunable(model)), -1)
        assert not np.isnan(columns).all(axis=0).any()
    finally:
        plt.close(fig)


@pytest.mark.parametrize("names, expected", [
    (["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "fc"],
     ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "fc"]),
    (["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "transformer.h.1.attn.c_attn",
      "transformer.h.1.mlp.c_fc"], ["h.0.attn.c_attn", "h.0.mlp.c_fc", "h.1.attn.c_attn", "h.1.mlp.c_fc"]),
    (["conv_proj", "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
      "encoder.layers.encoder_layer_0.mlp.0", "encoder.layers.encoder_layer_1.self_attention.out_proj",
      "encoder.layers.encoder_layer_1.mlp.3", "heads.head"],
     ["conv_proj", "layer0.self_attn.in_proj", "layer0.mlp.0", "layer1.self_attn.out_proj", "layer1.mlp.3",
      "head"]),
])
def test_short_names(names, expected):
    assert list(plots.short_names(names).values()) == expected


def test_short_names_are_unique_and_capped():
    names = [f"features.denseblock{b}.denselayer{i}.conv{c}" for b in range(1, 5) for i in range(1, 25)
             for c in (1, 2)] + ["a.very_long_module_name_that_goes_on_and_on.weight_of_it"]
    short = plots.short_names(names, max_len=24)
    assert len(set(short.values())) == len(names)
    assert max(map(len, short.values())) <= 24

"""Interactive exploration of RD allocations from cached curves.

:class:`Explorer` holds a model and its RD curves; :meth:`Explorer.solve` re-solves the knapsack
for a new target in well under a millisecond (the DP table is built once per budget by
:class:`rdprune.core.allocators.RDSolver`, ~1 s, and every target after that is a backtrack; never over
the budget), and :meth:`Explorer.view` builds the figure
and the summary text for one setting. Both are plain functions of their arguments, usable and
testable without a browser; :meth:`Explorer.ui` is a thin ipywidgets layer over them.

    ex = Explorer(model, curves)
    amounts, predicted, sparsity, flops_left = ex.solve(0.9, budget="flops")
    ex.ui()   # in Jupyter: target slider, params/FLOPs toggle, comparison dropdown
"""
from __future__ import annotations

import asyncio
import html as _html
import io
import time
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..core import allocators as A
from ..core import masks as M
from ..core.allocators import RDSolver, allocate
from ..core.curves import check_curves

INTERACTIVE_MAX_STATES = 1 << 17
DEBOUNCE_S = 0.25  # a redraw waits this long after the last change (a held arrow key: ~30/s)


def compare_choices() -> tuple[str, ...]:
    """What RD can be compared with: every registered mask allocator but RD (read when asked, so
    an allocator registered after import is offered too)."""
    return ("none",) + tuple(m for m in A.names(structured=False) if m != "rd")


class Solution(NamedTuple):
    """One allocation: per-layer absolute amounts, the predicted output distortion (sum of the
    layers' curve values), the achieved sparsity over prunable weights and the fraction of
    prunable-layer FLOPs left (unstructured: density × dense FLOPs)."""
    amounts: dict
    predicted: float
    sparsity: float
    flops_left: float


class Explorer:
    """Re-solve RD (and baseline) allocations for ``model`` from its cached ``curves``."""

    def __init__(self, model, curves: pd.DataFrame, max_states: int = INTERACTIVE_MAX_STATES, *,
                 calib=None, name: str | None = None):
        check_curves(model, curves)  # once: the weights hash is not recomputed on every call
        self.model, self.max_states, self.calib = model, max_states, calib
        self.name = name or getattr(model, "arch", None) or type(model).__name__
        self.curves = curves.copy()
        self.curves.attrs = {k: v for k, v in curves.attrs.items() if k != "model_hash"}
        layers = M.prunable(model)
        self.names = list(layers)
        self.n = np.array([m.weight.numel() for m in layers.values()], dtype=np.int64)
        self.already = np.array([int((~M.mask_of(m)).sum()) for m in layers.values()])
        flops = M.layer_flops(model)
        self.flops = np.array([flops[k] for k in self.names], dtype=np.float64)
        per_weight = self.flops / self.n
        # every layer does as many FLOPs per weight (a transformer's linear layers, one token
        # each): a FLOPs target then allocates exactly as the same parameters target does
        self.flops_track_params = bool(np.allclose(per_weight, per_weight[0], rtol=1e-6))
        self._cache: dict[tuple, Solution] = {}
        self._solvers: dict[str, RDSolver] = {}
        grids = {k: g.sort_values("amount") for k, g in self.curves.groupby("layer", sort=False)}
        self._grid = {k: (g["amount"].to_numpy(float), g["distortion"].to_numpy(float))
                      for k, g in grids.items()}
        self.last: dict[str, Solution] = {}
        self.seconds: dict[str, float] = {}  # each method's own solve time, last call
        self.cached: dict[str, bool] = {}  # whether that call was answered from the memo

    def choices(self) -> tuple[str, ...]:
        """What this explorer can compare RD with: :func:`compare_choices`, less the allocators
        that need calibration inputs when none were given (``calib=``)."""
        return tuple(m for m in compare_choices()
                     if m == "none" or self.calib is not None or not A.get(m).needs_calib)

    def solve(self, target: float, budget: str = "params", method: str = "rd") -> Solution:
        """Allocate with ``method`` at ``target`` sparsity of ``budget`` ("params" or "flops");
        results are memoised per (method, target, budget)."""
        key = (method, id(A.get(method).fn), round(float(target), 6), budget)  # re-registered: new
        tic = time.perf_counter()
        self.cached[method] = key in self._cache
        if key not in self._cache:
            if method == "rd":
                amounts = self._rd(float(target), budget)
            else:
                extra = {"calib": self.calib} if A.get(method).needs_calib else {}
                amounts = allocate(method, self.model, float(target), budget, curves=self.curves,
                                   **extra)
            self._cache[key] = self.describe(amounts)
        self.seconds[method] = time.perf_counter() - tic
        return self._cache[key]

    def _rd(self, target: float, budget: str) -> dict[str, float]:
        """RD from a DP table built once per budget (:class:`rdprune.core.allocators.RDSolver`), so a
        new target is a backtrack, not a new DP."""
        if budget not in self._solvers:
            self._solvers[budget] = RDSolver(self.model, self.curves, budget,
                                             max_states=self.max_states)
        return self._solvers[budget].amounts(target)

    def describe(self, amounts: dict[str, float]) -> Solution:
        """Predicted distortion, sparsity and FLOPs left of any per-layer amounts."""
        a = np.array([float(amounts.get(k, 0.0)) for k in self.names])
        pruned = np.maximum([M.n_pruned(x, n) for x, n in zip(a, self.n)], self.already)
        density = 1.0 - pruned / self.n
        pred = sum(float(np.interp(amounts[k], *self._grid[k])) for k in amounts if k in self._grid)
        return Solution(dict(amounts), pred,
                        float(pruned.sum() / self.n.sum()),
                        float((self.flops * density).sum() / self.flops.sum()))

    def view(self, target: float, budget: str = "params", compare: str = "lamp"):
        """(figure, summary HTML, {method: Solution}) for one setting: RD's per-layer amounts
        as bars beside ``compare``'s (``"none"`` for RD alone)."""
        from . import plots
        if compare not in self.choices():
            needs = compare in compare_choices()  # known, but needs calibration inputs
            raise ValueError(f"{compare!r} needs calibration inputs: build the Explorer with "
                             f"calib=" if needs else f"unknown comparison {compare!r}; choose "
                             f"one of {', '.join(self.choices())}")
        methods = ["rd"] + ([compare] if compare != "none" else [])
        sols = {m: self.solve(target, budget, m) for m in methods}
        kind = "parameters" if budget == "params" else "FLOPs"
        fig = plots.allocation_bars({m: s.amounts for m, s in sols.items()}, self.model,
                                    title=f"{self.name}: per-layer amounts at {target:.1%} "
                                          f"fewer {kind}")
        rows = "".join(f"<tr><td><b>{m}</b></td><td>{s.predicted:.4g}</td><td>{s.sparsity:.2%}"
                       f"</td><td>{s.flops_left:.2%}</td></tr>" for m, s in sols.items())
        html = (f"<b>{self.name}</b>, {target:.1%} fewer {kind}"
                "<table><tr><th>method</th><th>predicted distortion</th><th>sparsity</th>"
                f"<th>FLOPs left</th></tr>{rows}</table>"
                "<small>" + ", ".join(f"{m}: remembered from an earlier solve" if self.cached[m]
                                      else f"{m} solved in {self.seconds[m] * 1000:.1f} ms"
                                      for m in sols) + "</small>")
        if budget == "flops" and self.flops_track_params:
            html += ("<br><small><b>FLOPs and parameters give the same allocation here</b>: every "
                     "prunable layer does the same FLOPs per weight, so removing a fraction of the "
                     "FLOPs removes the same fraction of the weights.</small>")
        self.last = sols
        return fig, html, sols

    def names_html(self) -> str:
        """A collapsed table of the figure's short layer names, each with its full name and
        weight count (:func:`rdprune.lab.plots.short_names`)."""
        from . import plots
        short = plots.short_names(M.forward_order(self.model))
        size = dict(zip(self.names, self.n))
        rows = "".join(f"<tr><td>{_html.escape(s)}</td><td><code>{_html.escape(k)}</code></td>"
                       f"<td style='text-align:right'>{size[k]:,}</td></tr>"
                       for k, s in short.items())
        return ("<details><summary>layer names in the figure (short → full)</summary>"
                "<table><tr><th>label</th><th>layer</th><th>weights</th></tr>"
                f"{rows}</table></details>")

    def ui(self, target: float = 0.9, budget: str = "params", compare: str = "lamp"):
        """An ipywidgets box: target slider (steps of 0.005), params/FLOPs toggle, comparison
        dropdown, the bars as an image that scales to the output's width, the summary table and
        a collapsed legend of the layers' full names. A change shows "updating…" at once and
        redraws :data:`DEBOUNCE_S` after the last change, at the setting then (a held arrow key
        draws once, at the value it stops on; without a running event loop, e.g. in a plain
        script, every change redraws at once). ``box.controls`` holds the widgets,
        ``box.redraw()`` draws the current setting now."""
        import ipywidgets as W
        label = {"description_width": "initial"}
        # the slider takes what the row leaves (260 to 540 px); the "budget" label and its
        # toggle keep their own width and stay together, so at a narrow output the row wraps
        # between the slider and them, never inside a label
        slider = W.FloatSlider(value=target, min=0.0, max=0.995, step=0.005,
                               description="target (fraction removed)", continuous_update=False,
                               readout_format=".3f", style=label,
                               layout=W.Layout(width="auto", flex="1 1 420px", min_width="260px",
                                               max_width="540px"))
        toggle = W.ToggleButtons(options=[("parameters", "params"), ("FLOPs", "flops")],
                                 value=budget, style={"button_width": "110px"},
                                 tooltips=["fraction of the prunable weights removed",
                                           "fraction of the prunable layers' FLOPs removed"],
                                 layout=W.Layout(width="auto", flex="0 0 auto"))
        if compare not in self.choices():
            self.view(target, budget, compare)  # the ValueError that says why
        dropdown = W.Dropdown(options=list(self.choices()), value=compare,
                              description="compare with", style=label,
                              layout=W.Layout(width="260px"))
        budget_label = W.Label("budget", layout=W.Layout(width="auto", flex="0 0 auto",
                                                         margin="0 4px 0 14px"))
        status = W.HTML("", layout=W.Layout(margin="0 0 0 12px"))
        info, legend = W.HTML(), W.HTML(self.names_html())
        figure = W.Image(format="png", layout=W.Layout(max_width="100%", height="auto",
                                                       align_self="flex-start"))  # not stretched
        state: dict = {"drawn": None, "pending": None}

        def draw():
            state["pending"] = None
            setting = (slider.value, toggle.value, dropdown.value)  # the latest, not an event's
            if state["drawn"] != setting:
                try:
                    fig, html, _ = self.view(*setting)
                except ValueError as e:  # e.g. a target the constraints cannot reach
                    figure.value = b""  # no bars of an earlier setting under the message
                    info.value = f"<b>cannot allocate:</b> {_html.escape(str(e))}"
                    state["drawn"] = None
                else:
                    figure.value = _png(fig)  # the bars, then the table: both show ``setting``
                    info.value = html
                    state["drawn"] = setting
            status.value = ""

        def changed(_change=None):
            status.value = "<i>updating…</i>"
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a script, a test): draw now
                draw()
                return
            if state["pending"] is not None:
                state["pending"].cancel()
            state["pending"] = loop.call_later(DEBOUNCE_S, draw)

        for w in (slider, toggle, dropdown):
            w.observe(changed, names="value")
        draw()
        heading = W.HTML(f"<b>RD explorer — {_html.escape(str(self.name))}</b>: move the target, "
                         "switch the budget, pick a method to compare with")
        row = W.HBox([slider, W.HBox([budget_label, toggle],
                                     layout=W.Layout(flex="0 0 auto", align_items="center"))],
                     layout=W.Layout(flex_flow="row wrap", align_items="center", width="100%"))
        box = W.VBox([W.HBox([heading, status], layout=W.Layout(align_items="center")), row,
                      dropdown, figure, info, legend])
        box.controls = dict(target=slider, budget=toggle, compare=dropdown, info=info,
                            figure=figure, status=status, legend=legend)
        box.redraw = draw
        return box


def _png(fig) -> bytes:
    """``fig`` as PNG bytes at 100 dpi (a 10.5 in figure: 1050 px, shown scaled to the
    output's width); the figure is closed."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

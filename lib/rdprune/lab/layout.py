"""Per-layer figures that read well on any model: short unique layer names, a transformer
layer's role, labels thinned to what fits, blocks shaded, and a plotting area that keeps its
share of the figure."""
from __future__ import annotations

import numpy as np

MAX_FIG_WIDTH = 10.5
LABEL_PT = 8
LABEL_CHARS = 26
PLOT_SHARE = 0.55  # the least share of the figure's height the plotting area keeps
_WORDS = (("self_attention", "self_attn"), ("attention", "attn"))


def _segment_runs(names: list[list[str]]):
    """For each path prefix, the distinct segments that follow it."""
    after: dict[tuple, set] = {}
    for parts in names:
        for i in range(len(parts)):
            after.setdefault(tuple(parts[:i]), set()).add(parts[i])
    return after


def _numbered(segment: str, siblings: set) -> str:
    """``encoder_layer_3`` among ``encoder_layer_0..5`` → ``layer3``: a numbered segment keeps
    the last word of the stem its siblings share, and its number."""
    stem = segment.rstrip("0123456789")
    if stem == segment or not stem or len(siblings) < 2:
        return segment
    if not all(s.rstrip("0123456789") == stem for s in siblings):
        return segment
    words = [w for w in stem.replace("-", "_").split("_") if w]
    return (words[-1] if words else "") + segment[len(stem):]


def _shorten(parts: list[str], after: dict) -> str:
    kept: list[str] = []
    for i, seg in enumerate(parts):
        leaf = i == len(parts) - 1
        only_child = len(after[tuple(parts[:i])]) == 1
        # a container with one thing in it, ahead of the numbered blocks ("encoder", "heads")
        chain = (not leaf and len(after[tuple(parts[:i + 1])]) == 1
                 and not any(c.isdigit() for c in "".join(kept) + seg))
        if not leaf and (only_child or chain):
            # a part that tells no two layers apart; a bare block number keeps it ("h.0")
            nxt = parts[i + 1]
            if nxt.isdigit() and len(after[tuple(parts[:i + 1])]) > 1 and len(seg) <= 8:
                kept.append(seg)
            continue
        seg = _numbered(seg, after[tuple(parts[:i])])
        if leaf and seg.endswith("_weight") and len(seg) > 7:
            seg = seg[:-7]
        for word, short in _WORDS:
            seg = seg.replace(word, short)
        kept.append(seg)
    return ".".join(kept)


def _ellipsize(text: str, max_len: int) -> str:
    if len(text) <= max_len:
        return text
    head = (max_len - 1) // 2
    return text[:head] + "…" + text[len(text) - (max_len - 1 - head):]


def _trim(text: str, max_len: int) -> str:
    """Leave out leading parts without a number (``features.``) while ``text`` is too long."""
    parts = text.split(".")
    while len(".".join(parts)) > max_len and len(parts) > 1 and not any(
            c.isdigit() for c in parts[0]):
        parts = parts[1:]
    return ".".join(parts)


def short_names(names, max_len: int = LABEL_CHARS) -> dict[str, str]:
    """Short, unique labels for layer names, in order: path parts that tell no two layers apart
    are left out (``transformer.h.0.attn.c_attn`` → ``h.0.attn.c_attn``), numbered blocks keep
    their stem's last word and number (``encoder_layer_3`` → ``layer3``), a ``_weight`` suffix
    and ``attention`` are shortened; a name still longer than ``max_len`` characters loses its
    leading parts without a number, then its middle to an ellipsis. Names whose short forms
    collide keep their full (ellipsized) form, numbered if those collide too."""
    names = list(names)
    split = [n.split(".") for n in names]
    after = _segment_runs(split)
    short = {n: _ellipsize(_trim(_shorten(p, after), max_len), max_len)
             for n, p in zip(names, split)}
    counts: dict[str, int] = {}
    for v in short.values():
        counts[v] = counts.get(v, 0) + 1
    for n in names:
        if counts[short[n]] > 1:
            short[n] = _ellipsize(n, max_len)
    if len(set(short.values())) < len(names):  # ellipsized full names collide: number them
        short = {n: _ellipsize(f"{i}:{n}", max_len) for i, n in enumerate(names)}
    return short


def _block(label: str) -> str | None:
    """The block a short layer name belongs to: its path up to the first part with a number
    (``h.3`` for ``h.3.attn.c_attn``, ``layer2`` for ``layer2.1.conv1``); None without one."""
    parts = label.split(".")
    for i, p in enumerate(parts[:-1]):
        if any(c.isdigit() for c in p):
            return ".".join(parts[:i + 1])
    return None


def shade_blocks(ax, labels: list[str], axis: str = "x"):
    """Every other block of layers (:func:`_block`) on a light band, so blocks read as groups."""
    blocks = [_block(l) for l in labels]
    starts = [i for i in range(len(blocks)) if i == 0 or blocks[i] != blocks[i - 1]]
    shade = False
    for a, b in zip(starts, starts[1:] + [len(blocks)]):
        if blocks[a] is None or b - a < 2:
            continue
        if shade:
            span = ax.axvspan if axis == "x" else ax.axhspan
            span(a - 0.5, b - 0.5, color="0.92", zorder=0, lw=0)
        shade = not shade


def thin_labels(fig, ax, axis: str = "x"):
    """Blank every tick label but each k-th, k the least that keeps the labels' lines apart."""
    fig.canvas.draw()
    ticks = (ax.xaxis if axis == "x" else ax.yaxis).get_ticklabels()
    shown = [t for t in ticks if t.get_text()]
    if len(shown) < 2:
        return
    box = ax.get_window_extent()
    span = (box.width if axis == "x" else box.height) / len(ticks)
    line = max(t.get_fontsize() for t in shown) * 1.3 * fig.dpi / 72
    step = int(np.ceil(line / span))
    if step > 1:
        for i, t in enumerate(ticks):
            t.set_visible(i % step == 0)


def keep_plot_area(fig, ax, share: float = PLOT_SHARE):
    """Grow the figure's height until ``ax`` takes ``share`` of it (labels, title and legend
    keep their own size), then lay it out again."""
    fig.tight_layout()
    fig.canvas.draw()
    height = fig.get_figheight()
    plot = ax.get_window_extent().height / fig.dpi
    if plot < share * height:
        other = height - plot
        fig.set_figheight(other / (1 - share) + 0.1)
        fig.tight_layout()


def short_count(n: int) -> str:
    """A weight count in three significant digits: 864, 27.6k, 1.18M."""
    if n < 1000:
        return str(n)
    return f"{n / 1e3:.3g}k" if n < 1e6 else f"{n / 1e6:.3g}M"


WEIGHT_TYPES = (("qkv", ("in_proj_weight", "c_attn", ".qkv", "query", ".key", ".value")),
                ("attention output", ("out_proj", "attn.c_proj", "attn.proj", "attention.output")),
                ("MLP up", ("mlp.0", "c_fc", "fc1", "intermediate.dense", "linear1")),
                ("MLP down", ("mlp.3", "mlp.c_proj", "fc2", "output.dense", "linear2")),
                ("head", ("head", "classifier", "lm_head")),
                ("embedding", ("conv_proj", "patch_embed", "embeddings")))


def weight_type(name: str) -> str:
    """A transformer layer's role (:data:`WEIGHT_TYPES`: qkv, attention output, MLP up,
    MLP down, head, embedding), ``other`` when the name matches none."""
    for role, parts in WEIGHT_TYPES:
        if any(p in name for p in parts):
            return role
    return "other"


def pyplot():
    """matplotlib's pyplot and seaborn, with the figures' theme set."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def n_seeds(df) -> int:
    """How many seeds a results table holds (1 without a ``seed`` column)."""
    return int(df["seed"].nunique()) if "seed" in df and len(df) else 1

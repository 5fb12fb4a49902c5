"""The result tables of ``docs/results.md`` (and README's summary), rendered from the files a run
wrote, so that no published number can contradict them.

- :func:`tables`: the tables of a results folder (``results/<preset>/`` or the committed copy
  under ``docs/results/<preset>/``), means ± sd over seeds, with the computed conclusions of
  :mod:`rdprune.lab.report`;
- :func:`update_blocks` writes them between markers ``<!-- table:NAME -->`` …
  ``<!-- /table:NAME -->``; :func:`publish` (``python -m rdprune report --publish``) copies a
  run's CSVs into ``docs/results/`` and rewrites the blocks of :data:`PAGES` (``docs/results.md``
  holds every table, README the few of its summary); a test keeps both equal to the committed
  CSVs;
- :func:`compare`: a rerun's top-1s against the committed ones, within :data:`TOLERANCE_PTS`.
"""
from __future__ import annotations

import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..util import REPO
from .report import LM_GOALS, VIT_GOALS, comparison_verdict, goal, rd_verdict, spread_table

# the pages whose ``<!-- table:NAME -->`` blocks :func:`publish` rewrites
PAGES = (REPO / "docs" / "results.md", REPO / "README.md")

# (notebook folder, CSV) pairs the tables are rendered from
SOURCES = {"03_rd_vs_baselines": ["results.csv"], "04_jointpruning": ["targets.csv", "ablation.csv"],
           "05_hbgs": ["results.csv"], "06_comparison": ["results.csv"],
           "07_transformers": ["vit.csv", "lm.csv"],
           "08_arena": ["arena.csv", "verdict.csv", "additivity_audit.csv", "cost.csv"],
           "summary": []}



def markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub table of ``df`` (index as the first column), floats to ``digits`` places."""
    df = df.reset_index()
    fmt = [(lambda v: f"{v:.{digits}f}" if isinstance(v, float) and not math.isnan(v) else
            ("–" if isinstance(v, float) else str(v)))] * len(df.columns)
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(f(v) for f, v in zip(fmt, row)) + " |" for row in df.itertuples(
        index=False)]
    return "\n".join([head, rule, *body])


def block_prefix(preset: str) -> str:
    """Block names of a preset's tables: ``zero_shot`` for quick (and folders that are not
    a preset's), ``full_zero_shot`` for full..."""
    from .presets import NOTEBOOKS
    return f"{preset}_" if preset in NOTEBOOKS and preset != "quick" else ""


def _pct_column(fraction: float, places: int) -> str:
    """A sparsity as a column head, with more places only where rounding would change it
    (0.955 is 95.5 %, not 96 %; 0.98847 is 98.85 %)."""
    v = 100 * float(fraction)
    for p in range(places, 2):
        if abs(round(v, p) - v) < 1e-9:
            return f"{v:.{p}f}%"
    return f"{v:.2f}%"


def tables(root: str | Path, prefix: str | None = None) -> dict[str, str]:
    """The result tables of a results folder (``results/<preset>`` or a committed copy): means ±
    standard deviations over the seeds a run has (plain values for one seed). Block names get
    ``prefix`` (default: :func:`block_prefix` of the folder's name)."""
    root, out = Path(root), {}
    prefix = block_prefix(root.name) if prefix is None else prefix
    zs = root / "03_rd_vs_baselines" / "results.csv"
    if zs.is_file():
        r = pd.read_csv(zs)
        for key, schedule, places in (("zero_shot", "zero-shot", 0), ("iterative", "iterative", 1)):
            part = r[r.schedule == schedule]
            if len(part):
                z = spread_table(part, "method", "target", "top1", label=f"top-1, {schedule}")
                z.columns = [_pct_column(c, places) for c in z.columns]
                z.index.name += ", sparsity →"
                out[key] = markdown(z)
        if "n_test" in r:  # the conclusion, computed (docs/results.md quotes it per preset)
            from . import data as D
            chance = 1 / D.info(r["dataset"].iloc[0]).num_classes
            out["verdict"] = rd_verdict(r, int(r["n_test"].iloc[0]), chance=chance)
    cmp = root / "06_comparison" / "results.csv"
    if cmp.is_file():
        r = pd.read_csv(cmp)
        if "note" in r:  # methods that could not prune the network (the notebook says why)
            r = r[r["note"].isna()]
        shown = {"top1_recal": "top-1 pruned + BN", "top1_after": "top-1 fine-tuned"}
        cols = {}
        for v, name in shown.items():
            w = spread_table(r, "method", "target", v)
            cols.update({f"{name} @ {t:.0%}": w[t] for t in sorted(r.target.unique())})
        means = r.pivot_table(index="method", columns="target", sort=False,
                              values=["speedup", "prune_seconds"], aggfunc="mean")
        for v, name, f in (("speedup", "CPU speed-up", "{:.1f}×"),
                           ("prune_seconds", "pruning s", "{:.0f}")):
            cols.update({f"{name} @ {t:.0%}": means[(v, t)].map(f.format)
                         for t in sorted(r.target.unique())})
        w = pd.DataFrame(cols).reindex(list(dict.fromkeys(r.method)))
        w.index.name = "FLOPs removed →" + ("" if "seed" not in r or r.seed.nunique() == 1 else
                                           f" (mean ± sd, {r.seed.nunique()} seeds)")
        out["comparison"] = markdown(w, 3)
        if "n_test" in r:
            out["comparison_verdict"] = comparison_verdict(r, int(r["n_test"].iloc[0]))
    hb = root / "05_hbgs" / "results.csv"
    if hb.is_file():
        r = pd.read_csv(hb)
        cols = {}
        for v, name in {"top1_recal": "top-1 pruned + BN", "top1_after": "top-1 fine-tuned"}.items():
            w = spread_table(r, "method", "target", v)
            cols.update({f"{name} @ {t:.0%}": w[t] for t in sorted(r.target.unique())})
        steps = r.pivot_table(index="method", columns="target", values="round_steps",
                              aggfunc="mean", sort=False)
        cols.update({f"steps inside @ {t:.0%}": steps[t].map("{:.0f}".format)
                     for t in sorted(r.target.unique())})
        w = pd.DataFrame(cols).reindex(list(dict.fromkeys(r.method)))
        w.index.name = "parameters removed →"
        out["hbgs"] = markdown(w, 3)
        if "n_test" in r:
            out["hbgs_verdict"] = comparison_verdict(r, int(r["n_test"].iloc[0]), "parameters")
    ar = root / "08_arena"
    if (ar / "arena.csv").is_file():
        r = pd.read_csv(ar / "arena.csv")
        for m, part in r.groupby("model", sort=False):
            value = "perplexity" if part["perplexity"].notna().any() else "top1"
            part = part.assign(column=part.criterion + " @ " + part.target.map("{:.0%}".format))
            z = spread_table(part, "method", "column", value, digits=2 if value == "perplexity"
                             else 3, label=f"{m}: {'perplexity' if value == 'perplexity' else 'top-1'}")
            out[f"arena_{m}"] = markdown(z.reindex(list(dict.fromkeys(part.method))))
    if (ar / "verdict.csv").is_file():
        v = pd.read_csv(ar / "verdict.csv")
        v["where"] = v.model + ", " + v.criterion + " @ " + v.target.map("{:.0%}".format)
        out["arena_verdict"] = markdown(v.pivot_table(index="where", columns="method",
                                                      values="verdict", aggfunc="first",
                                                      sort=False))
    if (ar / "additivity_audit.csv").is_file():
        a = pd.read_csv(ar / "additivity_audit.csv")
        a["target"] = a.target.map("{:.0%}".format)
        out["arena_additivity"] = markdown(a.set_index("model"), 3)
    if (ar / "cost.csv").is_file():
        c = pd.read_csv(ar / "cost.csv")
        w = c.pivot(index="method", columns="model", values=["seconds", "passes"])
        w.columns = [f"{v} ({m})" for v, m in w.columns]
        out["arena_cost"] = markdown(w, 1)
    # 04_jointpruning_widths: notebook 04 on MobileNetV2 at three width multipliers' FLOPs
    # (docs/results.md gives its command; not a preset's own run)
    for key, folder in (("jointpruning", "04_jointpruning"),
                        ("jointpruning_widths", "04_jointpruning_widths")):
        if (root / folder / "targets.csv").is_file():
            out[key] = jointpruning_table(root / folder)
    tf = root / "07_transformers"
    if (tf / "vit.csv").is_file():
        r = pd.read_csv(tf / "vit.csv")
        z = spread_table(r, "method", "target", "top1", label="top-1, zero-shot")
        z.columns = [f"{c:.0%}" for c in z.columns]
        z.index.name += ", sparsity →"
        out["transformers_vit"] = markdown(z)
    if (tf / "lm.csv").is_file():
        r = pd.read_csv(tf / "lm.csv")
        r["method + criterion"] = r.method + " + " + r.criterion
        z = spread_table(r, "method + criterion", "target", "perplexity", digits=2,
                         label="held-out perplexity")
        z.columns = [f"{c:.0%}" for c in z.columns]
        z.index.name += ", sparsity →"
        out["transformers_lm"] = markdown(z)
        goals = [goal(r, "rd", "owl", "perplexity", LM_GOALS, by="criterion", lower=True)
                 .rename(columns={"rd": "rd_value", "owl": "other_value"})
                 .assign(model="lm_tiny", value="perplexity", other="owl")]
        if (tf / "vit.csv").is_file():
            v = pd.read_csv(tf / "vit.csv")
            goals.append(goal(v, "rd", "lamp", "top1", VIT_GOALS, n_test=int(v["n_test"].iloc[0]))
                         .rename(columns={"rd": "rd_value", "lamp": "other_value"})
                         .assign(model="vit_tiny", value="top-1", criterion="magnitude",
                                 other="lamp"))
        goals = [g for g in goals if len(g)]  # targets a run did not measure give no rows
        if goals:
            cols = ["model", "value", "criterion", "target", "other", "rd_value", "other_value",
                    "difference", "n_seeds", "verdict"]
            g = pd.concat(goals, ignore_index=True)[cols]
            g["target"] = g["target"].map("{:.0%}".format)
            out["transformers_goals"] = markdown(g.set_index("model"), 4)
    summary = root / "summary.csv"
    if summary.is_file():
        t = pd.read_csv(summary)[["notebook", "status", "seconds"]].set_index("notebook")
        t["minutes"] = t.pop("seconds") / 60
        t.loc["all"] = ["", t["minutes"].sum()]
        out["times"] = markdown(t, 1)
    return {prefix + k: v for k, v in out.items()}


def jointpruning_table(folder: Path) -> str:
    """Notebook 04's networks at each FLOPs target: every searched variant (the ablation's at the
    first target) and the uniform width network, MFLOPs and top-1 after the same retraining, and
    each variant against the uniform network (points, and the verdict of :func:`report.goal`)."""
    parts = [pd.read_csv(folder / f) for f in ("ablation.csv", "targets.csv")
             if (folder / f).is_file()]
    r = pd.concat(parts, ignore_index=True).drop_duplicates(["model", "method", "target", "seed"])
    order = [m for m in dict.fromkeys(r.method) if m != "uniform width"] + ["uniform width"]
    n_test = int(r["n_test"].iloc[0]) if "n_test" in r else None
    rows, uniform = [], "uniform width"
    r = r.assign(_model=pd.Categorical(r.model, list(dict.fromkeys(r.model)))).sort_values(
        ["_model", "target"], kind="stable")
    for (model, t), part in r.groupby(["model", "target"], sort=False):
        wm = part.loc[part.method == uniform, "width_multiplier"]
        wm = wm.iloc[0] if len(wm) and wm.iloc[0] == wm.iloc[0] else None
        where = f"{t:.1%} (the {wm:g}× network's)" if wm else f"{t:.0%}"
        for method in [m for m in order if m in set(part.method)]:
            p = part[part.method == method]
            vs = goal(part, method, uniform, "top1", [t], n_test=n_test) \
                if method != uniform else pd.DataFrame()
            rows.append({"model": model, "FLOPs removed": where, "method": method,
                         "MFLOPs": f"{p['flops'].mean() / 1e6:.1f}", "top-1": p["top1"].mean(),
                         "vs uniform (points)": f"{100 * vs['difference'].iloc[0]:+.1f}"
                         if len(vs) else "–",
                         "verdict": vs["verdict"].iloc[0] if len(vs) else ""})
    n_seeds = int(r["seed"].nunique()) if "seed" in r else 1
    table = pd.DataFrame(rows).set_index("model")
    table.columns = [c if c != "top-1" or n_seeds == 1 else f"top-1 (mean of {n_seeds} seeds)"
                     for c in table.columns]
    return markdown(table, 3)


def update_blocks(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each ``<!-- table:NAME -->…<!-- /table:NAME -->`` block replaced (blocks the
    text does not have are left out)."""
    for name, table in blocks.items():
        if text.count(f"<!-- table:{name} -->") > 1:  # the pattern would eat what lies between
            raise ValueError(f"the page has the block {name!r} twice; keep one")
        pattern = re.compile(rf"(<!-- table:{name} -->\n)(?:.*?\n)?(<!-- /table:{name} -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    return text


def publish(results: str | Path, docs: str | Path,
            pages: str | Path | Sequence[str | Path] | None = None) -> list[str]:
    """Copy the CSVs the tables are rendered from into ``docs`` (committed) and rewrite the
    blocks of ``pages`` (default :data:`PAGES`) from them; returns the names of the blocks
    rendered."""
    results, docs = Path(results), Path(docs)
    for folder, files in SOURCES.items():
        for name in files:
            src, dst = results / folder / name, docs / folder / name
            if src.is_file() and not (dst.exists() and dst.samefile(src)):
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
    if (results / "summary.csv").is_file():  # without the run's own output paths
        docs.mkdir(parents=True, exist_ok=True)
        cols = ["notebook", "status", "seconds", "reason"]
        summary = pd.read_csv(results / "summary.csv", keep_default_na=False)[cols]
        old = docs / "summary.csv"
        if old.is_file() and not old.samefile(results / "summary.csv"):
            # a run of some notebooks (--only) replaces their rows and keeps the others'
            kept = pd.read_csv(old, keep_default_na=False)[cols]
            kept = kept[~kept.notebook.isin(summary.notebook)]
            summary = pd.concat([kept, summary]).sort_values("notebook", kind="stable")
        summary.to_csv(old, index=False)
    blocks = tables(docs)
    pages = PAGES if pages is None else [pages] if isinstance(pages, (str, Path)) else pages
    for page in map(Path, pages):
        page.write_text(update_blocks(page.read_text(), blocks))
    return list(blocks)


# the stated tolerance between two runs of one preset (docs/reproducibility.md explains)
TOLERANCE_PTS = 3.0


def compare(new: str | Path, old: str | Path, tolerance_pts: float = TOLERANCE_PTS) -> pd.DataFrame:
    """Every top-1 of the result tables in ``new`` against ``old`` (e.g. a fresh run against
    the committed ``docs/results/quick``): one row per number with both values, the difference in
    points and whether it lies within ``tolerance_pts``."""
    rows = []
    for folder, keys, cols in (("03_rd_vs_baselines", ["method", "schedule", "target"], ["top1"]),
                               ("06_comparison", ["method", "target"],
                                ["top1_recal", "top1_after"])):
        a, b = Path(new) / folder / "results.csv", Path(old) / folder / "results.csv"
        if not (a.is_file() and b.is_file()):
            continue
        # means over seeds; a row in one run only: missing
        a_, b_ = (pd.read_csv(f).groupby(keys, sort=False)[cols].mean().reset_index()
                  for f in (a, b))
        both = a_.merge(b_, on=keys, how="outer", suffixes=("_new", "_old"))
        for col in cols:
            for _, r in both.iterrows():
                d = 100 * (r[f"{col}_new"] - r[f"{col}_old"])
                rows.append(dict(notebook=folder, **{k: r[k] for k in keys}, value=col,
                                 new=r[f"{col}_new"], old=r[f"{col}_old"], diff_pts=d,
                                 within=bool(abs(d) <= tolerance_pts)))  # NaN: not within
    return pd.DataFrame(rows, columns=["notebook", "method", "schedule", "target", "value", "new",
                                       "old", "diff_pts", "within"])

"""Numbers in words and tables, computed from what a run wrote, so that no text can contradict it.

- :func:`noise_pts`: how far apart two top-1 numbers measured on ``n`` test images must be before
  the difference means anything (two standard errors of one estimate, in points);
- :func:`rd_verdict` (notebook 03) and :func:`comparison_verdict` (notebook 06): conclusions as
  Markdown, each sentence computed from the results table;
- :func:`tables`: README's result tables rendered from ``results/<preset>/``'s CSVs, and
  :func:`update_readme` / ``python -m rdprune report`` to write them between markers
  ``<!-- table:NAME -->`` … ``<!-- /table:NAME -->``; a test keeps README equal to the CSVs
  committed under ``docs/results/<preset>/``.
"""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pandas as pd

# (notebook folder, CSV) pairs the README's tables are rendered from
SOURCES = {"03_rd_vs_baselines": ["results.csv"], "06_comparison": ["results.csv"],
           "summary": []}


def noise_pts(top1: float, n: int) -> float:
    """Two standard errors (points) of a top-1 of ``top1`` measured on ``n`` test images."""
    p = min(max(float(top1), 1.0 / n), 1 - 1.0 / n)
    return 200 * math.sqrt(p * (1 - p) / n)


def _diff(a: float, b: float, n: int) -> tuple[float, float]:
    return 100 * (a - b), max(noise_pts(a, n), noise_pts(b, n))


def _pct(t: float) -> str:
    return f"{100 * t:.4g} %"


def rd_verdict(results: pd.DataFrame, n_test: int, chance: float | None = None) -> str:
    """Where RD wins and where it does not (notebook 03's results table: method, schedule,
    target, top1), against the best other allocator at each schedule and target. With
    ``chance`` (1 / classes), a setting where RD and the best other are both within noise of
    chance is called that, not a win or a loss."""
    lines = []
    rows = results[results.method != "dense"]
    for schedule, part in rows.groupby("schedule", sort=False):
        top = part.pivot_table(index="target", columns="method", values="top1", aggfunc="last")
        if "rd" not in top or top.shape[1] < 2:
            continue
        others = top.drop(columns=[c for c in top if c.startswith("rd")])
        for t, r in top.iterrows():
            if others.loc[t].isna().all() or pd.isna(r["rd"]):
                continue
            best = others.loc[t].idxmax()
            d, noise = _diff(r["rd"], others.loc[t, best], n_test)
            floor = None if chance is None else 100 * chance + noise_pts(chance, n_test)
            if floor is not None and 100 * max(r["rd"], others.loc[t, best]) <= floor:
                word = f"and every other allocator are at chance ({chance:.2g})"
            elif abs(d) <= noise:
                word = f"ties with {best} (RD {d:+.1f} points, inside the ±{noise:.1f}-point noise)"
            elif d > 0:
                word = f"**wins**: {d:+.1f} points over the best other, {best}"
            else:
                word = f"**loses**: {d:+.1f} points behind {best}"
            lines.append(f"- {schedule}, {_pct(t)} sparsity: RD {r['rd']:.3f} {word}.")
    if not lines:
        return "RD and at least one other allocator are needed for a verdict."
    return (f"Top-1 on {n_test} test images, one seed; a difference counts only beyond two "
            f"standard errors of one estimate.\n\n" + "\n".join(lines))


def comparison_verdict(results: pd.DataFrame, n_test: int) -> str:
    """Notebook 06's reading, computed: the best top-1 after fine-tuning and the fastest network
    at each target, what BN re-estimation did, and where fine-tuning was refused."""
    lines = []
    for t, part in results.groupby("target"):
        part = part.set_index("method")
        best = part["top1_after"].idxmax()
        ties = [m for m in part.index if m != best and
                abs(_diff(part.loc[m, "top1_after"], part.loc[best, "top1_after"], n_test)[0])
                <= _diff(part.loc[m, "top1_after"], part.loc[best, "top1_after"], n_test)[1]]
        fast = part["speedup"].idxmax()
        lines.append(f"- {_pct(t)} FLOPs removed: best after fine-tuning **{best}** "
                     f"({part.loc[best, 'top1_after']:.3f}"
                     + (f"; within noise: {', '.join(ties)}" if ties else "") + f"); fastest "
                     f"**{fast}** ({part.loc[fast, 'speedup']:.1f}× the dense network).")
    recal = (results["top1_recal"] - results["top1_before"]).groupby(results["method"]).mean()
    helped = recal[recal * 100 > noise_pts(0.5, n_test)]
    if len(helped):
        lines.append("- Re-estimating BN statistics raised top-1 straight after pruning by "
                     + ", ".join(f"{100 * v:.0f} points ({m})" for m, v in helped.items())
                     + " on average over the targets.")
    else:
        lines.append("- Re-estimating BN statistics changed no method's top-1 beyond noise.")
    if "finetune_kept" in results and (~results["finetune_kept"].astype(bool)).any():
        refused = results[~results["finetune_kept"].astype(bool)]
        lines.append("- Fine-tuning made these worse on held-out training images, so the network "
                     "before it is reported: " + ", ".join(
                         f"{m} at {_pct(t)}" for m, t in zip(refused.method, refused.target)) + ".")
    return f"On {n_test} test images, one seed:\n\n" + "\n".join(lines)


# ----------------------------------------------------------------------------- README tables
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


def tables(root: str | Path) -> dict[str, str]:
    """README's tables from a results folder (``results/<preset>`` or a committed copy)."""
    root, out = Path(root), {}
    zs = root / "03_rd_vs_baselines" / "results.csv"
    if zs.is_file():
        r = pd.read_csv(zs)
        z = r[r.schedule == "zero-shot"].pivot_table(index="method", columns="target",
                                                     values="top1", sort=False)
        z.columns = [f"{c:.0%}" for c in z.columns]
        z.index.name = "top-1, zero-shot, sparsity →"
        out["zero_shot"] = markdown(z)
        it = r[r.schedule == "iterative"]
        if len(it):
            i = it.pivot_table(index="method", columns="target", values="top1", sort=False)
            i.columns = [f"{c:.1%}" for c in i.columns]
            i.index.name = "top-1, iterative, sparsity →"
            out["iterative"] = markdown(i)
    cmp = root / "06_comparison" / "results.csv"
    if cmp.is_file():
        r = pd.read_csv(cmp)
        shown = {"top1_recal": ("top-1 pruned + BN", "{:.3f}"),
                 "top1_after": ("top-1 fine-tuned", "{:.3f}"),
                 "speedup": ("CPU speed-up", "{:.1f}×"), "prune_seconds": ("pruning s", "{:.0f}")}
        w = r.pivot_table(index="method", columns="target", values=list(shown), sort=False)
        w = pd.DataFrame({f"{shown[v][0]} @ {t:.0%}": w[(v, t)].map(shown[v][1].format)
                          for v in shown for t in sorted(r.target.unique())}, index=w.index)
        w.index.name = "FLOPs removed →"
        out["comparison"] = markdown(w, 3)
    summary = root / "summary.csv"
    if summary.is_file():
        t = pd.read_csv(summary)[["notebook", "status", "seconds"]].set_index("notebook")
        t["minutes"] = t.pop("seconds") / 60
        t.loc["all"] = ["", t["minutes"].sum()]
        out["times"] = markdown(t, 1)
    return out


def update_readme(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each ``<!-- table:NAME -->…<!-- /table:NAME -->`` block replaced."""
    for name, table in blocks.items():
        pattern = re.compile(rf"(<!-- table:{name} -->\n)(?:.*?\n)?(<!-- /table:{name} -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    return text


def publish(results: str | Path, docs: str | Path, readme: str | Path) -> list[str]:
    """Copy the CSVs the tables are rendered from into ``docs`` (committed) and rewrite the
    README's blocks from them; returns the names of the blocks written."""
    results, docs = Path(results), Path(docs)
    for folder in ("03_rd_vs_baselines", "06_comparison"):
        src = results / folder / "results.csv"
        if src.is_file():
            (docs / folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, docs / folder / "results.csv")
    if (results / "summary.csv").is_file():  # without the run's own output paths
        docs.mkdir(parents=True, exist_ok=True)
        summary = pd.read_csv(results / "summary.csv", keep_default_na=False)
        summary[["notebook", "status", "seconds", "reason"]].to_csv(docs / "summary.csv",
                                                                    index=False)
    blocks = tables(docs)
    path = Path(readme)
    path.write_text(update_readme(path.read_text(), blocks))
    return list(blocks)


TOLERANCE_PTS = 3.0  # README's stated tolerance between two runs of one preset (README explains)


def compare(new: str | Path, old: str | Path, tolerance_pts: float = TOLERANCE_PTS) -> pd.DataFrame:
    """Every top-1 of the README's tables in ``new`` against ``old`` (e.g. a fresh run against
    the committed ``docs/results/quick``): one row per number with both values, the difference in
    points and whether it lies within ``tolerance_pts``."""
    rows = []
    for folder, keys, cols in (("03_rd_vs_baselines", ["method", "schedule", "target"], ["top1"]),
                               ("06_comparison", ["method", "target"],
                                ["top1_recal", "top1_after"])):
        a, b = Path(new) / folder / "results.csv", Path(old) / folder / "results.csv"
        if not (a.is_file() and b.is_file()):
            continue
        both = pd.read_csv(a).merge(pd.read_csv(b), on=keys, how="outer",
                                    suffixes=("_new", "_old"))  # a row in one run only: missing
        for col in cols:
            for _, r in both.iterrows():
                d = 100 * (r[f"{col}_new"] - r[f"{col}_old"])
                rows.append(dict(notebook=folder, **{k: r[k] for k in keys}, value=col,
                                 new=r[f"{col}_new"], old=r[f"{col}_old"], diff_pts=d,
                                 within=bool(abs(d) <= tolerance_pts)))  # NaN: not within
    return pd.DataFrame(rows, columns=["notebook", "method", "schedule", "target", "value", "new",
                                       "old", "diff_pts", "within"])

"""Numbers in words and tables, computed from what a run wrote, so that no text can contradict it.

- :func:`noise_pts`: how far apart two top-1 numbers measured on ``n`` test images must be before
  the difference means anything (two standard errors of one estimate, in points);
- :func:`spread`, :func:`spread_table` and :func:`spread_tables`: mean, standard deviation and n over seeds (a
  ``seed`` column) of every group, long form or as a ``mean ± sd`` table; :func:`gap`: the
  difference of two methods paired by seed, with its 95 % interval;
- :func:`rd_verdict` (notebook 03) and :func:`comparison_verdict` (notebook 06): conclusions as
  Markdown, each sentence computed from the results table; :func:`goal` (notebook 07): one
  method against another at given targets, win / loss / tie;

The published result tables (docs/results.md), rendered from these, are in
:mod:`rdprune.lab.readme`.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def noise_pts(top1: float, n: int) -> float:
    """Two standard errors (points) of a top-1 of ``top1`` measured on ``n`` test images."""
    p = min(max(float(top1), 1.0 / n), 1 - 1.0 / n)
    return 200 * math.sqrt(p * (1 - p) / n)


def _diff(a: float, b: float, n: int) -> tuple[float, float]:
    return 100 * (a - b), max(noise_pts(a, n), noise_pts(b, n))


# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (then the normal's)
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(dof: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError("a t interval needs at least two seeds (one degree of freedom)")
    return _T95[dof - 1] if dof <= len(_T95) else 1.96 + 2.4 / dof  # within 0.005 beyond 30


def spread(df: pd.DataFrame, by, values, seed: str = "seed") -> pd.DataFrame:
    """Long form: one row per group of ``by`` and value column of ``values``, with the mean,
    sample standard deviation (NaN for one seed) and n (number of seeds) over the rows of the
    group. A table without a ``seed`` column counts as one seed per row."""
    by, values = [by] if isinstance(by, str) else list(by), [values] if isinstance(
        values, str) else list(values)
    long = df.melt(id_vars=by, value_vars=values, var_name="value", value_name="x")
    out = long.groupby(by + ["value"], sort=False)["x"].agg(mean="mean", std="std", n="count")
    return out.reset_index()


def fmt(mean: float, std: float, digits: int = 3) -> str:
    """``mean ± std`` (just the mean for one seed, ``–`` for none)."""
    if pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def spread_table(df: pd.DataFrame, index, columns, value: str, digits: int = 3,
                 label: str | None = None) -> pd.DataFrame:
    """A table of ``mean ± sd`` strings over seeds (index × columns); the index name says n
    (the number of seeds), per cell where groups differ."""
    index = [index] if isinstance(index, str) else list(index)
    columns = [columns] if isinstance(columns, str) else list(columns)
    s = spread(df, index + columns, value)
    one_n = s["n"].nunique() == 1
    s["cell"] = [fmt(m, sd, digits) + ("" if one_n else f" (n={n})")
                 for m, sd, n in zip(s["mean"], s["std"], s["n"])]
    out = s.pivot(index=index, columns=columns, values="cell")
    out = out.reindex(index=list(dict.fromkeys(map(tuple, s[index].values))) if len(index) > 1
                      else list(dict.fromkeys(s[index[0]])))
    n = int(s["n"].iloc[0]) if len(s) else 0
    what = label or value
    out.index.name = (f"{what} (mean ± sd, n = {n} seeds)" if one_n and n > 1
                      else f"{what} (one seed)" if one_n else f"{what} (mean ± sd, n per cell)")
    if len(index) > 1:  # the label goes on the columns: a MultiIndex has one name per level
        out.columns.name, out.index.names = out.index.name, index
    return out


def spread_tables(df: pd.DataFrame, index, columns, values) -> pd.DataFrame:
    """:func:`spread_table` of several columns side by side: ``values`` is a list of
    ``(column, digits)`` pairs (or a dict), each heading its block of the result."""
    values = dict(values)
    return pd.concat({v: spread_table(df, index, columns, v, digits=d) for v, d in values.items()},
                     axis=1)


def gap(results: pd.DataFrame, a: str, b: str, value: str = "top1",
        seed: str = "seed") -> dict | None:
    """``a`` minus ``b`` in points, paired by seed (``results``: one row per method and seed):
    mean, sd and n of the per-seed differences and the half-width of their 95 % t interval
    (NaN for one seed). None when the two share no seed."""
    seeds = results[seed] if seed in results else pd.Series(0, index=results.index)
    one = results.assign(_seed=seeds)
    pa = one[one.method == a].groupby("_seed")[value].mean()
    pb = one[one.method == b].groupby("_seed")[value].mean()
    d = (100 * (pa - pb)).dropna()
    if not len(d):
        return None
    pa, pb = pa[d.index], pb[d.index]  # the seeds both have
    n = len(d)
    sd = float(d.std()) if n > 1 else float("nan")
    half = t95(n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    return dict(mean=float(d.mean()), sd=sd, n=n, half=half, a=float(pa.mean()),
                b=float(pb.mean()))


def goal(results: pd.DataFrame, a: str, b: str, value: str, targets, *, by: str | None = None,
         lower: bool = False, n_test: int | None = None) -> pd.DataFrame:
    """``a`` against ``b`` on ``value`` at each target (and each ``by`` group, e.g. the
    criterion), paired by seed: both means, the mean difference ``a − b`` with its sd and n,
    and a verdict for ``a``: ``win``, ``loss`` or ``tie``. Top-1 (``n_test`` given) is judged
    against two standard errors on that many test images and, for several seeds, the 95 %
    interval of the per-seed differences; another value (``lower``: smaller is better, e.g.
    perplexity) against that interval alone, so with one seed there is no noise to judge by and
    the verdict only says which is ``better`` or ``worse`` (or ``equal``). A seed whose value
    is missing (NaN) for either method is left out of the pair, and ``n_seeds`` says how many
    remained; targets the table lacks give no row."""
    if n_test is not None and lower:
        raise ValueError("n_test judges top-1 (higher is better); leave lower=False with it")
    rows = []
    groups = results.groupby(by, sort=False) if by else [(None, results)]
    for key, part in groups:
        for t in targets:
            g = gap(part[np.isclose(part.target, t)], a, b, value)
            if g is None:
                continue
            mean = g["mean"] / 100  # gap() counts points (×100)
            if n_test is not None:
                word, _ = _judge(g, n_test)
            else:
                better = -mean if lower else mean
                if g["n"] == 1:
                    word = "equal" if better == 0 else ("better" if better > 0 else "worse")
                else:
                    word = "tie" if abs(mean) <= g["half"] / 100 else \
                        ("win" if better > 0 else "loss")
            rows.append({**({by: key} if by else {}), "target": t, a: g["a"], b: g["b"],
                         "difference": mean, "sd": g["sd"] / 100, "n_seeds": g["n"],
                         "verdict": word})
    return pd.DataFrame(rows)


LM_GOALS, VIT_GOALS = [0.6, 0.7], [0.7, 0.8]  # the goals: RD vs OWL, RD vs LAMP


def _pct(t: float) -> str:
    return f"{100 * t:.4g} %"


def _judge(g: dict, n_test: int) -> tuple[str, float]:
    """'win' / 'loss' / 'tie' for a paired gap, and the noise it was judged against (points):
    with one seed, two standard errors of one top-1 on ``n_test`` images; with several, the 95 %
    interval of the mean per-seed difference, never narrower than that test-set noise (every
    seed is scored on the same test images, so their noise does not average out)."""
    binom = max(noise_pts(g["a"], n_test), noise_pts(g["b"], n_test))
    noise = binom if g["n"] == 1 else max(g["half"], binom)
    word = "tie" if abs(g["mean"]) <= noise else ("win" if g["mean"] > 0 else "loss")
    return word, noise


def _seeds_text(n_seeds: int, n_test: int) -> str:
    if n_seeds == 1:
        return (f"Top-1 on {n_test} test images, one seed; a difference counts only beyond two "
                "standard errors of one estimate.")
    return (f"Top-1 on {n_test} test images, mean over {n_seeds} seeds (each seed: its own dense "
            "model, calibration images and fine-tuning order; all seeds share the test images); "
            "a difference counts only when the 95 % interval of the per-seed differences "
            "excludes zero and it exceeds two standard errors of one top-1 on those images; "
            "the margin quoted is the wider of the two.")


def rd_verdict(results: pd.DataFrame, n_test: int, chance: float | None = None) -> str:
    """Where RD wins and where it does not (notebook 03's results table: method, schedule,
    target, top1 and, for several seeds, seed), against the best other allocator (by mean
    top-1) at each schedule and target, paired by seed. With ``chance`` (1 / classes), a
    setting where RD and the best other are both within noise of chance is called that, not a
    win or a loss."""
    lines = []
    rows = results[results.method != "dense"]
    n_seeds = int(rows["seed"].nunique()) if "seed" in rows else 1
    for schedule, part in rows.groupby("schedule", sort=False):
        top = part.pivot_table(index="target", columns="method", values="top1", aggfunc="mean")
        if "rd" not in top or top.shape[1] < 2:
            continue
        others = top.drop(columns=[c for c in top if c.startswith("rd")])
        for t, r in top.iterrows():
            if others.loc[t].isna().all() or pd.isna(r["rd"]):
                continue
            best = others.loc[t].idxmax()
            g = gap(part[part.target == t], "rd", best)
            if g is None:  # no seed has both
                continue
            word, noise = _judge(g, n_test)
            bar = "noise" if g["n"] == 1 else "margin"  # several seeds: the interval, if wider
            spread_ = "" if g["n"] == 1 else f" ± {g['sd']:.1f} sd"
            floor = None if chance is None else 100 * chance + noise_pts(chance, n_test)
            if floor is not None and 100 * max(g["a"], g["b"]) <= floor:
                text = f"and every other allocator are at chance ({chance:.2g})"
            elif word == "tie":
                text = (f"ties with {best} (RD {g['mean']:+.1f}{spread_} points, inside the "
                        f"±{noise:.1f}-point {bar})")
            elif word == "win":
                text = (f"**wins**: {g['mean']:+.1f}{spread_} points over the best other, {best} "
                        f"({bar} ±{noise:.1f})")
            else:
                text = (f"**loses**: {g['mean']:+.1f}{spread_} points behind {best} "
                        f"({bar} ±{noise:.1f})")
            lines.append(f"- {schedule}, {_pct(t)} sparsity: RD {g['a']:.3f} {text}.")
    if not lines:
        return "RD and at least one other allocator are needed for a verdict."
    return _seeds_text(n_seeds, n_test) + "\n\n" + "\n".join(lines)


def comparison_verdict(results: pd.DataFrame, n_test: int, removed: str = "FLOPs") -> str:
    """Notebooks 05 and 06's reading, computed: the best mean top-1 after fine-tuning and (with a
    ``speedup`` column) the fastest network at each target of ``removed`` (methods within the
    noise of the best named), what BN re-estimation did, where fine-tuning was refused, the
    training steps every method got, and which methods could not run (rows with a ``note``)."""
    lines = []
    if "note" in results and results["note"].notna().any():  # methods that could not run
        skipped = results[results["note"].notna()].drop_duplicates("method")
        lines.append("- Not applicable to this network: " + "; ".join(
            f"{m} ({str(n).removeprefix('not applicable: ')})"
            for m, n in zip(skipped.method, skipped.note)) + ".")
        results = results[results["note"].isna()]
        if not len(results):
            return "No method could prune this network:\n\n" + lines[0]
    n_seeds = int(results["seed"].nunique()) if "seed" in results else 1
    results = results if "speedup" in results else results.assign(speedup=float("nan"))
    for t, part in results.groupby("target"):
        means = part.groupby("method", sort=False)[["top1_after", "speedup"]].mean()
        best = means["top1_after"].idxmax()
        gaps = {m: gap(part, m, best, "top1_after") for m in means.index if m != best}
        ties = [m for m, g in gaps.items() if g is not None and _judge(g, n_test)[0] == "tie"]
        fast = means["speedup"].idxmax() if means["speedup"].notna().any() else None
        lines.append(f"- {_pct(t)} {removed} removed: best after fine-tuning **{best}** "
                     f"({means.loc[best, 'top1_after']:.3f}"
                     + (f"; within noise: {', '.join(ties)}" if ties else "") + ")"
                     + (f"; fastest **{fast}** ({means.loc[fast, 'speedup']:.1f}× the dense "
                        "network)." if fast else "."))
    recal = (results["top1_recal"] - results["top1_before"]).groupby(results["method"]).mean()
    helped = recal[recal * 100 > noise_pts(0.5, n_test)]
    if len(helped):
        lines.append("- Re-estimating BN statistics raised top-1 straight after pruning by "
                     + ", ".join(f"{100 * v:.0f} points ({m})" for m, v in helped.items())
                     + " on average over the targets" + (" and seeds." if n_seeds > 1 else "."))
    else:
        lines.append("- Re-estimating BN statistics changed no method's top-1 beyond noise.")
    if "finetune_kept" in results and (~results["finetune_kept"].astype(bool)).any():
        refused = results[~results["finetune_kept"].astype(bool)]
        where = [f"{m} at {_pct(t)}" + (f" (seed {s})" if n_seeds > 1 else "")
                 for m, t, s in zip(refused.method, refused.target,
                                    refused["seed"] if "seed" in refused else [0] * len(refused))]
        lines.append("- Fine-tuning made these worse on held-out training images, so the network "
                     "before it is reported: " + ", ".join(where) + ".")
    if "train_steps" in results:  # the equal budget, said where the verdict is read
        per = results.groupby("target")["train_steps"].agg(["min", "max"])
        lines.append("- Every method trained the same number of steps at each target ("
                     + ", ".join(f"{_pct(t)}: {int(r['max'])}" + ("" if r["min"] == r["max"]
                                                                   else f" (min {int(r['min'])})")
                                 for t, r in per.iterrows())
                     + "), steps inside a method (HBGS's fine-tunes between rounds, "
                       "JointPruning's supernet) included.")
    head = (f"On {n_test} test images, one seed:" if n_seeds == 1 else
            f"On {n_test} test images, means over {n_seeds} seeds (ties: the 95 % interval of "
            "the per-seed differences includes zero, or the gap is inside the test-set noise):")
    return head + "\n\n" + "\n".join(lines)


# ----------------------------------------------------------------------------- result tables


def rd_gain(zero_shot: pd.DataFrame) -> pd.DataFrame:
    """RD's zero-shot gain over the best other allocator at each target (top-1 points, means over
    the seeds; ``gain_sd_pts`` the standard deviation of the per-seed gains). Empty without RD
    or without another allocator."""
    top = zero_shot.pivot_table(index="target", columns="method", values="top1", aggfunc="mean")
    others = top.drop(columns=[c for c in ("rd", "rd+refine") if c in top])
    if "rd" not in top or others.empty:
        return pd.DataFrame()
    first = zero_shot.iloc[0]
    out = pd.DataFrame({"dataset": first["dataset"], "model": first["model"], "rd_top1": top["rd"],
                        "best_other": others.max(axis=1),
                        "best_other_method": others.idxmax(axis=1)})
    gaps = [gap(zero_shot[zero_shot.target == t], "rd", b)
            for t, b in out["best_other_method"].items()]
    out["gain_pts"] = [g["mean"] for g in gaps]
    out["gain_sd_pts"] = [g["sd"] for g in gaps]
    out["n_seeds"] = [g["n"] for g in gaps]
    return out.reset_index()


def side_by_side(results: pd.DataFrame, reported: pd.DataFrame) -> pd.DataFrame:
    """Our RD and dense rows (means over seeds) beside a paper's reported sparsity and top-1
    pairs, every row naming its dataset, model and source."""
    pairs = (reported.dropna(subset=["sparsity_pct", "top1_pct"])
             .assign(sparsity=lambda d: d.sparsity_pct / 100, top1=lambda d: d.top1_pct / 100))
    keys = ["dataset", "model", "method", "schedule", "target"]
    ours = (results[results.method.isin(["rd", "dense"])].groupby(keys, sort=False)
            .agg(sparsity=("sparsity", "mean"), top1=("top1", "mean"), top1_sd=("top1", "std"),
                 n_seeds=("seed", "nunique")).reset_index().assign(source="ours (this run)"))
    cols = ["dataset", "model", "method", "schedule", "source", "sparsity", "top1", "top1_sd",
            "n_seeds"]
    return pd.concat([ours[cols], pairs[cols[:-2]]], ignore_index=True)


def filter_side_by_side(results: pd.DataFrame, dense_top1: pd.Series,
                        reported: pd.DataFrame) -> pd.DataFrame:
    """Notebooks 05's rows (means over seeds of top-1 after fine-tuning, its drop from each seed's
    dense model, the reductions) and a dense row, beside a paper's reported ones."""
    acc = reported.dropna(subset=["top1_pct", "top1_drop_pts", "params_reduction_pct",
                                  "flops_reduction_pct"], how="all")
    acc = acc.assign(top1=acc["top1_pct"] / 100, drop_pts=acc["top1_drop_pts"],
                     params_reduction=acc["params_reduction_pct"] / 100,
                     flops_reduction=acc["flops_reduction_pct"] / 100)
    mine = results.assign(drop_pts=100 * (results.seed.map(dense_top1) - results["top1_after"]))
    ours = (mine.groupby(["dataset", "model", "method", "target"], sort=False)
            .agg(top1=("top1_after", "mean"), top1_sd=("top1_after", "std"),
                 drop_pts=("drop_pts", "mean"), params_reduction=("params_reduction", "mean"),
                 flops_reduction=("flops_reduction", "mean"), n_seeds=("seed", "nunique"))
            .reset_index().assign(source="ours (this run)"))
    first = results.iloc[0]
    dense = pd.DataFrame([dict(dataset=first["dataset"], model=first["model"], method="dense",
                               source="ours (this run)", top1=dense_top1.mean(),
                               top1_sd=dense_top1.std(), drop_pts=0.0,
                               n_seeds=int(results.seed.nunique()))])
    cols = ["dataset", "model", "method", "source", "top1", "top1_sd", "drop_pts",
            "params_reduction", "flops_reduction", "n_seeds"]
    return pd.concat([dense.reindex(columns=cols), ours[cols], acc[cols[:5] + cols[6:9]]],
                     ignore_index=True)


# ----------------------------------------------------------------------------- the arena (08)
def arena_verdict(results: pd.DataFrame, value: str, focus, *, by=("model", "criterion"),
                  lower: bool = False, n_test: int | None = None) -> pd.DataFrame:
    """Each ``focus`` method against the best of the *other* methods at every target of every
    ``by`` group (:func:`goal`: paired by seed; top-1 judged against test-set noise with
    ``n_test``): ``win`` means it beats every other allocator, ``tie`` that it is within the noise
    of the best, ``loss`` that the best other is beyond it (``better``/``equal``/``worse`` with
    one seed and no noise estimate, as perplexity)."""
    rows = []
    for key, part in results.groupby(list(by), sort=False):
        for t in sorted(part.target.unique()):
            here = part[np.isclose(part.target, t)]
            means = here.groupby("method")[value].mean()
            for f in focus:
                if f not in means:
                    continue
                others = means.drop(f)
                if not len(others):
                    continue
                best = others.idxmin() if lower else others.idxmax()
                g = goal(here, f, best, value, [t], lower=lower, n_test=n_test)
                if len(g):
                    r = g.iloc[0]
                    rows.append({**dict(zip(by, key)), "target": t, "method": f,
                                 value: r[f], "best_other": best, "best_other_" + value: r[best],
                                 "verdict": r["verdict"], "n_seeds": r["n_seeds"]})
    return pd.DataFrame(rows)


def additivity_audit(results: pd.DataFrame, by=("model", "criterion", "target")) -> pd.DataFrame:
    """EvoPress's objection, measured: for each group, the rank correlation (Spearman) between
    the distortion the curves' sum predicts and the distortion measured, across the allocations
    of every allocator; the ratio measured / predicted (median), and where the allocation with
    the lowest prediction ranks among the measured (1: additivity picked the best of them).
    ``holds`` when ρ ≥ 0.8, ``weak`` when 0 < ρ < 0.8, ``fails`` when ρ ≤ 0 (a convention, named
    so that a reader can apply another)."""
    rows = []
    ok = results.dropna(subset=["predicted", "distortion"])
    for key, part in ok.groupby(list(by), sort=False):
        part = part.groupby("method")[["predicted", "distortion"]].mean()
        if len(part) < 3:
            continue
        rho = float(part.predicted.rank().corr(part.distortion.rank()))
        pick = part.predicted.idxmin()
        rows.append({**dict(zip(by, key)), "allocations": len(part), "spearman": rho,
                     "measured_over_predicted": float((part.distortion / part.predicted).median()),
                     "lowest_predicted": pick,
                     "its_measured_rank": int(part.distortion.rank(method="min")[pick]),
                     "additivity": "holds" if rho >= 0.8 else "weak" if rho > 0 else "fails"})
    return pd.DataFrame(rows)

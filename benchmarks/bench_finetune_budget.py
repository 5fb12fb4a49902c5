"""How many fine-tuning steps per round does a preset need before the iterative curves stop
moving? Notebook 03's iterative part (RD and LAMP; ``--preset full``: rounds of 50 % of the
remaining weights up to 90 %; ``--preset paper_regime``: on to 95.5 and 98.85 %; all 10,000
test images, every other setting the notebook's under ``--preset``) rerun at each of ``--steps``
fine-tuning steps per round with learning-rate schedule ``--schedule``, on the same dense
models. A budget has converged when doubling it moves no round's top-1 by more than two standard
errors of one top-1 on the test images (0.6 points near 0.9 on 10,000), and leaves RD-minus-LAMP
where it was. Writes ``docs/results/<preset>/finetune_budget_<schedule>.csv``
(``_<recipe>`` added for a dense recipe other than ``quick``; one row per method, seed, round
and budget, with the round's seconds; rows of other budgets, seeds or methods already there
are kept) and prints the changes.

    python benchmarks/bench_finetune_budget.py --steps 120 240 480 960 --schedule cosine
    python benchmarks/bench_finetune_budget.py --steps 120 240 480 --recipe quick
    python benchmarks/bench_finetune_budget.py --preset paper_regime --steps 480 \
        --base results/paper_regime/03_rd_vs_baselines/results.csv

``--base``: a finished notebook-03 run of the same preset gives the rows of its own budget (its
``finetune_steps``) for the seeds and methods asked, so only the doubled budget is trained here.

A file is kept per schedule and dense recipe only: after changing another of the preset's
settings (calibration, grid, per_round), write to a fresh file rather than merge into these.
"""
import argparse
import math
import tempfile
import time
from pathlib import Path

import pandas as pd

from rdprune.lab import pipeline, reproduce

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "03_rd_vs_baselines"


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="full", choices=[k for k, v in reproduce.PRESETS.items()
                                                         if "_skip" not in v.get(NOTEBOOK, {})])
    p.add_argument("--steps", type=int, nargs="+", default=[120, 240])
    p.add_argument("--schedule", default="cosine", choices=["constant", "cosine"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--recipe", default=None, help="the dense models' recipe (default: the "
                   "preset's)")
    p.add_argument("--base", type=Path, default=None,
                   help="notebook 03's results.csv from a run of --preset: its iterative rows "
                   "are the preset's own budget, not rerun")
    args = p.parse_args()
    nb = reproduce.parameters(NOTEBOOK, args.preset)
    methods = args.methods or nb["iterative_methods"]
    recipe = args.recipe or nb["recipe"]
    # one file per dense recipe: the quick models' rows keep the name they were first written
    # under, and a preset that changes its recipe cannot send rows into another model's file
    suffix = "" if recipe == "quick" else "_" + recipe
    out = ROOT / "docs" / "results" / args.preset / f"finetune_budget_{args.schedule}{suffix}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = pd.DataFrame()
    if out.exists():  # earlier budgets, seeds or methods stay; the ones rerun here are replaced
        kept = pd.read_csv(out)
        kept = kept[~(kept.seed.isin(args.seeds) & kept.steps.isin(args.steps)
                      & kept.method.isin(methods))]
    if args.base is not None:
        base = base_rows(args.base, args.seeds, methods, nb, args.schedule, recipe)
        if len(kept):  # the base budget's rows of these seeds and methods are replaced
            kept = kept[~(kept.seed.isin(args.seeds) & (kept.steps == nb["finetune_steps"])
                          & kept.method.isin(methods))]
        kept = pd.concat([kept, base], ignore_index=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for steps in args.steps:
                for method in methods:
                    tic = time.perf_counter()
                    t = pipeline.run(nb["model"], nb["dataset"], method, "iterative",
                                     nb["iterative_target"], budget="params", preset="quick",
                                     recipe=recipe, seed=seed,
                                     out=Path(tmp) / f"{method}-{seed}-{steps}", progress=False,
                                     calib_n=nb["calib_n"], grid=nb["grid"],
                                     distortion=nb["distortion"], per_round=nb["per_round"],
                                     visit=tuple(nb.get("visit", ())),
                                     finetune_steps=steps, finetune_schedule=args.schedule,
                                     eval_subset=nb["eval_subset"], refine=0)
                    for _, r in t[t["round"] > 0].iterrows():
                        rows.append(dict(method=method, seed=seed, round=int(r["round"]),
                                         target=r["target"], steps=steps,
                                         schedule=args.schedule, recipe=recipe,
                                         dense_top1=t["top1"].iloc[0], top1=r["top1"],
                                         n_test=10_000 if nb["eval_subset"] is None
                                         else nb["eval_subset"],
                                         finetune_kept=r.get("finetune_kept"),
                                         seconds=r["seconds"]))
                    print(f"seed {seed}, {steps} steps, {method}: "
                          f"{time.perf_counter() - tic:.0f} s", flush=True)
                    pd.concat([kept, pd.DataFrame(rows)]).to_csv(out, index=False)  # partial results survive
    df = pd.concat([kept, pd.DataFrame(rows)], ignore_index=True)
    print(df.to_string(index=False))
    print(changes(df).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


def base_rows(path: Path, seeds, methods, nb: dict, schedule: str, recipe: str) -> pd.DataFrame:
    """The iterative rounds of a notebook-03 run (its ``results.csv``) as rows of this file, at
    the run's own fine-tuning budget; a ValueError when the run lacks a seed or method asked."""
    if not Path(path).is_file():
        raise ValueError(f"--base {path}: no such file; give notebook 03's results.csv of a "
                         "finished run of this preset")
    run = pd.read_csv(path)
    it = run[(run.schedule == "iterative") & run.method.isin(methods) & run.seed.isin(seeds)]
    missing = {(m, s) for m in methods for s in seeds} - set(zip(it.method, it.seed))
    if missing:
        raise ValueError(f"--base {path} has no iterative rounds for {sorted(missing)}")
    dense = run[run.method == "dense"].set_index("seed")["top1"]
    return pd.DataFrame(dict(method=it.method, seed=it.seed, round=it["round"], target=it.target,
                             steps=nb["finetune_steps"], schedule=schedule, recipe=recipe,
                             dense_top1=it.seed.map(dense), top1=it.top1, n_test=it.n_test,
                             finetune_kept=None, seconds=None, source=str(path)))


def changes(df: pd.DataFrame) -> pd.DataFrame:
    """Per method (and RD minus LAMP), seed and round: top-1 points at each budget and the
    change from each budget to the next, beside the test-set noise (two standard errors)."""
    wide = df.pivot_table(index=["seed", "round", "target"], columns=["method", "steps"],
                          values="top1")
    budgets = sorted(df.steps.unique())
    out = []
    for (seed, rnd, target), row in wide.iterrows():
        for method in sorted(df.method.unique()):
            for a, b in zip(budgets, budgets[1:]):
                p = row[method, b]
                noise = 200 * math.sqrt(p * (1 - p) / df.n_test.iloc[0])
                out.append(dict(seed=seed, round=rnd, target=target, method=method,
                                steps=f"{a}->{b}", change_pts=100 * (row[method, b] - row[method, a]),
                                noise_pts=noise))
        if {"rd", "lamp"} <= set(df.method):
            for a, b in zip(budgets, budgets[1:]):
                gap = [100 * (row["rd", s] - row["lamp", s]) for s in (a, b)]
                out.append(dict(seed=seed, round=rnd, target=target, method="rd-lamp",
                                steps=f"{a}->{b}", change_pts=gap[1] - gap[0],
                                gap_before=gap[0], gap_after=gap[1]))
    return pd.DataFrame(out)


if __name__ == "__main__":
    main()

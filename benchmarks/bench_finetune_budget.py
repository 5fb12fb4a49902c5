"""Is the `full` preset's fine-tuning budget enough? Notebook 03's iterative part (RD and LAMP,
rounds of 50 % to 90 %, all 10,000 test images) rerun with ``--steps`` fine-tuning steps per
round (default 120, twice the preset's 60), with every other setting taken from
``presets.NOTEBOOKS["full"]`` and the notebook's defaults, against the published 60-step rows
of the same seeds (``docs/results/full/03_rd_vs_baselines/results.csv``). If doubling the steps
moves top-1 by no more than the seed-to-seed spread, the published comparison is not an artefact
of under-training. Writes benchmarks/finetune_budget.csv.

    python benchmarks/bench_finetune_budget.py [--steps 120] [--seeds 0] [--methods rd lamp]
"""
import argparse
import tempfile
from pathlib import Path

import pandas as pd

from rdprune.lab import pipeline
from rdprune.lab.presets import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "docs" / "results" / "full" / "03_rd_vs_baselines" / "results.csv"


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--methods", nargs="+", default=None)
    args = p.parse_args()
    nb = {**NOTEBOOKS["full"]["*"], **NOTEBOOKS["full"]["03_rd_vs_baselines"]}
    methods = args.methods or nb["iterative_methods"]
    published = pd.read_csv(PUBLISHED)
    published = published[published.schedule == "iterative"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for method in methods:
                t = pipeline.run(nb["model"], nb["dataset"], method, "iterative",
                                 nb["iterative_target"], budget="params", preset="quick",
                                 recipe=nb["recipe"], seed=seed, out=Path(tmp) / f"{method}-{seed}",
                                 progress=False, calib_n=nb["calib_n"], grid=nb["grid"],
                                 distortion=nb["distortion"], per_round=nb["per_round"],
                                 finetune_steps=args.steps, eval_subset=nb["eval_subset"], refine=0)
                for _, r in t[t["round"] > 0].iterrows():
                    old = published[(published.method == method) & (published.seed == seed)
                                    & (published["round"] == r["round"])]
                    rows.append(dict(method=method, seed=seed, round=int(r["round"]),
                                     target=r["target"], sparsity=r["sparsity"],
                                     top1=r["top1"], steps=args.steps,
                                     top1_published=float(old.top1.iloc[0]) if len(old) else None,
                                     steps_published=nb["finetune_steps"]))
                print(pd.DataFrame(rows).tail(len(t) - 1).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    df["change"] = df.top1 - df.top1_published
    spread = published.groupby(["method", "round"]).top1.std().rename("seed_sd").reset_index()
    df = df.merge(spread, on=["method", "round"], how="left")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    df.to_csv(Path(__file__).with_name("finetune_budget.csv"), index=False)


if __name__ == "__main__":
    main()

"""Reproducibility: the same quick-preset notebooks run with different torch thread counts give
every top-1 within the stated tolerance (docs/reproducibility.md, ``rdprune.lab.readme.TOLERANCE_PTS`` points).

Float sums are reordered when the thread count changes, so pruning choices near a tie and every
fine-tuning step can differ in the last bits; this measures how far that moves the published
numbers. The dense checkpoint is the same cached one in every run (train it once first).

    python benchmarks/bench_reproducible.py --threads 1 2 [--only 03_rd_vs_baselines 06_comparison]
    python benchmarks/bench_reproducible.py --threads 1 --reuse 2=results   # results/quick exists

Writes benchmarks/reproducible.csv (one row per top-1, both runs, the difference in points).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from rdprune.lab import readme

HERE = Path(__file__).resolve().parent


def run(threads: int, only: list[str], root: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    args = [sys.executable, "-m", "rdprune", "reproduce", "--preset", "quick", "--quiet",
            "--results", str(root), "--cell-timeout", "1800"]
    for o in only:
        args += ["--only", o]
    tic = time.perf_counter()
    subprocess.run(args, env=env, check=True)
    return time.perf_counter() - tic


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--only", nargs="+", default=["03_rd_vs_baselines", "06_comparison"])
    p.add_argument("--reuse", nargs="*", default=[], metavar="THREADS=FOLDER",
                   help="a results root already run with that thread count (its quick/ folder)")
    p.add_argument("--work", default=str(HERE / "reproducible"), help="where new runs go")
    args = p.parse_args()
    roots = {int(k): Path(v) for k, v in (r.split("=", 1) for r in args.reuse)}
    for t in args.threads:
        if t not in roots:
            roots[t] = Path(args.work) / f"threads{t}"
            print(f"{t} thread(s): {run(t, args.only, roots[t]):.0f} s")
    first, *rest = sorted(roots)
    frames = []
    for t in rest:
        diff = readme.compare(roots[t] / "quick", roots[first] / "quick")
        frames.append(diff.assign(threads=f"{t} vs {first}"))
    import pandas as pd
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(HERE / "reproducible.csv", index=False)
    worst = table.loc[table.diff_pts.abs().idxmax()]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\n{int(table.within.sum())} of {len(table)} top-1 numbers within "
          f"{readme.TOLERANCE_PTS:g} points; largest difference {worst.diff_pts:+.2f} points "
          f"({worst.notebook} {worst.method} @ {worst.target:g}, {worst.value})")


if __name__ == "__main__":
    main()

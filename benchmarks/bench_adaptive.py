"""The adaptive grid (``rd.adaptive_curves``, an approximation) against the full grid on the zoo's
trained models: how many (layer, amount) points it measures, its time as a ratio to the full
grid's in the same run, and, per target, whether the RD allocation is the same, its summed curve
distortion on the full grid against the full grid's optimum (the DP's objective; the stated
tolerance is ``rdprune.core.adaptive.TOLERANCE``) and its distortion measured on the calibration
batch against the full-grid allocation's. Writes benchmarks/adaptive.csv.

    python benchmarks/bench_adaptive.py
    python benchmarks/bench_adaptive.py --models resnet20 --grid 101 --start 11
"""
import argparse
import time
from pathlib import Path

import pandas as pd
import torch

import rdprune as rp
from rdprune.core import adaptive
from rdprune.lab import data as D

DATA = {"lm_tiny": ("pystdlib", 16, "kl")}  # model → (dataset, calibration size, distortion)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["lenet5", "resnet20", "vit_tiny", "lm_tiny"])
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    p.add_argument("--grid", type=int, default=101)
    p.add_argument("--start", type=int, default=11)
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("adaptive.csv"))
    args = p.parse_args()
    rows = []
    for name in args.models:
        dataset, n, kind = DATA.get(name, ("fashion_mnist", args.calib, "mse"))
        net = rp.train.pretrained(name, dataset, "quick", seed=0, progress=False, verbose=False)
        calib = D.calibration(dataset, n=n, seed=0)
        tic = time.perf_counter()
        full = rp.rd.curves(net, calib, grid=args.grid, distortion=kind, cache=False,
                            progress=False)
        t_full = time.perf_counter() - tic
        tic = time.perf_counter()
        fewer = rp.rd.adaptive_curves(net, calib, args.targets, grid=args.grid, start=args.start,
                                      distortion=kind)
        t_fewer = time.perf_counter() - tic
        for t in args.targets:
            best = rp.allocate("rd", net, t, curves=full)
            got = rp.allocate("rd", net, t, curves=fewer)
            measured = [rp.rd.distortion(net, rp.masks.apply(rp.masks.clone(net), a), calib, kind)
                        for a in (got, best)]
            rows.append(dict(model=name, target=t, grid=args.grid, start=args.start,
                             evaluations=fewer.attrs["evaluations"],
                             full_evaluations=fewer.attrs["full_evaluations"],
                             rounds=fewer.attrs["rounds"], time_ratio=t_fewer / t_full,
                             same=dict(got) == dict(best),
                             objective_ratio=rp.rd.predicted(full, got) / rp.rd.predicted(full, best),
                             measured_ratio=measured[0] / measured[1],
                             tolerance=adaptive.TOLERANCE, threads=torch.get_num_threads()))
        print(pd.DataFrame(rows[-len(args.targets):]).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(args.out, index=False)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()

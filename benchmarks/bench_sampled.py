"""Fewer calibration samples with a stopping rule (``rd.sampled_curves``, an approximation)
against the curves on every sample: on the zoo's trained models (quick recipe), how many samples
it used, its time as a ratio to the full curves' in the same run, and, per target, the output
MSE on the whole calibration batch of the RD allocation from its curves, divided by that of the
allocation from the curves on every sample. Writes benchmarks/sampled.csv.

    python benchmarks/bench_sampled.py
    python benchmarks/bench_sampled.py --models lm_tiny --tol 0.05 --calib 64
"""
import argparse
import time
from pathlib import Path

import pandas as pd
import torch

import rdprune as rp
from rdprune.lab import data as D

DATASET = {"lm_tiny": "pystdlib"}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "vit_tiny", "lm_tiny"])
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    p.add_argument("--grid", type=int, default=26)
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--tol", type=float, default=0.1)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("sampled.csv"))
    args = p.parse_args()
    rows = []
    for name in args.models:
        dataset = DATASET.get(name, "fashion_mnist")
        net = rp.train.pretrained(name, dataset, "quick", seed=0, progress=False, verbose=False)
        calib = D.calibration(dataset, n=args.calib, seed=0)
        tic = time.perf_counter()
        full = rp.rd.curves(net, calib, grid=args.grid, cache=False, progress=False)
        t_full = time.perf_counter() - tic
        tic = time.perf_counter()
        some = rp.rd.sampled_curves(net, calib, grid=args.grid, tol=args.tol, group=args.group,
                                    cache=False, progress=False)
        t_some = time.perf_counter() - tic
        for t in args.targets:
            picks = [rp.allocate("rd", net, t, curves=c) for c in (some, full)]
            d = [rp.rd.distortion(net, rp.masks.apply(rp.masks.clone(net), a), calib)
                 for a in picks]
            rows.append(dict(model=name, target=t, grid=args.grid, tol=args.tol,
                             group=args.group, samples=some.attrs["samples"],
                             of=some.attrs["of"], max_rel_se=some.attrs["max_rel_se"],
                             time_ratio=t_some / t_full, same=dict(picks[0]) == dict(picks[1]),
                             measured_ratio=d[0] / d[1], threads=torch.get_num_threads()))
        print(pd.DataFrame(rows[-len(args.targets):]).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(args.out, index=False)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()

"""Global ranking allocators (``global``, ``lamp``) on a large model: a VGG-like stack of Linear
layers holding ``--weights`` (default 100 M) random weights, under a parameter and a FLOPs
budget, against the plain one-global-sort reference (``allocators.global_ranking_reference``)
when ``--reference`` is given (it needs several GB and minutes). Goal: ≤ 10 s per allocation
on a 2-core CPU. Writes benchmarks/global.csv.

    OMP_NUM_THREADS=2 python benchmarks/bench_global.py [--weights 100e6] [--reference]
"""
import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from rdprune import masks as M
from rdprune.core import allocators as A


def model(total: float) -> nn.Module:
    torch.manual_seed(0)
    widths = [4096, 4096, 4096, 4096, 2048, 2048, 1024, 1000]  # 8 layers, VGG-classifier-like
    sizes = [(a, b) for a, b in zip(widths[:-1], widths[1:])]
    base = sum(a * b for a, b in sizes)
    scale = (total / base) ** 0.5
    net = nn.Sequential()
    for i, (a, b) in enumerate(sizes):
        net.add_module(str(i), nn.Linear(int(a * scale) if i == 0 else
                                         net[i - 1].out_features, int(b * scale), bias=False))
    net.input_size = (net[0].in_features,)
    return net


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=float, default=100e6)
    p.add_argument("--reference", action="store_true")
    args = p.parse_args()
    net = model(args.weights)
    n = sum(m.weight.numel() for m in M.prunable(net).values())
    print(f"{len(net)} layers, {n / 1e6:.1f} M weights, {torch.get_num_threads()} threads")
    rows = []
    for method in ("global", "lamp"):
        for budget in ("params", "flops"):
            tic = time.perf_counter()
            fast = A.allocate(method, net, 0.9, budget)
            row = dict(method=method, budget=budget, weights=n, seconds=time.perf_counter() - tic)
            if args.reference:
                layers = A.Layers(net, budget)
                tic = time.perf_counter()
                scores = [A.ranking_scores(method, layers.free[k]) for k in layers.names]
                ref = A.global_ranking_reference(layers, scores, 0.9)
                row["reference_seconds"] = time.perf_counter() - tic
                row["equal"] = all(abs(fast[k] - ref[k]) < 1e-12 for k in ref)
            rows.append(row)
            print(row)
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    df.to_csv(Path(__file__).with_name("global.csv"), index=False)


if __name__ == "__main__":
    main()

"""Quality: actual zero-shot (one-shot, no fine-tune) output distortion and top-1 of every
allocator on the trained default model, at 50/80/90/95 % sparsity, and of RD after
``--refine`` steps of rdprune.rd.refine (rows ``rd+refine``; 0 leaves them out). Writes
benchmarks/quality.csv.

    python benchmarks/bench_quality.py [--model resnet20] [--calib 256] [--grid 101] [--refine 6]
"""
import argparse
from pathlib import Path

import rdprune as rp

METHODS = ["rd", "lamp", "global", "uniform", "uniform_plus", "erk"]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--grid", type=int, default=101)
    p.add_argument("--budget", default="params")
    p.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.8, 0.9, 0.95])
    p.add_argument("--refine", type=int, default=6)
    args = p.parse_args()
    model = rp.train.pretrained(args.model, progress=False)
    calib = rp.data.calibration("fashion_mnist", args.calib, 0)
    held_out = rp.data.calibration("fashion_mnist", args.calib, 1)  # distortion off the calib set
    _, test = rp.data.loaders("fashion_mnist", 512)
    curves = rp.rd.curves(model, calib, grid=args.grid)
    df = rp.pipeline.zero_shot(model, METHODS, args.targets, calib, test, budget=args.budget,
                               curves=curves, held_out=held_out, refine=args.refine)
    rows = list(dict.fromkeys(df.method))
    for col in ["distortion", "distortion_heldout", "top1", "seconds"]:
        print(f"\n{col}:")
        print(df.pivot(index="method", columns="target", values=col).loc[rows]
              .to_string(float_format=lambda v: f"{v:.4g}"))
    df.to_csv(Path(__file__).with_name("quality.csv"), index=False)


if __name__ == "__main__":
    main()

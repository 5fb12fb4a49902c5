"""Command line: ``python -m rdprune {baselines,prune,reproduce} ...`` (``--help`` on each)."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys

import pandas as pd


def _common(p):
    p.add_argument("--model", default="resnet20", help="model name (rdprune.models.available())")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def baselines(args) -> int:
    """One-shot (no fine-tune) top-1 and output distortion per allocator and sparsity."""
    import rdprune as rp
    from rdprune.train import atomic_write_bytes, state_hash
    model = rp.train.pretrained(args.model, args.dataset, args.recipe, args.seed, dev=args.device,
                                progress=not args.quiet)
    calib = rp.data.calibration(args.dataset, args.calib, args.seed).to(next(model.parameters()).device)
    key = hashlib.sha256(json.dumps([state_hash(model), args.methods, args.targets, args.calib,
                                     args.grid, args.budget, args.seed, args.refine]
                                    ).encode()).hexdigest()[:16]
    path = rp.data.data_dir() / "results" / f"baselines-{args.model}-{args.dataset}-{key}.csv"
    if path.exists() and not args.no_cache:
        print(f"using cached results {path} (--no-cache recomputes)")
        table = pd.read_csv(path)
    else:
        _, test_loader = rp.data.loaders(args.dataset, 512)
        dense = rp.train.evaluate(model, test_loader)
        print(f"dense {args.model}: top-1 {dense['top1']:.4f}")
        curves = None
        if "rd" in args.methods:
            curves = rp.rd.curves(model, calib, grid=args.grid, progress=not args.quiet)
        table = rp.pipeline.zero_shot(model, args.methods, args.targets, calib, test_loader,
                                      budget=args.budget, curves=curves, refine=args.refine)
        atomic_write_bytes(path, table.to_csv(index=False).encode())
    pd.set_option("display.width", 140)
    print(table.pivot(index="method", columns="target", values="top1").round(4)
          .to_string(header=True).replace("target", "top-1 @"))
    print(table.pivot(index="method", columns="target", values="distortion")
          .map(lambda v: f"{v:.3g}").to_string().replace("target", "distortion @"))
    print(f"table: {path}")
    return 0


def prune(args) -> int:
    from rdprune import pipeline
    table = pipeline.run(args.model, args.dataset, args.method, args.schedule, args.target,
                         budget=args.budget, preset=args.preset, calibration=args.calibration,
                         seed=args.seed, out=args.out, progress=not args.quiet, dev=args.device,
                         finetune_steps=args.finetune_steps, calib_n=args.calib, grid=args.grid,
                         refine=args.refine)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rdprune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("baselines", help="train the default model once and compare allocators")
    _common(b)
    b.add_argument("--recipe", default="quick")
    b.add_argument("--methods", nargs="+",
                   default=["rd", "global", "uniform", "uniform_plus", "erk", "lamp"])
    b.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.8, 0.9, 0.95])
    b.add_argument("--budget", default="params", choices=["params", "flops"])
    b.add_argument("--calib", type=int, default=256, help="calibration images")
    b.add_argument("--grid", type=int, default=51, help="RD amounts per layer")
    b.add_argument("--refine", type=int, default=0,
                   help="also rows rd+refine: RD after this many measured-distortion steps")
    b.add_argument("--no-cache", action="store_true")
    b.set_defaults(func=baselines)

    p = sub.add_parser("prune", help="prune on a schedule and record every round")
    _common(p)
    p.add_argument("--method", default="rd")
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--schedule", default="oneshot", choices=["oneshot", "iterative"])
    p.add_argument("--budget", default="params", choices=["params", "flops"])
    p.add_argument("--preset", default="quick", choices=["quick", "paper"])
    p.add_argument("--calibration", default="train", choices=["train", "synthetic"],
                   help="'synthetic' is the zero-data mode")
    p.add_argument("--finetune-steps", type=int, default=None, help="0 = zero-shot")
    p.add_argument("--calib", type=int, default=None)
    p.add_argument("--grid", type=int, default=None)
    p.add_argument("--refine", type=int, default=None,
                   help="rd only: steps of measured-distortion refinement after the DP")
    p.add_argument("--out", default=None)
    p.set_defaults(func=prune)

    try:
        from rdprune import reproduce
        reproduce.add_parser(sub)
    except ImportError:
        pass

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

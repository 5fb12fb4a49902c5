"""rdprune: layer-adaptive pruning of neural networks from the shell.

  python -m rdprune baselines   train the default model once, compare every allocator zero-shot
  python -m rdprune prune       prune on a schedule (one-shot or iterative), record every round
  python -m rdprune reproduce   execute the notebook collection with a preset

Method names, distortions and presets come from the library's registries (rdprune.allocation,
rdprune.rd, rdprune.lab.presets); ``--help`` on each command lists them with their defaults.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys

import pandas as pd


def _common(p, presets):
    p.add_argument("--model", default=presets.BASELINES["model"],
                   help="zoo model name (rdprune.models.available())")
    p.add_argument("--dataset", default=presets.BASELINES["dataset"],
                   help="fashion_mnist (offline), cifar10, imagenet or synthetic")
    p.add_argument("--imagenet-root", default=None,
                   help="folder with ImageNet train/ and val/ (for --dataset imagenet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _check(args) -> None:
    """Every numeric option and name, before any model is loaded or trained."""
    import rdprune as rp
    from rdprune.core.loops import device
    from rdprune.util import check_choice, check_target
    device(args.device)
    rp.lab.data.info(args.dataset)
    check_choice("model", args.model, rp.models.available())
    for t in getattr(args, "targets", None) or [getattr(args, "target", 0.0)]:
        check_target(t, "weights" if args.budget == "params" else "FLOPs")
    for name in ("calib_n", "grid", "finetune_steps", "refine"):
        value, low = getattr(args, name, None), {"calib_n": 1, "grid": 2}.get(name, 0)
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if args.dataset == "imagenet" and not args.imagenet_root:
        raise ValueError("--dataset imagenet needs --imagenet-root FOLDER (with train/ and val/)")


def baselines(args) -> int:
    """One-shot (no fine-tune) top-1 and output distortion per allocator and sparsity."""
    import rdprune as rp
    from rdprune.util import atomic_write_bytes, state_hash
    for m in args.methods:
        if m not in rp.allocation.names(structured=False):
            raise ValueError(f"unknown method {m!r} for baselines; choose from "
                             f"{', '.join(rp.allocation.names(structured=False))}")
    _check(args)
    model = rp.train.pretrained(args.model, args.dataset, args.recipe, args.seed, dev=args.device,
                                progress=not args.quiet)
    calib = rp.data.calibration(args.dataset, args.calib_n, args.seed,
                                imagenet_root=args.imagenet_root).to(next(model.parameters()).device)
    key = hashlib.sha256(json.dumps([state_hash(model), args.methods, args.targets, args.calib_n,
                                     args.grid, args.budget, args.seed, args.refine,
                                     args.distortion]).encode()).hexdigest()[:16]
    path = rp.data.data_dir() / "results" / f"baselines-{args.model}-{args.dataset}-{key}.csv"
    if path.exists() and not args.no_cache:
        print(f"using cached results {path} (--no-cache recomputes)")
        table = pd.read_csv(path)
    else:
        _, test_loader = rp.data.loaders(args.dataset, 512, imagenet_root=args.imagenet_root)
        dense = rp.train.evaluate(model, test_loader)
        print(f"dense {args.model}: top-1 {dense['top1']:.4f}")
        curves = None
        if any(rp.allocation.get(m).needs_curves for m in args.methods):
            curves = rp.rd.curves(model, calib, grid=args.grid, distortion=args.distortion,
                                  progress=not args.quiet)
        table = rp.pipeline.zero_shot(model, args.methods, args.targets, calib, test_loader,
                                      budget=args.budget, curves=curves, refine=args.refine,
                                      distortion=args.distortion)
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
    _check(args)
    table = pipeline.run(args.model, args.dataset, args.method, args.schedule, args.target,
                         budget=args.budget, preset=args.preset, calibration=args.calibration,
                         seed=args.seed, out=args.out, progress=not args.quiet, dev=args.device,
                         imagenet_root=args.imagenet_root,
                         finetune_steps=args.finetune_steps, calib_n=args.calib_n,
                         grid=args.grid, refine=args.refine)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def main(argv=None) -> int:
    import importlib

    import rdprune as rp
    from rdprune.lab import presets
    argv = list(sys.argv[1:] if argv is None else argv)
    while "--import" in argv[:-1]:  # plugins register before the choices below are read
        i = argv.index("--import")
        importlib.import_module(argv[i + 1])
        del argv[i:i + 2]
    quick, base = presets.SCHEDULES["quick"], presets.BASELINES
    masked = rp.allocation.names(structured=False)
    parser = argparse.ArgumentParser(prog="python -m rdprune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--import", dest="plugins", action="append", default=[],
                        metavar="MODULE", help="import MODULE first (it may register allocators, "
                        "distortions or methods); repeatable")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    b = sub.add_parser("baselines", formatter_class=fmt,
                       help="train the default model once and compare allocators zero-shot")
    _common(b, presets)
    b.add_argument("--recipe", default=base["recipe"], choices=list(presets.RECIPES),
                   help="training recipe of the dense model")
    b.add_argument("--methods", nargs="+", default=base["methods"], metavar="METHOD",
                   help=f"allocators to compare: {', '.join(masked)}")
    b.add_argument("--targets", nargs="+", type=float, default=base["targets"],
                   help="fractions removed, of weights or FLOPs per --budget, each in [0, 1)")
    b.add_argument("--budget", default=base["budget"], choices=list(rp.allocation.BUDGETS))
    b.add_argument("--calib-n", type=int, default=base["calib_n"],
                   help="number of calibration images (training split)")
    b.add_argument("--grid", type=int, default=base["grid"], help="RD amounts per layer")
    b.add_argument("--distortion", default="mse", choices=rp.rd.distortions())
    b.add_argument("--refine", type=int, default=base["refine"],
                   help="also rows rd+refine: RD after this many measured-distortion steps")
    b.add_argument("--no-cache", action="store_true", help="recompute the table")
    b.set_defaults(func=baselines)

    p = sub.add_parser("prune", formatter_class=fmt,
                       help="prune on a schedule and record every round")
    _common(p, presets)
    p.add_argument("--method", default="rd", choices=masked, help="mask allocator")
    p.add_argument("--target", type=float, default=0.9,
                   help="fraction removed, of weights or FLOPs per --budget, in [0, 1)")
    p.add_argument("--schedule", default="oneshot", choices=["oneshot", "iterative"])
    p.add_argument("--budget", default="params", choices=list(rp.allocation.BUDGETS))
    p.add_argument("--preset", default="quick", choices=list(presets.SCHEDULES),
                   help="schedule settings and dense recipe (rdprune.lab.presets)")
    p.add_argument("--calibration", default="train", choices=["train", "synthetic"],
                   help="calibration source: training images, or N(0, 1) inputs (zero-data)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help=f"fine-tuning steps per round; 0 = zero-shot (default: the preset's, "
                        f"{quick.finetune_steps} for quick)")
    p.add_argument("--calib-n", type=int, default=None,
                   help=f"number of calibration images (default: the preset's, {quick.calib_n} "
                        "for quick)")
    p.add_argument("--grid", type=int, default=None,
                   help=f"RD amounts per layer (default: the preset's, {quick.grid} for quick)")
    p.add_argument("--refine", type=int, default=None,
                   help="rd only: steps of measured-distortion refinement after the DP")
    p.add_argument("--out", default=None, help="output folder (default results/runs/<settings>)")
    p.set_defaults(func=prune)

    rp.reproduce.add_parser(sub)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

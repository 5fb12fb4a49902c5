"""rdprune: layer-adaptive pruning of neural networks from the shell.

  python -m rdprune baselines   train the default model once, compare every allocator zero-shot
  python -m rdprune prune       prune on a schedule (one-shot or iterative), record every round
  python -m rdprune curves      compute and cache RD curves (torchrun: shared across ranks)
  python -m rdprune reproduce   execute the notebook collection with a preset
  python -m rdprune report      the result tables from a run's files (publish, or compare a rerun)

Method names, distortions and presets come from the library's registries (rdprune.allocation,
rdprune.rd, rdprune.lab.presets); ``--help`` on each command lists them with their defaults.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from pathlib import Path

import pandas as pd


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help says it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, argparse.SUPPRESS) \
                and action.option_strings:
            default = action.default
            text += f" (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"
        return text


def _common(p, presets):
    p.add_argument("--model", default=presets.BASELINES["model"],
                   help="a zoo name (rdprune.models.available()), torchvision:NAME, timm:NAME "
                        "or path/to/file.py:factory (a function returning the nn.Module); "
                        "trained with --recipe and cached unless --weights is given")
    p.add_argument("--weights", default=None, metavar="FILE.pt",
                   help="a checkpoint (state dict) to load into the model instead of training it")
    p.add_argument("--dataset", default=presets.BASELINES["dataset"],
                   help="fashion_mnist (offline), cifar10, imagenet, synthetic, or "
                        "imagefolder:/path (train/ and val/ class folders, ImageNet transforms); "
                        "the calibration images come from its training split")
    p.add_argument("--imagenet-root", default=None,
                   help="folder with ImageNet train/ and val/ (for --dataset imagenet)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the dense model, the calibration offset and the data order")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _check(args) -> None:
    """Every numeric option and name, before any model is loaded or trained."""
    import rdprune as rp
    from rdprune.core.loops import device
    from rdprune.util import check_target
    device(args.device)
    rp.lab.data.info(args.dataset)
    rp.models.check(args.model)
    if args.weights is not None and not Path(args.weights).is_file():
        raise ValueError(f"--weights {args.weights}: no such file")
    for t in getattr(args, "targets", None) or [getattr(args, "target", 0.0)]:
        check_target(t, "weights" if args.budget == "params" else "FLOPs")
    for name in ("calib_n", "grid", "finetune_steps", "refine", "eval_subset"):
        value = getattr(args, name, None)
        low = {"calib_n": 1, "grid": 2, "eval_subset": 1}.get(name, 0)
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
                                progress=not args.quiet, weights=args.weights)
    calib = rp.data.calibration(args.dataset, args.calib_n, args.seed,
                                imagenet_root=args.imagenet_root).to(next(model.parameters()).device)
    key = hashlib.sha256(json.dumps([state_hash(model), args.methods, args.targets, args.calib_n,
                                     args.grid, args.budget, args.seed, args.refine,
                                     rp.distortion.identity(args.distortion),
                                     args.criterion]).encode()
                         ).hexdigest()[:16]
    path = (rp.data.data_dir() / "results"
            / f"baselines-{rp.models.slug(args.model)}-{rp.lab.data.slug(args.dataset)}-{key}.csv")
    if path.exists() and not args.no_cache:
        print(f"using cached results {path} (--no-cache recomputes)")
        table = pd.read_csv(path)
    else:
        _, test_loader = rp.data.loaders(args.dataset, 512, imagenet_root=args.imagenet_root)
        dense = rp.train.evaluate(model, test_loader)
        print(f"dense {args.model}: top-1 {dense['top1']:.4f}")
        for m in args.methods:  # every rule before the curves
            rp.core.pruning.check(m, args.criterion, args.refine if m == "rd" else 0)
        curves = None
        if any(rp.allocation.get(m).needs_curves for m in args.methods):
            curves = rp.rd.curves(model, calib, grid=args.grid, distortion=args.distortion,
                                  criterion=args.criterion, progress=not args.quiet)
        table = rp.pipeline.zero_shot(model, args.methods, args.targets, calib, test_loader,
                                      budget=args.budget, curves=curves, refine=args.refine,
                                      distortion=args.distortion, criterion=args.criterion)
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
    from rdprune.core.distributed import world
    _check(args)
    with _process_group(args):
        return _prune(args, pipeline, quiet=world()[0] > 0)


def _prune(args, pipeline, quiet=False) -> int:
    table = pipeline.run(args.model, args.dataset, args.method, args.schedule, args.target,
                         budget=args.budget, preset=args.preset, calibration=args.calibration,
                         seed=args.seed, out=args.out, progress=not args.quiet, dev=args.device,
                         imagenet_root=args.imagenet_root, weights=args.weights,
                         finetune_steps=args.finetune_steps,
                         finetune_schedule=args.finetune_schedule, calib_n=args.calib_n,
                         grid=args.grid, refine=args.refine, eval_subset=args.eval_subset,
                         criterion=args.criterion)
    if quiet:  # ranks other than 0 print nothing
        return 0
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("round 0 is the dense model; top1/loss after the round's fine-tune; predicted: RD "
          "curves' sum; actual: distortion measured after pruning, before fine-tuning")
    print(f"results: {table.attrs['out']}/results.csv (pruned weights in state.pt)")
    return 0


def curves(args) -> int:
    """RD curves of a model on a calibration set, cached; under torchrun shared across ranks."""
    import rdprune as rp
    from rdprune.core.distributed import world
    _check(args)
    with _process_group(args):
        rank, ranks = world()
        model = rp.pipeline.rank0_first(lambda: rp.train.pretrained(
            args.model, args.dataset, args.recipe, args.seed, dev=args.device,
            progress=not args.quiet and rank == 0, weights=args.weights, verbose=rank == 0))
        calib = rp.data.calibration(args.dataset, args.calib_n, args.seed,
                                    imagenet_root=args.imagenet_root)
        out = rp.rd.curves(model, calib.to(next(model.parameters()).device), grid=args.grid,
                           distortion=args.distortion, method=args.method,
                           criterion=args.criterion, progress=not args.quiet and rank == 0)
        if rank == 0:
            ways = pd.Series(out.attrs["paths"]).value_counts().to_dict()
            print(f"{out.layer.nunique()} layers × {args.grid} amounts ({ways}) over "
                  f"{ranks} process(es)")
            print(f"curves: {out.attrs['cache']}")
    return 0


@contextlib.contextmanager
def _process_group(args):
    """Inside torchrun (``WORLD_SIZE`` set): join its process group for the command, NCCL with
    one GPU per rank (LOCAL_RANK) when CUDA is asked for and present, gloo otherwise; a clear
    error when torchrun's variables are missing. Outside torchrun: nothing."""
    import os

    import torch
    import torch.distributed as dist
    if "WORLD_SIZE" not in os.environ:
        yield
        return
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with torchrun "
                         "(torchrun --nproc-per-node N -m rdprune curves ...)")
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def report(args) -> int:
    from rdprune.lab import readme as R
    from rdprune.util import REPO
    results = Path(args.results)
    if not results.is_dir():
        raise FileNotFoundError(f"{results} does not exist; run python -m rdprune reproduce first")
    docs = REPO / "docs" / "results" / results.name
    status = 0
    if args.compare:  # before --publish, which would overwrite what it compares against
        diff = R.compare(results, docs)
        if diff.empty:
            raise ValueError(f"nothing to compare: no notebook 03 or 06 results in both {results} "
                             f"and {docs}")
        with pd.option_context("display.width", 160, "display.max_rows", 500):
            print(diff.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        bad = diff[~diff.within]
        print(f"{len(diff) - len(bad)} of {len(diff)} top-1 numbers within "
              f"{R.TOLERANCE_PTS:g} points of {docs}")
        status = 1 if len(bad) else 0
    if args.publish:
        names = R.publish(results, docs)
        print(f"copied to {docs}; tables rewritten in docs/results.md and README: "
              f"{', '.join(names) or 'none'}")
    if args.compare:
        return status
    if not args.publish:
        for name, table in R.tables(results).items():
            print(f"\n{name}:\n{table}")
    return 0


def main(argv=None) -> int:
    import importlib
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins = []  # plugins register before the parser reads the registries
    for a in list(argv):
        if a.startswith("--import="):
            plugins.append(a.partition("=")[2])
            argv.remove(a)
    while "--import" in argv[:-1]:
        i = argv.index("--import")
        plugins.append(argv[i + 1])
        del argv[i:i + 2]
    for name in plugins:
        try:
            importlib.import_module(name)
        except ImportError as e:
            print(f"error: --import {name}: {e} (is its folder on PYTHONPATH?)", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _curve_options(p, presets, base):
    """The dense model's recipe and the curves' settings (baselines, curves)."""
    import rdprune as rp
    p.add_argument("--recipe", default=base["recipe"], choices=list(presets.RECIPES),
                   help="training recipe of the dense model (when no --weights)")
    p.add_argument("--calib-n", type=int, default=base["calib_n"],
                   help="number of calibration images (training split)")
    p.add_argument("--grid", type=int, default=base["grid"], help="RD amounts per layer")
    p.add_argument("--distortion", default="mse", choices=rp.rd.distortions(),
                   help="RD's output distortion measure (rdprune.rd.register_distortion adds one)")
    _criterion(p)


def _criterion(p):
    import rdprune as rp
    p.add_argument("--criterion", default="magnitude", choices=rp.criteria.names(),
                   help="which weights go inside each layer (rdprune.register_criterion adds one)")


def build_parser() -> argparse.ArgumentParser:
    """The CLI, its choices read from the registries and its defaults from the presets."""
    import rdprune as rp
    from rdprune.lab import presets
    from rdprune.util import LR_SCHEDULES
    quick, base = presets.SCHEDULES["quick"], presets.BASELINES
    masked = rp.allocation.names(structured=False)
    parser = argparse.ArgumentParser(prog="python -m rdprune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--import", dest="plugins", action="append", default=[],
                        metavar="MODULE", help="import MODULE first (it may register allocators, "
                        "distortions or methods); repeatable")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = _Help

    b = sub.add_parser("baselines", formatter_class=fmt,
                       help="train the default model once and compare allocators zero-shot")
    _common(b, presets)
    _curve_options(b, presets, base)
    b.add_argument("--methods", nargs="+", default=base["methods"], metavar="METHOD",
                   help=f"allocators to compare: {', '.join(masked)}")
    b.add_argument("--targets", nargs="+", type=float, default=base["targets"],
                   help="fractions removed, of weights or FLOPs per --budget, each in [0, 1)")
    b.add_argument("--budget", default=base["budget"], choices=list(rp.allocation.BUDGETS),
                   help="what --targets remove: weights (params) or multiply-adds (flops)")
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
    p.add_argument("--schedule", default="oneshot", choices=["oneshot", "iterative"],
                   help="one round to the target, or rounds that each remove the preset's "
                        "per_round (20 %%) of the remaining weights, curves recomputed and a "
                        "fine-tune each round")
    p.add_argument("--budget", default="params", choices=list(rp.allocation.BUDGETS),
                   help="what --target removes: weights (params) or multiply-adds (flops)")
    p.add_argument("--preset", default="quick", choices=list(presets.SCHEDULES),
                   help="schedule settings and dense recipe (rdprune.lab.presets)")
    p.add_argument("--calibration", default="train", choices=["train", "synthetic"],
                   help="calibration source: training images, or N(0, 1) inputs (zero-data)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help=f"fine-tuning steps per round; 0 = zero-shot (default: the preset's, "
                        f"{quick.finetune_steps} for quick)")
    p.add_argument("--finetune-schedule", default=None, choices=list(LR_SCHEDULES),
                   help="each round's learning rate: constant (the RD authors) or cosine to "
                        "zero (default: the preset's, constant)")
    p.add_argument("--eval-subset", type=int, default=None,
                   help="test images for top-1 (default: the preset's, all of them)")
    p.add_argument("--calib-n", type=int, default=None,
                   help=f"number of calibration images (default: the preset's, {quick.calib_n} "
                        "for quick)")
    p.add_argument("--grid", type=int, default=None,
                   help=f"RD amounts per layer (default: the preset's, {quick.grid} for quick)")
    _criterion(p)
    p.add_argument("--refine", type=int, default=None,
                   help="rd only: steps of measured-distortion refinement after the DP "
                        "(default: the preset's, 0 = the paper's method)")
    p.add_argument("--out", default=None,
                   help="output folder (default: results/runs/<settings>-<hash of all settings>)")
    p.set_defaults(func=prune)

    c = sub.add_parser("curves", formatter_class=fmt,
                       help="compute and cache a model's RD curves (under torchrun: across ranks)")
    _common(c, presets)
    _curve_options(c, presets, base)
    c.add_argument("--method", default="fast", choices=["fast", "reference"],
                   help="downstream-only recompute, or one full forward pass per point")
    c.set_defaults(func=curves, budget="params")

    rp.reproduce.add_parser(sub)

    r = sub.add_parser("report", formatter_class=fmt,
                       help="the result tables (docs/results.md) from a run's files; publish or compare them")
    r.add_argument("--results", default="results/quick",
                   help="a reproduce output folder (results/<preset>)")
    r.add_argument("--publish", action="store_true",
                   help="copy its CSVs to docs/results/<preset>/ and rewrite the tables of "
                        "docs/results.md and README")
    r.add_argument("--compare", action="store_true",
                   help="compare every top-1 with the committed docs/results/<preset>/ and exit "
                        f"1 if one differs by more than {rp.lab.readme.TOLERANCE_PTS:g} points")
    r.set_defaults(func=report)
    return parser


if __name__ == "__main__":
    sys.exit(main())

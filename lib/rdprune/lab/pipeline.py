"""Pruning schedules: one-shot, zero-shot, iterative and zero-data, for any allocator.

- **one-shot**: one round to the target, then an optional fine-tune (``finetune_steps``);
- **zero-shot**: one-shot without fine-tuning (``finetune_steps=0``);
- **iterative**: each round removes ``per_round`` (20 %) of the remaining weights, so the target
  after ``t`` rounds is ``1 − 0.8^t`` (``visit``: sparsities a round lands on instead of stepping
  over them); RD curves are recomputed every round on the current model
  and a layer never becomes less sparse than before; fine-tune between rounds;
- **zero-data**: ``calibration="synthetic"`` replaces the calibration images by N(0, 1) inputs.

``refine`` (RD only, 0 by default: the paper's method) adds up to that many steps of
:func:`rdprune.rd.refine` after the DP, which lowers the *measured* distortion where additivity
is loose.

Every round appends a row to ``<out>/results.csv`` and saves the pruned weights, so an
interrupted run resumes after the last finished round. Columns: ``round`` (0 is the dense model,
``stage`` says so), ``target`` and ``sparsity`` (fractions of the prunable weights removed),
``flops_left`` (fraction of the dense prunable-layer FLOPs, masked weights counted as gone),
``top1`` / ``loss`` on the test images *after* the round's fine-tune, ``predicted`` (the RD
curves' sum at the allocation; NaN for methods without curves) and ``actual`` (output distortion
measured right after pruning, before fine-tuning, against the network as it was before the
round), ``seconds`` (the round's wall time, fine-tune included).

**The fine-tune guard.** ``val_n`` (512) training images are held out of fine-tuning; a round's
fine-tuned weights are kept only if their top-1 there (a language model: their loss) is at least
as good as that of the network straight after pruning, otherwise the round continues from the
pruned, un-tuned weights (columns
``val_before``, ``val_after``, ``finetune_kept``). Fine-tuning thus never returns a network worse
on images it was not trained on; ``val_n=0`` turns the guard off (ImageNet runs have no guard
yet: its ImageFolder has no in-memory tensors to hold images out of).
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from ..core import allocators as A
from ..core import criteria as C
from ..core import masks as M
from ..core import rd
from ..core.curves import GRID
from ..core.distributed import from_rank0, world
from ..core.pruning import allocate_and_apply, check
from ..util import atomic_write_bytes
from . import data as D
from . import models, train
from .presets import SCHEDULE_RECIPE, Settings, settings

SCHEDULES = ("oneshot", "iterative")


def schedule_targets(schedule: str, target: float, per_round: float = 0.2,
                     visit=()) -> list[float]:
    """Cumulative sparsity targets of each round: one-shot ``[target]``; iterative
    ``1 − (1 − per_round)^t`` for t = 1, 2, … up to and including ``target``, with a round
    shortened to land on each sparsity in ``visit`` that it would step over (the schedule then
    goes on from there), so a coarse schedule still reports the sparsities a paper reports."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target must be a sparsity in [0, 1), got {target}")
    bad = [v for v in visit if not 0.0 < v < 1.0]
    if bad:
        raise ValueError(f"visit must hold sparsities in (0, 1), got {bad}")
    if schedule == "oneshot":
        return [target]
    if not 0.0 < per_round < 1.0:
        raise ValueError(f"per_round must be in (0, 1), got {per_round}")
    out, t = [], 0.0
    while t < target - 1e-9:
        step = 1 - (1 - t) * (1 - per_round)
        t = min([v for v in visit if t + 1e-9 < v < step - 1e-9 and v < target], default=step)
        t = target if t >= target - 1e-4 else t  # 0.9885 ends on round 20, not a tiny 21st
        out.append(t)
    return out


def prune_round(model, method: str, target: float, calib: torch.Tensor, *, budget="params",
                grid=GRID, distortion="mse", refine=0, criterion="magnitude",
                progress=True) -> dict:
    """Allocate and apply one round in place (:func:`rdprune.core.pruning.allocate_and_apply`).
    Returns predicted (RD curves' sum) and actual output distortion against the model as it was
    before the round."""
    before = copy.deepcopy(model).eval()
    _, info = allocate_and_apply(model, method, target, budget, calib=calib, grid=grid,
                                 distortion=distortion, refine=refine, criterion=criterion,
                                 inplace=True, progress=progress)
    curves = info["curves"]
    return {"actual": rd.distortion(before, model, calib, distortion),
            "predicted": rd.predicted(curves, info["amounts"]) if curves is not None
            else float("nan")}


def zero_shot(model, methods, targets, calib: torch.Tensor, test_loader, *, budget="params",
              curves: pd.DataFrame | None = None, distortion: str = "mse",
              held_out: torch.Tensor | None = None, refine: int = 0,
              criterion: str = "magnitude", options: dict | None = None) -> pd.DataFrame:
    """One-shot pruning without fine-tuning, every method at every target, on copies of
    ``model``: one row each with sparsity, flops_left, top1, loss, predicted (RD curves' sum, when
    ``curves`` are given), distortion on ``calib`` (and ``distortion_heldout`` on ``held_out``)
    and seconds. ``df.attrs["amounts"][method, target]`` holds each allocation. RD's ``curves``
    are computed once when not given; ``refine`` > 0 adds rows ``rd+refine``: RD's allocation
    after that many :func:`rdprune.rd.refine` steps. ``criterion`` (any registered,
    :mod:`rdprune.core.criteria`) picks the weights inside each layer for every method; RD's
    ``curves`` must have been measured with it (a language model's rows add ``perplexity``).
    ``options[method]``: that allocator's keyword arguments. ``seconds`` is the allocation and its
    application; ``passes`` the forward passes over ``calib`` the allocator ran (its
    :class:`rdprune.allocation.Allocation`; RD's curves are counted by whoever measures them)."""
    labels = [m for method in methods
              for m in ([method, "rd+refine"] if method == "rd" and refine else [method])]
    for label in labels:  # every rule, before any work
        check(label.removesuffix("+refine"), criterion, refine if label == "rd+refine" else 0,
              curves)
        if A.get(label.removesuffix("+refine")).structured:
            raise ValueError(f"zero_shot compares mask allocators; {label!r} is structured "
                             "(use rp.prune)")
    if curves is None and any(A.get(m.removesuffix("+refine")).needs_curves for m in labels):
        curves = rd.curves(model, calib, distortion=distortion, criterion=criterion,
                           progress=False)
    rows, chosen, dense_flops = [], {}, M.flops(model)
    # one removal order per layer for every method and target (Wanda: one pass over calib)
    orders = C.orders(model, criterion, calib)
    for label in labels:
        for t in targets:
            tic = time.perf_counter()
            pruned, info = allocate_and_apply(
                model, label.removesuffix("+refine"), t, budget, calib=calib, curves=curves,
                distortion=distortion, criterion=criterion, orders=orders,
                refine=refine if label == "rd+refine" else 0, **(options or {}).get(label, {}))
            seconds = time.perf_counter() - tic
            chosen[label, t] = amounts = info["amounts"]
            row = dict(method=label, target=t, sparsity=M.sparsity(pruned),
                       flops_left=M.flops(pruned) / dense_flops,
                       **train.evaluate(pruned, test_loader),
                       predicted=rd.predicted(curves, amounts) if curves is not None
                       else float("nan"),
                       distortion=rd.distortion(model, pruned, calib, distortion))
            if held_out is not None:
                row["distortion_heldout"] = rd.distortion(model, pruned, held_out, distortion)
            rows.append(dict(row, seconds=seconds, passes=getattr(amounts, "passes", 0.0)))
    out = pd.DataFrame(rows)
    out.attrs["amounts"] = chosen
    return out


def run(model_name: str = "resnet20", dataset: str = "fashion_mnist", method: str = "rd",
        schedule: str = "oneshot", target: float = 0.9, *, budget: str = "params",
        preset: str = "quick", recipe: str | None = None, calibration: str = "train",
        seed: int = 0, out: str | Path | None = None, imagenet_root: str | None = None,
        resume: bool = True, progress: bool = True, dev="auto", weights: str | Path | None = None,
        **overrides) -> pd.DataFrame:
    """Train (or load) the dense model, then prune it on a schedule. Returns the per-round table
    and writes it to ``out`` (default ``results/runs/<name>``). ``overrides`` set any
    :class:`Settings` field. ``recipe`` trains the dense model (default: the preset's);
    ``weights`` (a checkpoint file) loads it instead (:func:`rdprune.train.load_weights`)."""
    s = settings(preset, model_name, **overrides)
    if A.get(method).structured:
        raise ValueError(f"the pipeline prunes weights with masks; {method!r} removes filters "
                         f"physically: use rp.prune(model, {method!r}, target, calib=...) "
                         "(notebook 06_comparison)")
    check(method, s.criterion, s.refine)
    targets = schedule_targets(schedule, target, s.per_round, s.visit)
    if calibration not in ("train", "synthetic"):
        raise ValueError("calibration must be 'train' (training images) or 'synthetic' (zero-data)")
    recipe = recipe or SCHEDULE_RECIPE[preset]
    config = dict(model=model_name, dataset=dataset, recipe=recipe, method=method, schedule=schedule,
                  target=target, budget=budget, preset=preset, calibration=calibration,
                  seed=seed, settings=asdict(s),
                  distortion_fn=rd.distortion_identity(s.distortion))  # a re-registered name
    if weights is not None:  # the run folder follows the file's contents, not only its name
        config["weights"] = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16] \
            if Path(weights).is_file() else str(weights)
    out = Path(out) if out else Path("results") / "runs" / run_name(config)
    out.mkdir(parents=True, exist_ok=True)
    rank, ranks = world()
    model = rank0_first(lambda: train.pretrained(model_name, dataset, recipe, seed, dev=dev,
                                                 progress=progress and rank == 0,
                                                 verbose=progress and rank == 0, weights=weights))
    progress = progress and rank == 0
    train_loader, test_loader = D.loaders(dataset, s.batch_size, seed=seed, subset=None,
                                          imagenet_root=imagenet_root)
    val = None
    if s.val_n and s.finetune_steps and dataset in D.IN_MEMORY:  # image folders: no guard yet
        val, train_loader = D.selection_split(dataset, s.val_n, batch_size=s.batch_size,
                                              seed=seed, labels=True)
    if s.eval_subset:
        _, test_loader = D.loaders(dataset, s.batch_size, seed=seed, subset=s.eval_subset,
                                   imagenet_root=imagenet_root)
    if calibration == "synthetic":
        if not getattr(model, "input_size", None):
            raise ValueError(f"zero-data calibration draws N(0, 1) images; {model_name} has no "
                             "image input_size (a language model): use calibration='train'")
        calib = D.calibration("synthetic", s.calib_n, seed, shape=model.input_size)
    else:
        calib = D.calibration(dataset, s.calib_n, seed, imagenet_root=imagenet_root)
    rows, start = _resume(out, config, model, rank, ranks) if resume else ([], 0)
    dense_flops = sum(M.layer_flops(model).values())
    if start == 0:
        rows = [dict(method=method, schedule=schedule, round=0, stage="dense", target=0.0,
                     sparsity=M.sparsity(model), flops_left=1.0, **train.evaluate(model, test_loader),
                     predicted=0.0, actual=0.0, seconds=0.0)]
    for r, t in enumerate(targets, start=1):
        if r <= start:
            continue
        tic = time.perf_counter()
        dist = prune_round(model, method, t, calib, budget=budget, grid=s.grid,
                           distortion=s.distortion, refine=s.refine, criterion=s.criterion,
                           progress=progress)
        guard = _fine_tune(model, train_loader, s, val, dev, progress) if s.finetune_steps else {}
        stage = "pruned + fine-tuned" if guard.get("finetune_kept", bool(guard)) else "pruned"
        rows.append(dict(method=method, schedule=schedule, round=r, stage=stage, target=t,
                         sparsity=M.sparsity(model), flops_left=M.flops(model) / dense_flops,
                         **train.evaluate(model, test_loader), **dist, **guard,
                         seconds=time.perf_counter() - tic))
        if rank == 0:
            _checkpoint(out, config, model, rows)
    table = pd.DataFrame(rows)
    if rank == 0:
        atomic_write_bytes(out / "results.csv", _csv(table))
    table.attrs["out"] = str(out)
    return table


def rank0_first(make):
    """``make()`` on rank 0 first, then on the other ranks (after a barrier), so that a dense
    model is trained once and cached before they load it; just ``make()`` in one process."""
    rank, ranks = world()
    if ranks == 1:
        return make()
    import torch.distributed as dist
    out = make() if rank == 0 else None
    dist.barrier()
    return out if rank == 0 else make()


def _fine_tune(model, loader, s: Settings, val, dev, progress) -> dict:
    """The round's fine-tune in place; with ``val`` (held-out training images and labels) the
    tuned weights are kept only if their top-1 there is not below the start's."""
    def tune():
        train.fine_tune(model, loader, s.finetune_steps, lr=s.finetune_lr,
                        schedule=s.finetune_schedule, dev=dev, progress=progress)

    if val is None:
        tune()
        return {"finetune_kept": True}
    held = [val]
    start = copy.deepcopy(model.state_dict())

    def score():  # higher is better: top-1, or minus the loss for a language model
        r = train.evaluate(model, held)
        return -r["loss"] if "perplexity" in r else r["top1"]

    before = score()
    tune()
    after = score()
    if after < before:
        model.load_state_dict(start)
    return {"val_before": before, "val_after": after, "finetune_kept": after >= before}


def run_name(config: dict) -> str:
    """The run's folder: its main settings in words, then a hash of every setting that changes
    results, so a run with other settings never reuses (or replaces) another's folder."""
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    c = config
    return (f"{models.slug(c['model'])}-{D.slug(c['dataset'])}-{c['method']}-{c['budget']}-{c['schedule']}-"
            f"{c['target']:g}-{c['preset']}-{c['calibration']}-s{c['seed']}-{key}")


def _csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False, float_format="%.6g").encode()


def _checkpoint(out: Path, config, model, rows):
    buf = io.BytesIO()
    torch.save({"config": config, "rows": rows, "state": model.state_dict()}, buf)
    atomic_write_bytes(out / "state.pt", buf.getvalue())
    atomic_write_bytes(out / "results.csv", _csv(pd.DataFrame(rows)))
    atomic_write_bytes(out / "config.json", json.dumps(config, indent=2).encode())


def _resume(out: Path, config, model, rank: int = 0, ranks: int = 1):
    """(rows, last finished round) of an interrupted run in ``out``, its state loaded into
    ``model``; ([], 0) when there is none. Under torchrun rank 0 reads the folder and broadcasts
    rows and state, so ranks on other machines (no shared disk) resume from the same round."""
    if ranks > 1:
        rows, start = _resume(out, config, model) if rank == 0 else (None, None)
        state = {k: v.cpu() for k, v in model.state_dict().items()} if start else None
        rows, start, state = from_rank0((rows, start, state))
        if rank != 0 and start:
            M.load_state(model, state)
        return rows, start
    path = out / "state.pt"
    if not path.exists():
        return [], 0
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if blob["config"] != config:
            print(f"{path}: different settings, starting over")
            return [], 0
        rows, start = blob["rows"], int(blob["rows"][-1]["round"])
        M.load_state(copy.deepcopy(model), blob["state"])  # a state that fails leaves no trace
        M.load_state(model, blob["state"])
    except Exception as e:  # on rank 0 too: never before the broadcast
        print(f"{path} is unreadable ({type(e).__name__}); starting over")
        return [], 0
    print(f"resuming {out} after round {start}")
    return rows, start

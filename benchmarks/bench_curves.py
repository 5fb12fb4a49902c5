"""RD curves: fast (downstream-only, batched amounts, skip at-or-below current sparsity) against
the reference (one full forward pass per layer and amount, as the authors' code).

One-shot: ResNet-32, the same calibration tensor, a 101-point grid. The reference's cost does not
depend on the amount (every pass is a full forward), so by default it is timed on every
``--ref-stride``-th amount of every layer and scaled to the whole grid; ``--ref-stride 1`` times
it all. Max relative difference is taken over the amounts both computed.

Iterative: five rounds of 20 % (the authors' schedule, masks by RD itself); the fast curves are
recomputed each round on the masked model, the reference's cost is the authors' (every amount,
every layer, every round) at the measured per-pass time.

Also prints the bound the downstream idea allows: Σ_l full FLOPs / Σ_l downstream FLOPs.
Writes benchmarks/curves.csv.
"""
import argparse
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import rdprune as rp
from rdprune import masks as M
from rdprune.downstream import Downstream


def downstream_bound(model):
    """Σ_l full FLOPs / Σ_l FLOPs of layer l and everything downstream of it."""
    per_module = M.module_flops(model, torch.zeros(1, *model.input_size))
    full = per_module[""]
    ds = Downstream(model)
    total = 0
    for name in M.prunable(model):
        cone = [n.target for n in ds.cone(name) if n.op == "call_module"]
        total += per_module.get(name, 0) + sum(per_module.get(t, 0) for t in cone
                                               if isinstance(ds.modules[t], M.PRUNABLE_TYPES))
    return len(M.prunable(model)) * full / total


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet32")
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--grid", type=int, default=101)
    p.add_argument("--ref-stride", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iter-calib", type=int, default=None,
                   help="calibration images for the iterative part (default: --calib)")
    args = p.parse_args()
    torch.manual_seed(0)
    ckpt = rp.train.checkpoint_path(args.model, "fashion_mnist", "quick", 0)
    if ckpt.exists():
        model = rp.train.pretrained(args.model, verbose=False, progress=False)
        weights = "trained (quick)"
    else:
        model = rp.models.build(args.model).eval()
        weights = "random init (no cached checkpoint)"
    calib = rp.data.calibration("fashion_mnist", args.calib, 0)
    kw = dict(grid=args.grid, cache=False, progress=True)
    bound = downstream_bound(model)
    print(f"{args.model} ({weights}), {args.calib} images, {args.grid}-point grid, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    fast, t_fast = timed(lambda: rp.rd.curves(model, calib, **kw))
    amounts = rp.rd.grid_amounts(args.grid)
    sub = amounts[:: args.ref_stride]
    # time the reference on a subset of amounts: same per-pass cost for every amount
    n_sub = len(sub)
    names = list(M.prunable(model))

    def reference():
        return dict(rp.rd._reference(model, calib, names, sub, "mse", 256, 0, False))
    ref_sub, t_ref_sub = timed(reference)
    passes_sub = len(names) * (n_sub - 1)  # amount 0 changes nothing and is skipped
    per_pass = t_ref_sub / passes_sub
    t_ref = per_pass * len(names) * (args.grid - 1)
    a = np.concatenate([fast[fast.layer == k].distortion.to_numpy()[:: args.ref_stride]
                        for k in names])
    b = np.concatenate([ref_sub[k] for k in names])
    nz = b > 0
    max_rel = float(np.max(np.abs(a[nz] - b[nz]) / b[nz])) if nz.any() else 0.0
    rows = [dict(case="one-shot", fast_s=t_fast, reference_s=t_ref, speedup=t_ref / t_fast,
                 bound=bound, max_rel_diff=max_rel)]

    # iterative: RD masks each round, curves recomputed on the masked model
    m = model
    if args.iter_calib and args.iter_calib != args.calib:
        calib = rp.data.calibration("fashion_mnist", args.iter_calib, 0)
        names = list(M.prunable(m))
        _, t = timed(lambda: dict(rp.rd._reference(m, calib, names, sub, "mse", 256, 0, False)))
        per_pass = t / passes_sub
    t_fast_iter, t_ref_iter = 0.0, 0.0
    for r in range(1, args.rounds + 1):
        curves, t = timed(lambda: rp.rd.curves(m, calib, **kw))
        t_fast_iter += t
        t_ref_iter += per_pass * len(M.prunable(m)) * (args.grid - 1)
        M.apply(m, rp.allocate("rd", m, 1 - 0.8 ** r, curves=curves))
        print(f"round {r}: sparsity {M.sparsity(m):.3f}, fast curves {t:.1f} s")
    rows.append(dict(case=f"iterative ({args.rounds} rounds, {len(calib)} images)", fast_s=t_fast_iter,
                     reference_s=t_ref_iter, speedup=t_ref_iter / t_fast_iter, bound=np.nan,
                     max_rel_diff=np.nan))
    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"reference timed on {passes_sub} full passes ({per_pass * 1e3:.1f} ms each), "
          f"scaled to {len(M.prunable(model)) * (args.grid - 1)}")
    df.to_csv(Path(__file__).with_name("curves.csv"), index=False)


if __name__ == "__main__":
    main()

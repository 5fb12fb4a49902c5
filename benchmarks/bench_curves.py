"""RD curves: fast (downstream-only, batched amounts, skip at-or-below current sparsity) against
the reference (one full forward pass per layer and amount, as the authors' code).

``--model`` takes any zoo name: ``vit_tiny`` (traced, attention as a leaf) and ``lm_tiny``
(Hugging Face GPT-2 over bytes, served by replay; calibration windows of the byte corpus) too.

One-shot: ResNet-32 by default, the same calibration tensor, a 101-point grid (``--calib 32 64 256``: once
per calibration size, the column ``of_bound`` says how much of the bound each reaches). The reference's cost does not
depend on the amount (every pass is a full forward), so by default it is timed on every
``--ref-stride``-th amount of every layer and scaled to the whole grid; ``--ref-stride 1`` times
it all. Max relative difference is taken over the amounts both computed.

Iterative: five rounds of 20 % (the authors' schedule, masks by RD itself); the fast curves are
recomputed each round on the masked model, the reference's cost is the authors' (every amount,
every layer, every round) at the measured per-pass time.

Also prints the bound the downstream idea allows: the reference's conv/linear FLOPs over those
of the cones the fast path runs (one-shot: Σ_l full FLOPs / Σ_l downstream FLOPs; iterative: the
same summed over the rounds, counting only the amounts each round computes).
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
from rdprune.core import batch as B
from rdprune.core.downstream import Downstream, Untraceable


def cone_flops(model, x):
    """(full FLOPs, {layer: FLOPs a curve point of that layer needs at least}): for a layer the
    trace serves, the layer's module and every module of its downstream cone; for one that
    replay serves (a model torch.fx cannot trace, e.g. Hugging Face GPT-2), the pass minus what
    it has spent when the layer's module is first called (replay skips at most that)."""
    per_module = M.module_flops(model, x)
    try:
        ds = Downstream(model, x)
        served = ds.layer_node
    except Untraceable:  # every layer replayed
        ds, served = None, {}
    before = flops_before(model, x) if len(served) < len(M.prunable(model)) else {}
    cones = {}
    for name in M.prunable(model):
        if name in served:
            node = served[name]
            cones[name] = per_module.get(node.target, 0) + sum(
                per_module.get(n.target, 0) for n in ds.cone(name) if n.op == "call_module")
        else:
            cones[name] = per_module[""] - before[name]
    return per_module[""], cones


def flops_before(model, x):
    """{layer: FLOPs the forward pass has spent when the layer's module is first called}."""
    from torch.utils.flop_counter import FlopCounterMode
    seen = {}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # as the FLOP counts of rdprune.masks
    with FlopCounterMode(display=False) as counter:
        def note(name):
            def hook(mod, args):  # returns None: the module's inputs stay as they are
                seen.setdefault(name, counter.get_total_flops())
            return hook
        hooks = [M.holder(m).register_forward_pre_hook(note(n))
                 for n, m in M.prunable(model).items()]
        try:
            with torch.no_grad():
                B.call(model, x)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
            for h in hooks:
                h.remove()
    return seen


def bound(model, amounts, x):
    """(FLOPs of the reference's passes, FLOPs the downstream idea needs) for one set of curves:
    the reference runs the full network for every layer and non-zero amount; the fast path runs
    each layer's cone for the amounts above its current sparsity."""
    full, cones = cone_flops(model, x)
    ref = fast = 0
    for name, module in M.prunable(model).items():
        already, counts = rp.rd.pruned_counts(module, amounts)
        ref += full * (len(amounts) - 1)
        fast += cones[name] * sum(k > already for k in counts)
    return ref, fast


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def per_pass_seconds(model, calib, sub):
    """Seconds of one reference pass (a full forward), timed on the amounts ``sub`` of every layer
    (the reference's cost does not depend on the amount); also returns those curves."""
    names = list(M.prunable(model))
    ref, t = timed(lambda: dict(rp.rd.reference_curves(model, calib, names, sub, "mse", 256, 0, False)))
    return t / (len(names) * (len(sub) - 1)), ref  # amount 0 changes nothing and is skipped


def one_shot(model, calib, amounts, stride, kw):
    names = list(M.prunable(model))
    fast, t_fast = timed(lambda: rp.rd.curves(model, calib, **kw))
    per_pass, ref_sub = per_pass_seconds(model, calib, amounts[::stride])
    t_ref = per_pass * len(names) * (len(amounts) - 1)
    a = np.concatenate([fast[fast.layer == k].distortion.to_numpy()[::stride] for k in names])
    b = np.concatenate([ref_sub[k] for k in names])
    nz = b > 0
    max_rel = float(np.max(np.abs(a[nz] - b[nz]) / b[nz])) if nz.any() else 0.0
    ref_flops, fast_flops = bound(model, amounts, calib[:1])
    print(f"reference: {per_pass * 1e3:.1f} ms per full pass, scaled to {len(names) * (len(amounts) - 1)}")
    return dict(case="one-shot", fast_s=t_fast, reference_s=t_ref, speedup=t_ref / t_fast,
                bound=ref_flops / fast_flops, max_rel_diff=max_rel), per_pass


def iterative(model, calib, amounts, stride, rounds, kw, per_pass=None):
    """RD masks each round, curves recomputed on the masked model; the reference's cost is the
    authors' (every amount, every layer, every round) at the per-pass time (``per_pass``, or
    measured on the dense model)."""
    per_pass = per_pass or per_pass_seconds(model, calib, amounts[::stride])[0]
    t_fast = t_ref = ref_flops = fast_flops = 0
    for r in range(1, rounds + 1):
        ref_r, fast_r = bound(model, amounts, calib[:1])
        ref_flops, fast_flops = ref_flops + ref_r, fast_flops + fast_r
        curves, t = timed(lambda: rp.rd.curves(model, calib, **kw))
        t_fast += t
        t_ref += per_pass * len(M.prunable(model)) * (len(amounts) - 1)
        M.apply(model, rp.allocate("rd", model, 1 - 0.8 ** r, curves=curves))
        print(f"round {r}: sparsity {M.sparsity(model):.3f}, fast curves {t:.1f} s, "
              f"bound this round {ref_r / fast_r:.2f}")
    return dict(case=f"iterative ({rounds} rounds, {len(calib)} images)", fast_s=t_fast,
                reference_s=t_ref, speedup=t_ref / t_fast, bound=ref_flops / fast_flops,
                max_rel_diff=np.nan)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet32")
    p.add_argument("--calib", type=int, nargs="+", default=[256],
                   help="calibration set sizes (images, or 128-byte windows for lm_tiny); the "
                        "one-shot case runs once per size")
    p.add_argument("--grid", type=int, default=101)
    p.add_argument("--ref-stride", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iter-calib", type=int, default=None,
                   help="calibration images for the iterative part (default: --calib)")
    p.add_argument("--cases", nargs="+", default=["one-shot", "iterative"],
                   choices=["one-shot", "iterative"],
                   help="what to run; rows of the other case already in the CSV are kept")
    p.add_argument("--device", default="cpu", help="cpu or cuda (both paths run there)")
    args = p.parse_args()
    torch.manual_seed(0)
    dataset = "pystdlib" if args.model in rp.models.TEXT else "fashion_mnist"
    ckpt = rp.train.checkpoint_path(args.model, dataset, "quick", 0)
    if ckpt.exists():
        model = rp.train.pretrained(args.model, dataset, verbose=False, progress=False)
        weights = "trained (quick)"
    else:
        inf = rp.data.info(dataset)
        model = rp.models.build(args.model, inf.num_classes, inf.in_channels,
                                image_size=inf.image_size).eval()
        weights = "random init (no cached checkpoint)"
    model = model.to(args.device)
    kw = dict(grid=args.grid, cache=False, progress=True)
    amounts = rp.rd.grid_amounts(args.grid)
    where = (torch.cuda.get_device_name() if args.device.startswith("cuda") else
             f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{args.model} ({weights}), {args.grid}-point grid, {where}")
    rows, per_pass = [], None
    unit = "windows" if dataset == "pystdlib" else "images"
    if "one-shot" in args.cases:
        for n in args.calib:
            calib = rp.data.calibration(dataset, n, 0).to(args.device)
            row, per_pass = one_shot(model, calib, amounts, args.ref_stride, kw)
            rows.append({**row, "case": f"one-shot ({n} {unit})", "model": args.model})
    if "iterative" in args.cases:
        n = args.iter_calib or args.calib[-1]
        calib = rp.data.calibration(dataset, n, 0).to(args.device)
        rows.append(dict(iterative(model, calib, amounts, args.ref_stride, args.rounds, kw,
                                   per_pass if n == args.calib[-1] else None),
                         model=args.model))
    df = pd.DataFrame(rows)
    df["of_bound"] = df.speedup / df.bound  # how much of what the downstream idea allows
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    path = Path(__file__).with_name("curves.csv")
    if path.exists():
        old = pd.read_csv(path)
        old["model"] = old["model"].fillna("resnet32") if "model" in old else "resnet32"
        old = old[~(old.case.str.split(" ").str[0].isin(args.cases) & (old.model == args.model))]
        df = pd.concat([old, df], ignore_index=True)
    df.to_csv(path, index=False)


if __name__ == "__main__":
    main()

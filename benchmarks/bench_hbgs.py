"""HBGS / HBGTS (and -B) pruning time: ResNet-32 to a 63 % parameter reduction on this CPU.

Setting: ResNet-32 (rdprune.models, Fashion-MNIST shape 1×28×28, random init: pruning time does
not depend on accuracy, though which layers are picked, and so the round count, does), k = 5
filters per round (the authors' code), selection set = ``--n-sel`` held-out *training* images
(default 64; the authors scored on all 10k CIFAR test images), no fine-tuning between rounds,
one thread. HBGS and HBGS-B run to the target. HBGTS and HBGTS-B (about 10× slower per round)
run ``--rounds`` rounds, and their total is extrapolated with the round count of the full run
that uses the same selector (HBGTS ↔ HBGS, HBGTS-B ↔ HBGS-B). Round 1 also computes every
candidate's selection, later rounds only the committed layer's, so both estimates are round 1 +
(rounds − 1) × the mean of rounds 2..r: ``est_total_s`` plainly (an upper bound, since rounds get
cheaper as the network shrinks), ``est_scaled_s`` × (mean FLOPs over the full run / mean FLOPs
over its first r rounds), as an HBGTS round is dominated by suffix forwards.

The paper's hours (ResNet-32, CIFAR-10, 63 % params, read off a bar chart) include one epoch of
fine-tuning per round on a GPU. So the table adds ``est_hours_with_ft``: our selection time plus
rounds × one fine-tune epoch (timed on ``--ft-steps`` batches of 128 with distillation, scaled to
the training split). The FP-OMP / FP-Backward uniform baselines are timed too (data-free, no
fine-tuning). Last, the rank-one downdate speed-up of FP-Backward (benchmarks/bench_filters.py)
is measured on this network's real layer shapes, for the full candidate recompute that follows
every fine-tune. Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_hbgs.py``; writes
benchmarks/hbgs.csv (about 5 minutes).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rdprune as rp
from bench_filters import best_time
from rdprune import filters as FL
from rdprune import hbgs as H
from rdprune import reproduce
from rdprune import structured as S
from rdprune import train as T

_HOURS = reproduce.paper_numbers().query("metric == 'pruning_hours_at_63pct_params' "
                                         "and model == 'ResNet-32'")
PAPER_HOURS = dict(zip(_HOURS.method, _HOURS.value))  # read off the authors' slides
FULL = {"HBGS": None, "HBGS-B": None, "HBGTS": "HBGS", "HBGTS-B": "HBGS-B"}


def per_round(name, tr, every):
    print(f"  {name}: per-round seconds (round: s, params left)")
    for r in tr.iloc[::every].itertuples():
        print(f"    {r.round:4d}: {r.seconds:6.2f}  {r.params:7d}  "
              f"{r.layer}/{r.side}->{r.filters_left}")


def ft_epoch_seconds(model, steps, train_size):
    _, loader = rp.data.selection_split("fashion_mnist", n=64, batch_size=128, seed=1)
    student, teacher = H.wrap(model), model
    T.fine_tune(student, loader, 1, teacher=teacher, dev="cpu", progress=False)  # warm-up
    t = time.perf_counter()
    T.fine_tune(student, loader, steps, teacher=teacher, dev="cpu", progress=False)
    return (time.perf_counter() - t) / steps * (train_size / 128)


def downdate_speedup(model, k=5):
    """Seconds to recompute every FP-Backward candidate once (all wrappers × sides)."""
    Bs = []
    for w in H.wrappers(H.wrap(model)).values():
        for side in ("out", "in"):
            B = FL.filter_matrix(w.conv.weight, side)
            Bs.append((B, B.shape[1] - k))
    t_dd, _ = best_time(lambda: [FL.fp_backward(B, keep, downdate=True) for B, keep in Bs])
    t_inv, _ = best_time(lambda: [FL.fp_backward(B, keep, downdate=False) for B, keep in Bs])
    B = FL.filter_matrix(model.layer3[1].conv1.weight, "out")  # 64 filters of D = 576, to 37 %
    t64_dd, _ = best_time(lambda: FL.fp_backward(B, 24, downdate=True))
    t64_inv, _ = best_time(lambda: FL.fp_backward(B, 24, downdate=False))
    return len(Bs), t_dd, t_inv, t64_dd, t64_inv


def main(target=0.63, n_sel=64, k=5, rounds=10, ft_steps=10):
    torch.set_num_threads(1)
    threads, load0, t_all = torch.get_num_threads(), os.getloadavg(), time.perf_counter()
    torch.manual_seed(0)
    model = rp.models.build("resnet32", 10, 1).eval()
    full = S.count(model)
    sel, loader = rp.data.selection_split("fashion_mnist", n=n_sel, seed=0)
    train_size = len(loader.x) + n_sel
    print(f"ResNet-32 {full}, target {target:.0%} params, k={k}, selection {n_sel} training "
          f"images, {threads} thread(s), load {load0[0]:.2f}")
    ft_epoch = ft_epoch_seconds(model, ft_steps, train_size)
    print(f"one fine-tune epoch ({train_size} images, CE + KL) ≈ {ft_epoch:.0f} s on this CPU")
    rows, traces = [], {}
    for name, kw in H.METHODS.items():
        cap = rounds if FULL[name] else None
        t = time.perf_counter()
        _, tr = H.prune(model, sel, target, "params", k=k, progress=False, batch_size=n_sel,
                        max_rounds=cap, **kw)
        wall, traces[name] = time.perf_counter() - t, tr
        per_round(name, tr, 1 if cap else 25)
        head = tr.seconds.iloc[:rounds].mean()
        if cap:
            ref = traces[FULL[name]]
            need, later = len(ref), tr.seconds.iloc[1:].mean()
            plain = tr.seconds.iloc[0] + (need - 1) * later
            scaled = tr.seconds.iloc[0] + (need - 1) * later * (
                ref.flops.mean() / ref.flops.iloc[:rounds].mean())
        else:
            need, plain = len(tr), wall
            scaled = wall
        rows.append(dict(method=name, selector=kw["selector"], criterion=kw["criterion"],
                         rounds_run=len(tr), reached=tr.attrs["reached"], wall_s=round(wall, 1),
                         first_rounds_mean_s=round(head, 3),
                         mean_round_s=round(tr.seconds.mean(), 3),
                         rounds_needed=need, est_total_s=round(plain, 1),
                         est_scaled_s=round(scaled, 1), est_hours=round(scaled / 3600, 3),
                         est_hours_with_ft=round((scaled + need * ft_epoch) / 3600, 2),
                         paper_hours=PAPER_HOURS[name],
                         params_reduction=round(1 - tr.params.iloc[-1] / full["params"], 3),
                         flops_reduction=round(1 - tr.flops.iloc[-1] / full["flops"], 3)))
    for name, selector in (("FP-OMP", "omp"), ("FP-Backward", "backward")):
        t = time.perf_counter()
        _, info = H.uniform(model, target, "params", selector)
        wall = time.perf_counter() - t
        rows.append(dict(method=name, selector=selector, criterion="uniform", rounds_run=0,
                         reached=True, wall_s=round(wall, 2), est_total_s=round(wall, 2),
                         est_scaled_s=round(wall, 2), est_hours=round(wall / 3600, 4),
                         paper_hours=PAPER_HOURS[name],
                         params_reduction=round(1 - info.params.iloc[0] / full["params"], 3),
                         flops_reduction=round(1 - info.flops.iloc[0] / full["flops"], 3)))
    n, t_dd, t_inv, t64_dd, t64_inv = downdate_speedup(model, k)
    load1 = os.getloadavg()
    df = pd.DataFrame(rows).assign(selection_size=n_sel, k=k, threads=threads,
                                   load_start=round(load0[0], 2), load_end=round(load1[0], 2),
                                   ft_epoch_s=round(ft_epoch, 1))
    out = Path(__file__).with_name("hbgs.csv")
    df.to_csv(out, index=False)
    cols = ["method", "rounds_run", "reached", "rounds_needed", "wall_s", "est_scaled_s",
            "est_hours", "est_hours_with_ft", "paper_hours", "params_reduction", "flops_reduction"]
    print("\n" + df[cols].to_string(index=False))
    b = df.set_index("method")
    h = {m: b.est_hours[m] for m in H.METHODS}
    print(f"\nSelection only (this CPU, 1 thread, {n_sel} images, no fine-tuning): HBGS "
          f"{h['HBGS']:.3f} h, HBGS-B {h['HBGS-B']:.3f} h, HBGTS ≈ {h['HBGTS']:.2f} h, HBGTS-B ≈ "
          f"{h['HBGTS-B']:.2f} h (the last two extrapolated). Paper: 14 / 7 / 25 / 12 h, which "
          "include one fine-tune epoch per round; with one CPU epoch per round ours would be "
          f"{b.est_hours_with_ft['HBGS']:.0f} / {b.est_hours_with_ft['HBGS-B']:.0f} / "
          f"{b.est_hours_with_ft['HBGTS']:.0f} / {b.est_hours_with_ft['HBGTS-B']:.0f} h.")
    print(f"Ratios: HBGTS/HBGS {b.est_scaled_s['HBGTS'] / b.est_scaled_s['HBGS']:.1f}× (paper "
          f"≈1.8×), HBGS/HBGS-B {b.est_scaled_s['HBGS'] / b.est_scaled_s['HBGS-B']:.1f}× (paper "
          "≈2×).")
    print(f"FP-Backward rank-one downdates: one full candidate recompute ({n} selections, {k} "
          f"removed each) {t_dd:.3f} s vs {t_inv:.3f} s re-inverting ({t_inv / t_dd:.1f}×); "
          f"one 64→24 layer {t64_dd * 1e3:.1f} ms vs {t64_inv * 1e3:.1f} ms "
          f"({t64_inv / t64_dd:.1f}×). Synthetic sizes (benchmarks/filters.csv):")
    print(pd.read_csv(Path(__file__).with_name("filters.csv")).to_string(index=False))
    print(f"wrote {out}; total {time.perf_counter() - t_all:.0f} s, load {load0[0]:.2f} -> "
          f"{load1[0]:.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", type=float, default=0.63)
    ap.add_argument("--n-sel", type=int, default=64)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10, help="rounds run by HBGTS / HBGTS-B")
    ap.add_argument("--ft-steps", type=int, default=10)
    a = ap.parse_args()
    main(a.target, a.n_sel, a.k, a.rounds, a.ft_steps)

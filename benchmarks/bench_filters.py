"""FP-Backward cost: rank-one downdates of G and λ vs re-inverting G at every removal.

For n = 64, 128, 256 random filters of dimension D = 9·n (a 3×3 conv with n in- and n
out-channels), it drops half the filters (keep = n/2). It reports the best wall time of 3
runs per variant, on one thread, and whether the two variants pick the same S. ``fixed_s`` is
the cost shared by both variants (Gram BᵀB, first inverse, final λ), timed as keep = n with no
removals; ``loop_speedup`` compares the removal loops alone. Usage:
``OMP_NUM_THREADS=1 python benchmarks/bench_filters.py``. It writes benchmarks/filters.csv.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from rdprune.structured.filters import error, fp_backward


def best_time(fn, repeats=3):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(sizes=(64, 128, 256)):
    torch.set_num_threads(1)
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        B = torch.randn(9 * n, n, generator=g, dtype=torch.float64) * 0.05
        keep = n // 2
        t_dd, (S_dd, _) = best_time(lambda: fp_backward(B, keep, downdate=True))
        t_inv, (S_inv, _) = best_time(lambda: fp_backward(B, keep, downdate=False))
        t_fix, _ = best_time(lambda: fp_backward(B, n))
        rows.append(dict(n=n, D=9 * n, keep=keep, downdate_s=round(t_dd, 4),
                         reinvert_s=round(t_inv, 4), speedup=round(t_inv / t_dd, 1),
                         fixed_s=round(t_fix, 4),
                         loop_speedup=round((t_inv - t_fix) / max(t_dd - t_fix, 1e-9), 1),
                         same_S=S_dd == S_inv,
                         rel_error=round(error(B, S_dd) / B.square().sum().item(), 4)))
    df = pd.DataFrame(rows)
    out = Path(__file__).with_name("filters.csv")
    df.to_csv(out, index=False)
    print(df.to_string(index=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Knapsack solver: time and peak memory for 10 / 34 / 54 / 200 layers × 101 amounts, under
parameter and FLOPs budgets, at the default resolution and the interactive one (4096 bins).
Goals: 54 × 101 in < 1 s and < 200 MB; 34 × 101 re-solve < 50 ms. Writes benchmarks/solver.csv."""
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from rdprune.core.knapsack import DEFAULT_MAX_STATES, Table, solve


def problem(n_layers, budget, rng):
    n = rng.integers(500, 2_500_000, n_layers)  # weights per layer, ResNet-50-like spread
    f = n * rng.integers(49, 3136, n_layers)     # FLOPs: weights × output pixels
    amounts = np.linspace(0, 1, 101)
    dist = np.cumsum(rng.random((n_layers, 101)) ** 4, 1) * rng.random((n_layers, 1))
    dist[:, 0] = 0
    per = n if budget == "params" else f
    kept = per[:, None] - np.floor(amounts * n[:, None]) * (per / n)[:, None]
    return kept, dist, 0.1 * per.sum()


def main():
    rng = np.random.default_rng(0)
    rows = []
    for n_layers in (10, 34, 54, 200):
        for budget in ("params", "flops"):
            costs, dist, cap = problem(n_layers, budget, rng)
            for states in (DEFAULT_MAX_STATES, 4096):
                solve(costs, dist, cap, max_states=states)  # warm-up
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    pick = solve(costs, dist, cap, max_states=states)
                    times.append(time.perf_counter() - t)
                tracemalloc.start()
                solve(costs, dist, cap, max_states=states)
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                used = costs[np.arange(n_layers), pick].sum()
                rows.append(dict(layers=n_layers, budget=budget, bins=states,
                                 seconds=min(times), peak_mb=peak / 2**20,
                                 budget_used=used / cap))
    # re-solving for a new target from one DP table (what the notebook sliders do)
    for n_layers in (34, 54):
        costs, dist, cap = problem(n_layers, "params", rng)
        full = costs[:, 0].sum()
        t = time.perf_counter()
        table = Table(costs, dist, full, max_states=1 << 17)
        build = time.perf_counter() - t
        t = time.perf_counter()
        for target in np.linspace(0.3, 0.95, 100):
            pick = table.pick((1 - target) * full)
            assert costs[np.arange(n_layers), pick].sum() <= (1 - target) * full
        rows.append(dict(layers=n_layers, budget="params", bins=1 << 17, seconds=(time.perf_counter() - t) / 100,
                         peak_mb=table.choice.nbytes / 2**20, budget_used=np.nan,
                         note=f"re-solve from a Table built once in {build:.2f} s"))
    df = pd.DataFrame(rows)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""))
    df.to_csv(Path(__file__).with_name("solver.csv"), index=False)


if __name__ == "__main__":
    main()

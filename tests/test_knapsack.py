import itertools

import numpy as np
import pytest

from rdprune.core.knapsack import solve


def brute(costs, dist, budget):
    best, arg = np.inf, None
    for pick in itertools.product(*[range(costs.shape[1])] * costs.shape[0]):
        c = sum(costs[l, p] for l, p in enumerate(pick))
        d = sum(dist[l, p] for l, p in enumerate(pick))
        if c <= budget + 1e-9 and d < best:
            best, arg = d, pick
    return best, arg


@pytest.mark.parametrize("seed", range(40))
def test_integer_costs_give_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    L, K = rng.integers(1, 5), rng.integers(1, 6)
    costs = rng.integers(0, 30, (L, K)).astype(float)
    dist = rng.random((L, K)) * rng.choice([1, 1e-3, 1e3])
    budget = float(rng.integers(costs.min(1).sum(), costs.max(1).sum() + 1))
    best, _ = brute(costs, dist, budget)
    pick = solve(costs, dist, budget)
    assert costs[np.arange(L), pick].sum() <= budget
    assert dist[np.arange(L), pick].sum() == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_real_costs_never_exceed_budget_and_fine_bins_reach_the_optimum(seed):
    rng = np.random.default_rng(100 + seed)
    L, K = rng.integers(1, 5), rng.integers(2, 6)
    costs = rng.random((L, K)) * 100
    dist = rng.random((L, K))
    budget = float(rng.uniform(costs.min(1).sum(), costs.max(1).sum()))
    best, _ = brute(costs, dist, budget)
    for states in (64, 1 << 14):
        pick = solve(costs, dist, budget, max_states=states)
        assert costs[np.arange(L), pick].sum() <= budget + 1e-9
        assert dist[np.arange(L), pick].sum() >= best - 1e-12
    # binning only loses options within L bins of the budget
    pick = solve(costs, dist, budget, max_states=1 << 14)
    slack_best, _ = brute(costs, dist, budget - L * budget / (1 << 14))
    assert dist[np.arange(L), pick].sum() <= slack_best + 1e-12


def test_disallowed_options_and_infeasible_budget():
    costs = np.array([[1.0, 5.0], [2.0, 3.0]])
    dist = np.array([[np.inf, 1.0], [0.0, 0.5]])
    assert solve(costs, dist, 7).tolist() == [1, 0]
    with pytest.raises(ValueError, match="no choice fits"):
        solve(costs, dist, 6)
    with pytest.raises(ValueError, match="layers, options"):
        solve(costs, dist[:1], 10)
    with pytest.raises(ValueError, match="NaN"):
        solve(costs, np.full((2, 2), np.nan), 10)


def test_large_problem_memory_is_small():
    rng = np.random.default_rng(0)
    n = rng.integers(1_000, 2_000_000, 54)
    amounts = np.linspace(0, 1, 101)
    costs = np.outer(n, 1 - amounts)
    dist = np.cumsum(rng.random((54, 101)), 1)
    budget = 0.2 * n.sum()
    pick = solve(costs, dist, budget)
    assert costs[np.arange(54), pick].sum() <= budget


def test_user_bin_width_is_respected_and_never_over_budget():
    rng = np.random.default_rng(7)
    costs = rng.random((6, 9)) * 1000
    dist = rng.random((6, 9))
    budget = costs.mean(1).sum()
    for width in (0.5, 5.0, 50.0):
        pick = solve(costs, dist, budget, bin_width=width)
        assert costs[np.arange(6), pick].sum() <= budget
    coarse = dist[np.arange(6), solve(costs, dist, budget, bin_width=50.0)].sum()
    fine = dist[np.arange(6), solve(costs, dist, budget, bin_width=0.5)].sum()
    assert fine <= coarse + 1e-12

"""Properties of the HBGS filter-selection core (rdprune.filters): closed-form criterion, downdates,
OMP monotonicity, compensation exactness, input validation. All instances are tiny and seeded."""
import pytest
import torch

from rdprune import filters as F


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_filter_matrix_sides():
    W = rand(6, 4, 3, 3)
    B = F.filter_matrix(W, "out")
    assert B.shape == (36, 6) and torch.equal(B[:, 2], W[2].flatten())
    Bi = F.filter_matrix(W, "in")
    assert Bi.shape == (54, 4) and torch.equal(Bi[:, 1], W[:, 1].flatten())
    Bb = F.filter_matrix(W, "out", bias=torch.arange(6.0))
    assert Bb.shape == (37, 6) and Bb[-1, 5] == 5
    assert F.filter_matrix(rand(5, 7), "in").shape == (5, 7)
    with pytest.raises(ValueError):
        F.filter_matrix(W, "both")


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_equals_bruteforce_increase(seed):
    B = rand(40, 12, seed=seed)
    S = sorted(torch.randperm(12, generator=torch.Generator().manual_seed(seed))[:8].tolist())
    u = F.removal_costs(B, S, ridge=0.0)
    e0 = F.error(B, S)
    brute = torch.tensor([F.error(B, [s for s in S if s != k]) - e0 for k in S], dtype=u.dtype)
    torch.testing.assert_close(u, brute, rtol=1e-6, atol=0)


def test_closed_form_is_ridge_objective_increase():
    B, r = rand(10, 8, seed=5), 0.3

    def J(S):
        A = B[:, S]
        lam = torch.linalg.solve(A.T @ A + r * torch.eye(len(S), dtype=B.dtype), A.T @ B)
        return ((B - A @ lam).square().sum() + r * lam.square().sum()).item()

    S = list(range(8))
    u = F.removal_costs(B, S, ridge=r)
    brute = torch.tensor([J(S[:k] + S[k + 1:]) - J(S) for k in range(8)], dtype=u.dtype)
    torch.testing.assert_close(u, brute, rtol=1e-6, atol=0)


def test_downdate_equals_fresh_inverse():
    A = rand(30, 10, seed=1)
    M = A.T @ A + 1e-3 * torch.eye(10, dtype=A.dtype)
    G, idx = torch.linalg.inv(M), list(range(10))
    for k in (3, 0, 5, 5, 1):  # positions in the shrinking index list
        G = F.downdate(G, k)
        del idx[k]
        torch.testing.assert_close(G, torch.linalg.inv(M[idx][:, idx]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed,D,n,keep", [(0, 9 * 16, 16, 5), (1, 40, 24, 7), (2, 9 * 32, 32, 10)])
def test_downdate_and_reinversion_agree(seed, D, n, keep):
    B = rand(D, n, seed=seed) * torch.rand(n, generator=torch.Generator().manual_seed(seed))
    S1, lam1 = F.fp_backward(B, keep, downdate=True)
    S2, lam2 = F.fp_backward(B, keep, downdate=False)
    assert S1 == S2 and S1 == sorted(S1) and len(S1) == keep
    torch.testing.assert_close(lam1, lam2)


def test_backward_recovers_planted_dictionary():
    # 6 "true" filters; the other 10 are exact combinations of them → keep=6 is error-free.
    base = rand(50, 6, seed=3)
    B = torch.cat([base, base @ rand(6, 10, seed=4)], 1)
    S, lam = F.fp_backward(B, 6, ridge=0.0)
    assert F.error(B, S) < 1e-18 * B.square().sum().item() + 1e-20
    assert F.error(B, S, lam) < 1e-12 * B.square().sum().item()


@pytest.mark.parametrize("ridge", [0.0, 1e-6])
@pytest.mark.parametrize("D", [60, 8])  # D > n and D < n (singular Gram)
def test_omp_residual_nonincreasing(ridge, D):
    B = rand(D, 20, seed=D)
    S, lam, hist = F.fp_omp(B, 15, ridge=ridge, return_history=True)
    assert len(hist) == 16 and S == sorted(S) and len(set(S)) == 15 and lam.shape == (15, 20)
    h = torch.tensor(hist)
    assert (h[1:] <= h[:-1] + 1e-9 * h[0]).all()
    assert hist[-1] == pytest.approx(F.error(B, S, lam) ** 0.5, rel=1e-9)


@pytest.mark.parametrize("select", [F.fp_omp, F.fp_backward])
def test_keep_all_has_zero_error(select):
    for D in (30, 5):  # D < n: B[:, all] still reproduces itself
        B = rand(D, 12, seed=D)
        S, lam = select(B, 12)
        assert S == list(range(12))
        assert F.error(B, S) < 1e-20 * B.square().sum().item() + 1e-24
        assert F.error(B, S, lam) < 1e-10 * B.square().sum().item()


def test_backward_handles_singular_gram():
    B = rand(6, 20, seed=7)  # D < n: rank 6
    for ridge in (1e-6, 0.0):
        S, lam = F.fp_backward(B, 6, ridge=ridge)
        assert len(S) == 6 and torch.isfinite(lam).all()
        assert F.error(B, S) < 1e-6 * B.square().sum().item()  # 6 independent columns span R^6


def test_compensate_out_exact_on_linear_example():
    n, m, o, keep = 10, 7, 5, 6
    W, Q, x = rand(n, m, seed=1), rand(o, n, seed=2), rand(m, 13, seed=3)
    S, lam = F.fp_backward(F.filter_matrix(W, "out"), keep)
    y = W @ x
    y_hat = y.clone()
    drop = [j for j in range(n) if j not in S]
    y_hat[drop] = lam[:, drop].T @ y[S]  # λ-reconstructed outputs, kept ones exact
    Q2 = F.compensate_out(Q, S, lam)
    assert Q2.shape == (o, keep)
    torch.testing.assert_close(Q2 @ y[S], Q @ y_hat, rtol=1e-12, atol=1e-12)
    # As a 1×1 conv weight (o, n, 1, 1), float32: same result along dim 1.
    Q4 = F.compensate_out(Q.float()[:, :, None, None], S, lam)
    assert Q4.dtype == torch.float32 and Q4.shape == (o, keep, 1, 1)
    torch.testing.assert_close(Q4[:, :, 0, 0].double(), Q2, rtol=1e-6, atol=1e-6)


def test_compensation_reproduces_network_when_rank_deficient():
    # Output side: W has rank 4 < keep → the pruned layer + compensated Q equals Q·W exactly.
    W, Q, x = rand(10, 4, seed=1) @ rand(4, 9, seed=2), rand(5, 10, seed=3), rand(9, 11, seed=4)
    S, lam = F.fp_backward(F.filter_matrix(W, "out"), 6, ridge=0.0)
    torch.testing.assert_close(F.compensate_out(Q, S, lam) @ (W[S] @ x), Q @ W @ x)
    # Input side: W (out=4, in=9) has input-side vectors in R^4 → 4 kept inputs suffice.
    W, P, z = rand(4, 9, seed=5), rand(9, 9, seed=6), rand(9, 11, seed=7)
    S, lam = F.fp_omp(F.filter_matrix(W, "in"), 4, ridge=0.0)
    P2 = F.compensate_in(P, S, lam)
    assert P2.shape == (4, 9)
    torch.testing.assert_close(W[:, S] @ (P2 @ z), W @ P @ z)


@pytest.mark.parametrize("keep", [0, -1, 13, 2.5, True])
def test_bad_keep_raises(keep):
    B = rand(20, 12)
    for select in (F.fp_omp, F.fp_backward):
        with pytest.raises(ValueError):
            select(B, keep)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        F.fp_backward(torch.zeros(5), 1)
    with pytest.raises(ValueError):
        F.compensate_out(rand(3, 10), [0, 1], rand(3, 10))
    with pytest.raises(ValueError):
        F.compensate_out(rand(3, 10), [4, 1], rand(2, 10))  # λ rows must follow sorted S
    with pytest.raises(ValueError):
        F.fp_omp(rand(20, 12), 3, ridge=-1.0)

"""Filter selection for HBGS / HBGTS (Purohit et al., TMLR 2024): the pure linear-algebra core.

A layer's filters are the columns of ``B`` (D×n). For a kept set ``S`` (``A = B[:, S]``), λ (|S|×n)
expresses every filter as a combination of the kept ones, ``B ≈ Aλ``, and the consumer (output
side) or producer (input side) 1×1 wrapper absorbs λ. No training, no network surgery, no data.
Section numbers (§) refer to the method notes, ``docs/hbgs.md``.

Implementation choices:

* **Precision.** Everything runs in float64 on ``B``'s device. λ comes back in float64;
  :func:`compensate_out` / :func:`compensate_in` return the caller's dtype.
* **λ on raw weights, with a ridge.** λ is always fitted on the *raw* filters, as ridge least
  squares λ = (AᵀA + ridge·I)⁻¹AᵀB with ridge = 1e-6 (hbgs.md "Not confirmed", the recommended
  choice). The authors' code instead fits on unit-normalised filters and applies λ to raw
  weights. The ridge is absolute. Raw conv filters have ‖f‖² ≫ 1e-6, so it matters only when
  AᵀA is singular (D < n). Returned λ are solved in D-space (stacked ridge least squares, or
  ``pinv`` for ridge = 0, which also gives :func:`error`'s exact minimum-norm λ), never from the
  normal equations, whose squared condition number costs accuracy exactly when D < n.
  FP-Backward's criterion needs G = (AᵀA + ridge·I)⁻¹. If BᵀB + ridge·I is not numerically
  positive definite (ridge = 0 with D < n), that step alone uses a jitter of 1e-10·mean‖f‖²
  (growing ×100 until Cholesky succeeds) as its ridge.
* **FP-OMP (§3).** Scores Σ_j |⟨R_j, f_i⟩| use unit-normalised filters (zero filters score 0;
  filters already in S are excluded). λ is refitted by ridge least squares on the raw B. The
  residual R = B − Aλ is formed explicitly in D-space, so the history of ‖R‖_F is accurate
  down to zero.
* **FP-Backward (§4, slide Algorithm 3).** Since λ = G AᵀB, Bᵀd_k = BᵀAGe_k is row k of λ. So
  u_k = ‖Bᵀd_k‖²/γ_k = ‖λ_k‖²/γ_k, an OBS-like form. It is the exact increase of the ridge
  objective ‖B−Aλ‖² + ridge‖λ‖², which is E(S\\{k}) − E(S) when ridge = 0. The Gram matrix
  K = BᵀB is formed once, so no step touches D.
  ``downdate=True`` applies the rank-one Schur downdate of hbgs.md §4 to G and the matching one
  to λ: G ← G_{−k,−k} − g gᵀ/γ and λ ← λ_{−k} − g λ_kᵀ/γ, with g = G_{−k,k}. That costs
  O(s·n) per removal. ``downdate=False`` re-inverts G (Cholesky) and refits λ = G·K[S,:],
  O(s³ + s²n), which is the paper code's structure. The final λ is always a fresh solve, so
  rounding drift from the downdates does not reach the caller. Ties go to the lowest index
  (``torch.argmin``).
* **Compensation (§2).** It keeps the retained channels exact: the kept columns (output side) or
  rows (input side) get the λ-weighted dropped ones *added*. They are not replaced by Q·λᵀ,
  which would use λ[:, S] ≈ I instead of I. The channel axis is an argument, so the helpers
  work on 2-D matrices and on 1×1 conv weights alike.
* **Bias.** :func:`filter_matrix` can append an output-side bias as the last entry of each
  filter vector. Then y_j ≈ Σ_l λ_lj y_l holds for the full affine output. In HBGS the wrappers
  sit before BN, and the convs are bias-free.
"""
from __future__ import annotations

import torch

__all__ = ["filter_matrix", "fp_omp", "fp_backward", "error", "removal_costs", "downdate",
           "compensate_out", "compensate_in"]


def filter_matrix(weight: torch.Tensor, side: str = "out", bias: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """B (D×n, float64) of a conv weight (out, in, kh, kw) or linear weight (out, in).

    ``side="out"``: column j is vec(W[j]) (D = in·kh·kw, optionally + 1 for ``bias[j]``).
    ``side="in"``: column c is vec(W[:, c]) (D = out·kh·kw); for grouped convs this is per group.
    """
    if weight.dim() < 2:
        raise ValueError(f"weight must be (out, in, ...), got shape {tuple(weight.shape)}")
    w = weight.detach().to(torch.float64)
    if side == "out":
        B = w.reshape(w.shape[0], -1).T
        if bias is not None:
            B = torch.cat([B, bias.detach().to(B).reshape(1, -1)], 0)
        return B.contiguous()
    if side == "in":
        if bias is not None:
            raise ValueError("a bias belongs to output channels; pass it only with side='out'")
        return w.transpose(0, 1).reshape(w.shape[1], -1).T.contiguous()
    raise ValueError(f"side must be 'out' or 'in', got {side!r}")


# ----------------------------------------------------------------------------- helpers
def _check(B: torch.Tensor, keep: int, ridge: float) -> torch.Tensor:
    if not ridge >= 0:
        raise ValueError(f"ridge must be ≥ 0, got {ridge!r}")
    if B.dim() != 2 or B.shape[1] < 1:
        raise ValueError(f"B must be a D×n matrix with n ≥ 1, got shape {tuple(B.shape)}")
    n = B.shape[1]
    if isinstance(keep, bool) or int(keep) != keep or not 1 <= keep <= n:
        raise ValueError(f"keep must be an integer in [1, n={n}], got {keep!r}")
    return B.detach().to(torch.float64)


def _spd_ridge(K: torch.Tensor, ridge: float) -> float:
    """``ridge``, or a jitter making K + ridge·I numerically positive definite (module doc)."""
    eye = torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
    r, scale = float(ridge), max(K.diagonal().mean().item(), 1e-300) * 1e-10
    for _ in range(8):
        if torch.linalg.cholesky_ex(K + r * eye)[1].item() == 0:
            return r
        r, scale = max(r, scale), scale * 100
    raise ValueError("B^T B is not finite or cannot be regularised (NaN/inf weights?)")


def _inverse(M: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(M)
    return torch.cholesky_inverse(L) if info.item() == 0 else torch.linalg.pinv(M, hermitian=True)


def _ridge_fit(K: torch.Tensor, S, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, λ) for kept set S from the Gram K = BᵀB: G = (K[S,S] + ridge·I)⁻¹, λ = G·K[S,:]."""
    S = torch.as_tensor(S, dtype=torch.long, device=K.device)
    G = _inverse(K[S][:, S] + ridge * torch.eye(len(S), dtype=K.dtype, device=K.device))
    return G, G @ K[S]


def _lstsq(B: torch.Tensor, S, ridge: float) -> torch.Tensor:
    """Ridge least-squares λ of B on A = B[:, S] (minimum-norm ``pinv`` solution for ridge=0),
    solved in D-space as [A; √ridge·I]λ = [B; 0]: no Gram matrix, so no squared condition."""
    A = B[:, list(S)]
    if ridge <= 0:
        return torch.linalg.pinv(A) @ B
    s = A.shape[1]
    A_aug = torch.cat([A, ridge ** 0.5 * torch.eye(s, dtype=A.dtype, device=A.device)])
    return torch.linalg.lstsq(A_aug, torch.cat([B, B.new_zeros(s, B.shape[1])])).solution


def _costs(G: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return lam.square().sum(1) / G.diagonal()


def _downdate(G: torch.Tensor, lam: torch.Tensor | None, k: int):
    """Rank-one removal of index k from G (and the matching rows of λ), see module doc."""
    rest = torch.arange(G.shape[0], device=G.device) != k
    g, gamma = G[rest, k], G[k, k]
    G = G[rest][:, rest] - torch.outer(g, g) / gamma
    return G, None if lam is None else lam[rest] - torch.outer(g, lam[k]) / gamma


def downdate(G: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of M with row/column k deleted, from G = M⁻¹: G_{−k,−k} − g gᵀ/γ (§4)."""
    return _downdate(G, None, k)[0]


# ----------------------------------------------------------------------------- criteria
def error(B: torch.Tensor, S, lam: torch.Tensor | None = None) -> float:
    """E(S) = ‖B − B[:,S]λ‖_F², with the minimum-norm least-squares λ unless ``lam`` is given."""
    B = B.detach().to(torch.float64)
    if len(S) == 0:
        return B.square().sum().item()
    A = B[:, list(S)]
    lam = torch.linalg.pinv(A) @ B if lam is None else lam.to(B)
    return (B - A @ lam).square().sum().item()


def removal_costs(B: torch.Tensor, S, ridge: float = 0.0) -> torch.Tensor:
    """Closed-form u_k = ‖Bᵀd_k‖²/γ_k for each k in S (in S's order), as FP-Backward uses it: the
    increase of the ridge objective when column k is dropped (E(S\\{k}) − E(S) for ridge=0)."""
    B = B.detach().to(torch.float64)
    return _costs(*_ridge_fit(B.T @ B, list(S), ridge))


# ----------------------------------------------------------------------------- selection
def fp_omp(B: torch.Tensor, keep: int, ridge: float = 1e-6, return_history: bool = False):
    """FP-OMP (simultaneous OMP, §3): grow S to ``keep`` filters.

    Returns ``(S, λ)``, S a sorted index list and λ (|S|×n) aligned with it. With
    ``return_history=True``, it returns ``(S, λ, history)``, where history[t] is ‖R‖_F after t
    additions (history[0] = ‖B‖_F).
    """
    B = _check(B, keep, ridge)
    norms = B.norm(dim=0)
    Bhat = B / torch.where(norms > 0, norms, torch.ones_like(norms))
    R, S, history = B, [], [B.norm().item()]
    for _ in range(keep):
        score = (Bhat.T @ R).abs().sum(1)
        score[S] = -1.0
        S.append(int(torch.argmax(score)))
        lam = _lstsq(B, S, ridge)
        R = B - B[:, S] @ lam
        history.append(R.norm().item())
    order = sorted(range(keep), key=S.__getitem__)
    S, lam = [S[i] for i in order], lam[order]
    return (S, lam, history) if return_history else (S, lam)


def fp_backward(B: torch.Tensor, keep: int, ridge: float = 1e-6, downdate: bool = True):
    """FP-Backward (§4): start from all n filters and drop argmin_k u_k until ``keep`` remain.

    Returns ``(S, λ)`` as :func:`fp_omp` does. ``downdate`` picks rank-one updates of G and λ
    (O(s·n) per removal) or fresh re-inversion (O(s³ + s²n)). Both give the same selection up to
    rounding.
    """
    B = _check(B, keep, ridge)
    K = B.T @ B
    r = _spd_ridge(K, ridge)  # the criterion needs a positive definite Gram
    S = list(range(B.shape[1]))
    G, lam = _ridge_fit(K, S, r)
    while len(S) > keep:
        k = int(torch.argmin(_costs(G, lam)))
        del S[k]
        G, lam = _downdate(G, lam, k) if downdate else _ridge_fit(K, S, r)
    return S, _lstsq(B, S, ridge)


# ----------------------------------------------------------------------------- compensation
def _absorb(X: torch.Tensor, S, lam: torch.Tensor, dim: int) -> torch.Tensor:
    n = X.shape[dim]
    if list(S) != sorted(set(S)):
        raise ValueError("S must be sorted and unique (λ's rows follow S's order)")
    if lam.shape != (len(S), n):
        raise ValueError(f"lam must be |S|×n = {len(S)}×{n}, got {tuple(lam.shape)}")
    keep = torch.zeros(n, dtype=torch.bool, device=X.device)
    keep[list(S)] = True
    Xm = X.detach().movedim(dim, -1).to(torch.float64)
    lam = lam.to(Xm)
    out = Xm[..., keep] + Xm[..., ~keep] @ lam[:, ~keep].T  # [..., l] += Σ_{j∉S} λ_lj X[..., j]
    return out.movedim(-1, dim).to(X.dtype)


def compensate_out(Q: torch.Tensor, S, lam: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Output side (§2). Q consumes the pruned layer's n output channels along ``dim`` (the
    columns of a 2-D matrix; dim 1 of a (o, n, 1, 1) Q-wrapper weight). It returns Q′ with only
    the |S| kept channels, Q′[:, l] = Q[:, l] + Σ_{j∉S} λ_lj Q[:, j], so that
    Q′·y_S = Q·ŷ, where ŷ_j = Σ_l λ_lj y_l reconstructs each dropped output."""
    return _absorb(Q, S, lam, dim)


def compensate_in(P: torch.Tensor, S, lam: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Input side (§2). P produces the pruned layer's n input channels along ``dim`` (the rows of
    a 2-D matrix; dim 0 of an (n, m, 1, 1) P-wrapper weight). λ comes from
    ``filter_matrix(W, "in")``. It returns P′ with only the kept rows,
    P′[l, :] = P[l, :] + Σ_{j∉S} λ_lj P[j, :]. Because W[:, j] ≈ Σ_l λ_lj W[:, l], the input
    P′·z for W[:, S] reproduces W·P·z up to that approximation. The caller drops W[:, j∉S]."""
    return _absorb(P, S, lam, dim)

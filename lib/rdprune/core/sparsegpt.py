"""The ``sparsegpt`` criterion (Frantar & Alistarh, ICML 2023): inside a layer, an OBS-style sweep
over the input columns with the layer's input Hessian H = Σ x xᵀ chooses the mask *and* updates
the weights it keeps, so the layer's output on the calibration inputs moves as little as it can.

As the authors' ``fasterprune``: H damped by 1 % of its mean diagonal, the upper Cholesky factor
U of H⁻¹; columns in blocks of 128; in each block the weights with the smallest w² / U_ii² are
pruned, taken over the whole (rows × block) at once from the weights as updated so far; each
pruned column's error (w − q) / U_ii is spread over the later columns through row i of U.
A block prunes its share of the layer's count (proportional to its unmasked weights, masked
weights first), so a layer loses exactly the number asked; the groups of a grouped convolution
(each its own H) share the count by the layer's smallest saliencies w² / U_ii².

A criterion here gives, for each layer, a function ``k → (weight, keep mask)``
(:class:`Reconstruction`) in place of a removal order, so RD's curves are measured with the
updated weights, and :func:`rdprune.masks.apply` installs them. H comes from the inputs each layer
sees in the model as given (one pass over the calibration batch, as RD's curves measure each
layer in the otherwise unpruned model); SparseGPT's own run propagates the inputs through the
layers already pruned, block by block. Linear layers, Hugging Face ``Conv1D``, attention's packed
projection and 2-d convolutions (grouped ones group by group, each patch a column).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import masks as M
from .criteria import layer_inputs, register_criterion

BLOCK = 128
DAMP = 0.01


def hessians(model: nn.Module, calib, names, batch: int = 256) -> dict[str, torch.Tensor]:
    """Σ x xᵀ over every input row x that each named layer's weight multiplies on ``calib``
    (float64; a convolution's rows are its patches, per group: shape (groups, c, c))."""
    layers = M.prunable(model)

    def gram(name, x, conv):
        module = layers[name]
        if not conv:
            x = x.reshape(-1, x.shape[-1])
            return (x.t() @ x)[None]
        if not isinstance(module, nn.Conv2d):
            raise ValueError(f"sparsegpt handles 2-d convolutions and matrices; {name!r} is a "
                             f"{type(module).__name__}")
        g = module.groups
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding,
                        module.stride)  # (N, C·kh·kw, L), channels grouped in order
        cols = cols.view(x.shape[0], g, -1, cols.shape[-1]).permute(1, 0, 3, 2)
        cols = cols.reshape(g, -1, cols.shape[-1])
        return cols.transpose(1, 2) @ cols
    return layer_inputs(model, calib, list(names), gram, batch=batch, who="sparsegpt")


def _rows(module: nn.Module, weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The weight as (groups, rows, columns) matrices acting on the Hessian's columns."""
    if M.is_hf_conv1d(module):  # (in, out)
        return weight.t()[None]
    w = weight.reshape(weight.shape[0], -1)
    return w.view(groups, w.shape[0] // groups, w.shape[1])


def _unrows(module: nn.Module, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if M.is_hf_conv1d(module):
        return rows[0].t()
    return rows.reshape(like.shape)


def inverse_factor(h: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp · mean(diag H) · I)⁻¹ (columns never read: H_ii = 1)."""
    h = h.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    idx = torch.arange(len(h))
    h[idx, idx] += damp * torch.diagonal(h).mean()
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def sweep(w: torch.Tensor, u: torch.Tensor, k: int, keep: torch.Tensor, block: int = BLOCK):
    """SparseGPT's column sweep on one (rows × columns) matrix ``w`` with inverse factor ``u``:
    ``k`` weights pruned (``~keep`` first), the rest updated. Returns (weight, keep mask)."""
    w = w.clone()
    rows, cols = w.shape
    masked = ~keep
    free = k - int(masked.sum())
    unmasked_cols = keep.sum(0).cumsum(0)  # unmasked weights in columns [0, j]
    total_free = int(unmasked_cols[-1]) if cols else 0
    new_keep = torch.ones_like(keep)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        # this block's share of the free prunes: proportional to its unmasked weights
        before = int(unmasked_cols[i1 - 1]) if i1 else 0
        share = (round(free * int(unmasked_cols[i2 - 1]) / total_free) -
                 round(free * before / total_free)) if total_free and free > 0 else 0
        w1 = w[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        score = w1.pow(2) / torch.diagonal(u1).pow(2)[None, :]
        score[masked[:, i1:i2]] = -1.0
        n_cut = int(masked[:, i1:i2].sum()) + share
        cut = torch.zeros(w1.numel(), dtype=torch.bool)
        if n_cut > 0:
            cut[torch.argsort(score.flatten(), stable=True)[:n_cut]] = True
        cut = cut.view_as(w1)
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col = w1[:, i]
            q = torch.where(cut[:, i], torch.zeros_like(col), col)
            q1[:, i] = q
            e = (col - q) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
        new_keep[:, i1:i2] = ~cut
    return w, new_keep


class Reconstruction:
    """One layer under SparseGPT: ``self(k)`` gives (the weight with ``k`` weights pruned and the
    others updated, the keep mask), both in the layer's shape. The inverse factors are computed
    once, and the last 64 answers are kept. Callers must not modify the tensors returned."""

    def __init__(self, module: nn.Module, h: torch.Tensor, block: int = BLOCK, damp: float = DAMP):
        self.module, self.block = module, block
        self.weight = module.weight.detach().clone()
        self.keep = M.mask_of(module).clone()
        self.groups = h.shape[0]
        self.factors = [inverse_factor(hg, damp) for hg in h]
        self._done: dict[int, tuple] = {}  # k -> result (a search asks for the same k again)

    def __call__(self, k: int):
        k = int(k)
        if k not in self._done:
            if len(self._done) >= 64:
                self._done.pop(next(iter(self._done)))
            self._done[k] = self._reconstruct(k)
        return self._done[k]

    def _reconstruct(self, k: int):
        w = _rows(self.module, self.weight.double().cpu(), self.groups)
        keep = _rows(self.module, self.keep.cpu(), self.groups)
        per = w.shape[1] * w.shape[2]
        already = int((~keep).sum())
        k = max(int(k), already)
        # a grouped convolution: each group prunes as many of the k as it holds among the k
        # smallest saliencies w² / U_ii² of the whole layer (its own factor's diagonal)
        counts = [k]
        if self.groups > 1:
            sal = torch.stack([w[g].pow(2) / torch.diagonal(self.factors[g]).pow(2)[None, :]
                               for g in range(self.groups)])
            sal[~keep] = -1.0
            cut = torch.zeros(sal.numel(), dtype=torch.long)
            cut[torch.argsort(sal.flatten(), stable=True)[:k]] = 1
            counts = cut.view(self.groups, -1).sum(1).tolist()
        outs = [sweep(w[g], self.factors[g].to(w.dtype), min(counts[g], per), keep[g], self.block)
                for g in range(self.groups)]
        weight = torch.stack([o[0] for o in outs])
        mask = torch.stack([o[1] for o in outs])
        weight = _unrows(self.module, weight, self.weight).to(self.weight)
        return weight, _unrows(self.module, mask, self.keep).to(self.keep.device)


def _sparsegpt(model, calib, names):
    layers = M.prunable(model)
    return {k: Reconstruction(layers[k], h) for k, h in hessians(model, calib, names).items()}


register_criterion("sparsegpt", _sparsegpt, needs_calib=True)

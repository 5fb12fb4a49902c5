"""Which weights go inside a layer (the *criterion*), apart from how many (the allocator).

- ``magnitude``: the smallest |W| first (the RD paper's, every allocator's default).
- ``wanda``: the smallest |W_ij|·‖X_j‖₂ first, ‖X_j‖₂ the norm of input feature j over the
  calibration inputs of that layer, compared within each output row, as Sun et al. (2023, "A
  Simple and Effective Pruning Approach for LLMs") do. For a convolution, X_j is input channel j
  over every sample and position (Wanda is defined for Linear layers; a conv's patches share
  their channel's norm here); attention's packed ``in_proj_weight`` reads the query input.

:func:`orders` gives each layer's removal order under a criterion; :func:`rdprune.masks.apply`,
:func:`rdprune.rd.curves` and ``rp.prune`` take ``criterion=`` and use it, so curves are measured
with the criterion that is applied (and cached under it).

The ``owl`` allocator built on these scores lives in :mod:`rdprune.core.owl`.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from ..util import check_choice
from . import batch as B
from . import masks as M

CRITERIA = ("magnitude", "wanda")


@torch.no_grad()
def input_norms(model: nn.Module, calib, names: Iterable[str] | None = None,
                batch: int = 256) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ per input feature (channel) of each named prunable layer over ``calib``."""
    calib = B.gather(calib)
    B.check(calib)
    layers = M.prunable(model)
    names = list(names) if names is not None else list(layers)
    sums: dict[str, torch.Tensor] = {}

    def hook(name, layer):
        def run(mod, args, kwargs):
            x = args[0] if args else kwargs.get("query")
            x = x.detach().double()
            if isinstance(layer, M.Weight) or not isinstance(layer, M.CONV_TYPES):
                feats = x.reshape(-1, x.shape[-1])  # Linear, Conv1D, attention: last axis
                s = feats.pow(2).sum(0)
            else:
                s = x.pow(2).transpose(0, 1).reshape(x.shape[1], -1).sum(1)
            sums[name] = sums.get(name, 0) + s
        return run
    hooks = [M.holder(layers[k]).register_forward_pre_hook(hook(k, layers[k]), with_kwargs=True)
             for k in names]
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        for chunk in B.split(B.to(calib, dev), batch):
            B.call(model, chunk)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    missing = [k for k in names if k not in sums]
    if missing:
        raise ValueError(f"layers {missing[:5]} never see an input on the calibration batch; "
                         "Wanda needs each layer's inputs")
    return {k: sums[k].sqrt().float() for k in names}


def scores(layer, norm: torch.Tensor | None = None) -> torch.Tensor:
    """Wanda's |W|·‖X‖ per weight (shape of the weight); plain |W| without ``norm``."""
    w = layer.weight.detach().abs().float()
    if norm is None:
        return w
    norm = norm.to(w.device)
    if M.is_hf_conv1d(layer):  # weight (in, out)
        return w * norm[:, None]
    if isinstance(layer, M.CONV_TYPES):
        groups, cin = layer.groups, w.shape[1]
        per_out = torch.arange(w.shape[0], device=w.device) // (w.shape[0] // groups)
        idx = per_out[:, None] * cin + torch.arange(cin, device=w.device)[None, :]
        return w * norm[idx].view(w.shape[0], cin, *([1] * (w.dim() - 2)))
    return w * norm[None, :]  # Linear, attention in_proj: (out, in)


def wanda_order(layer, norm: torch.Tensor) -> torch.Tensor:
    """Flat weight indices in removal order: masked weights first, then ascending Wanda score
    within each output row, the rows taken in turn (so the first k remove k / rows per row)."""
    s = scores(layer, norm)
    s = torch.where(M.mask_of(layer), s, torch.full_like(s, -1.0))
    flat_index = torch.arange(s.numel(), device=s.device).view_as(s)
    if M.is_hf_conv1d(layer):  # outputs are the columns
        s, flat_index = s.t(), flat_index.t()
    rows = s.reshape(s.shape[0], -1)
    index = flat_index.reshape(s.shape[0], -1)
    within = torch.argsort(rows, dim=1, stable=True)  # per row, ascending
    ranked = torch.gather(index, 1, within)  # (rows, per row) flat indices, row by row
    return ranked.t().reshape(-1)  # rank 0 of every row, then rank 1, ...


def orders(model: nn.Module, criterion: str, calib=None,
           names: Iterable[str] | None = None) -> dict[str, torch.Tensor] | None:
    """Each named layer's removal order under ``criterion`` (None for magnitude: the default
    order of :func:`rdprune.masks.prune_order`)."""
    check_choice("criterion", criterion, CRITERIA)
    if criterion == "magnitude":
        return None
    if calib is None:
        raise ValueError("criterion='wanda' weighs weights by their inputs: pass calib= (a "
                         "calibration batch)")
    layers = M.prunable(model)
    norms = input_norms(model, calib, names)
    return {k: wanda_order(layers[k], n) for k, n in norms.items()}


def apply(model: nn.Module, amounts: Mapping[str, float], criterion: str = "magnitude",
          calib=None) -> nn.Module:
    """:func:`rdprune.masks.apply` with the removal order of ``criterion``. In place."""
    return M.apply(model, amounts, orders=orders(model, criterion, calib, list(amounts)))

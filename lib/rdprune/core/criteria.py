"""Which weights go inside a layer (the *criterion*), apart from how many (the allocator).

A criterion is a plug-in (:func:`register_criterion`), like allocators and distortions: a function
that gives each layer's *removal order*. Everything that prunes reads it from the registry:
``rp.prune``, :func:`rdprune.rd.curves` (curves are measured, cached and labelled under the
criterion they will be applied with), ``pipeline.zero_shot``/``run`` and the CLI.

- ``magnitude``: the smallest |W| first (the RD paper's, every allocator's default).
- ``sparsegpt``: SparseGPT's column sweep with the layer's input Hessian chooses the mask and
  updates the kept weights (:mod:`rdprune.core.sparsegpt`).
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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..util import check_choice
from . import batch as B
from . import masks as M

DEFAULT = "magnitude"


@dataclass(frozen=True)
class Criterion:
    """``orders(model, calib, names) -> {name: flat weight indices in removal order}``, every
    already-masked weight first (:func:`wanda_order` shows how); None for the default order of
    :func:`rdprune.masks.prune_order` (smallest magnitude first). A criterion that also changes
    the weights it keeps gives, in place of an order, a function ``k -> (weight, keep mask)``
    in the layer's shape, never keeping a masked weight (:mod:`rdprune.core.sparsegpt`); curves
    and masks use either. ``needs_calib``: it reads activations, so ``calib`` must be given."""
    orders: Callable | None
    needs_calib: bool = False


_REGISTRY: dict[str, Criterion] = {}


def register_criterion(name: str, orders: Callable | None, *, needs_calib: bool = False) -> None:
    """Make ``name`` a criterion of every pruning path (:class:`Criterion` says what ``orders``
    returns)."""
    if not isinstance(name, str) or not name or (orders is not None and not callable(orders)):
        raise ValueError("register_criterion needs a name and orders(model, calib, names) (or None)")
    _REGISTRY[name] = Criterion(orders, bool(needs_calib))


def unregister_criterion(name: str) -> None:
    """Remove a criterion a user registered (the built-in ones stay)."""
    if name in ("magnitude", "wanda", "sparsegpt"):
        raise ValueError(f"{name!r} is built in")
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    """The registered criteria."""
    return list(_REGISTRY)


def get(name: str) -> Criterion:
    """The registered criterion ``name``; a ValueError listing the choices otherwise."""
    check_choice("criterion", name, _REGISTRY)
    return _REGISTRY[name]


@torch.no_grad()
def layer_inputs(model: nn.Module, calib, names: Iterable[str], reduce: Callable, *,
                 batch: int = 256, who: str = "Wanda") -> dict[str, torch.Tensor]:
    """Σ over the calibration chunks of ``reduce(name, x, is_conv)`` for each named prunable
    weight, ``x`` the input it multiplies (a convolution's input tensor; a matmul's (…, in)
    input, the weight's transposed use resolved), found by storage in the ops that read it
    (:func:`rdprune.masks.weight_reads`), so functional uses count: attention's ``out_proj``
    and packed ``in_proj_weight``. ``who`` names the caller in the error for a layer never read."""
    calib = B.gather(calib)
    B.check(calib)
    B.check_tokens(model, calib)
    layers = M.prunable(model)
    wanted = set(names)
    ptr = {k: layers[k].weight.untyped_storage().data_ptr() for k in wanted}
    sums: dict[str, torch.Tensor] = {}

    def read(name, op, args, flops):
        if name not in wanted:
            return
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if "convolution" in str(op):
            got = reduce(name, tensors[0].double(), True)
        else:  # mm / addmm: input @ weightᵀ (or weight @ input); the bias is not a matrix
            is_w = [t.untyped_storage().data_ptr() == ptr[name] for t in tensors]
            mats = [(t, w) for t, w in zip(tensors, is_w) if t.dim() >= 2]
            if len(mats) != 2:
                return
            (a, a_is_w), (b, _) = mats[-2], mats[-1]
            got = reduce(name, b.double().t() if a_is_w else a.double(), False)
        sums[name] = sums[name] + got if name in sums else got

    was = model.training
    dev = next(model.parameters()).device
    try:
        for chunk in B.split(B.to(calib, dev), batch):
            M.weight_reads(model, chunk, read)
    finally:
        model.train(was)
    missing = [k for k in names if k not in sums]
    if missing:
        raise ValueError(f"layers {missing[:5]} are never read by a matmul or convolution on the "
                         f"calibration batch; {who} needs each weight's inputs")
    return sums


def input_norms(model: nn.Module, calib, names: Iterable[str] | None = None,
                batch: int = 256) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ per input feature (channel) of each named prunable weight over ``calib``
    (:func:`layer_inputs`; the packed ``in_proj_weight``'s q, k and v inputs add up when they
    differ, as in cross-attention)."""
    layers = M.prunable(model)
    names = list(names) if names is not None else list(layers)

    def squares(name, x, conv):
        if conv:
            return x.pow(2).transpose(0, 1).reshape(x.shape[1], -1).sum(1)
        return x.reshape(-1, x.shape[-1]).pow(2).sum(0)
    sums = layer_inputs(model, calib, names, squares, batch=batch)
    out = {}
    for k in names:
        n = sums[k].sqrt().float()
        want = layers[k].weight.shape[0] if M.is_hf_conv1d(layers[k]) else \
            layers[k].weight.shape[1] * (layers[k].groups if isinstance(layers[k], M.CONV_TYPES)
                                         else 1)
        if n.numel() != want:
            raise ValueError(f"cannot match the inputs of {k!r} to its weight ({n.numel()} input "
                             f"features seen, {want} expected); use criterion='magnitude'")
        out[k] = n
    return out


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
    """Flat weight indices in removal order: every masked weight first, then the others by their
    rank within their output row (ascending Wanda score, masked weights counted), the rows taken
    in turn, so pruning to k removes about k / rows of every row in total."""
    s = scores(layer, norm)
    s = torch.where(M.mask_of(layer), s, torch.full_like(s, -1.0))
    flat_index = torch.arange(s.numel(), device=s.device).view_as(s)
    if M.is_hf_conv1d(layer):  # outputs are the columns
        s, flat_index = s.t(), flat_index.t()
    rows = s.reshape(s.shape[0], -1)
    index = flat_index.reshape(s.shape[0], -1)
    within = torch.argsort(rows, dim=1, stable=True)  # per row, ascending (masked at -1)
    ranked = torch.gather(index, 1, within).t().reshape(-1)  # rank 0 of every row, then 1, ...
    masked = ~M.mask_of(layer).flatten()[ranked]
    return torch.cat([ranked[masked], ranked[~masked]])  # never un-prunes a weight


def orders(model: nn.Module, criterion: str, calib=None,
           names: Iterable[str] | None = None) -> dict[str, torch.Tensor] | None:
    """Each named layer's removal order under ``criterion`` (None for the default order of
    :func:`rdprune.masks.prune_order`)."""
    c = get(criterion)
    if c.orders is None:
        return None
    if c.needs_calib and calib is None:
        raise ValueError(f"criterion={criterion!r} weighs weights by their inputs: pass calib= "
                         "(a calibration batch)")
    names = list(names) if names is not None else list(M.prunable(model))
    return c.orders(model, calib, names)


def _wanda(model, calib, names):
    layers = M.prunable(model)
    return {k: wanda_order(layers[k], n) for k, n in input_norms(model, calib, names).items()}


def apply(model: nn.Module, amounts: Mapping[str, float], criterion: str = "magnitude",
          calib=None) -> nn.Module:
    """:func:`rdprune.masks.apply` with the removal order of ``criterion``. In place."""
    return M.apply(model, amounts, orders=orders(model, criterion, calib, list(amounts)))


register_criterion("magnitude", None)
register_criterion("wanda", _wanda, needs_calib=True)

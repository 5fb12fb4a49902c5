"""Prunable layers, unstructured magnitude masks, and sparsity / FLOPs accounting.

Prunable weights (found by :mod:`rdprune.core.weights`): every Conv1d/2d/3d and Linear
``weight``, Hugging Face's transposed ``Conv1D`` (GPT-2's blocks) and ``nn.MultiheadAttention``'s
packed ``in_proj_weight`` (whole: it is one
parameter multiplied in one matmul, so one mask and one RD curve; its ``out_proj`` is a Linear).
A weight that is not a module's ``weight`` is held by a :class:`Weight`, which every allocator
reads like a layer (``.weight``); its dotted name is the parameter's (``…self_attn.in_proj_weight``).
Embeddings and normalisation weights are never pruned.

Masks are plain boolean buffers (``weight_mask``, ``in_proj_weight_mask``) beside each pruned
weight, and the masked weights are zeroed in place. We chose this over ``torch.nn.utils.prune`` because the model's
``state_dict`` stays an ordinary dense one (a checkpoint loads into a fresh model), the forward
pass costs nothing extra, and the RD curve code can edit ``weight`` directly. Training keeps
masks by calling :func:`enforce` after every optimizer step (``rdprune.train`` does this).

Within a layer, pruning to absolute amount ``a`` zeroes the ``floor(a·n)`` smallest |w|, weights
already masked counting first, so on a masked model it prunes within the remaining weights and
never revives a weight.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping

import pandas as pd
import torch
from torch import nn

from . import batch as B
from .weights import (  # noqa: F401
    CONV_TYPES,
    PRUNABLE_TYPES,
    Weight,
    copy_state,
    holder,
    is_hf_conv1d,
    kind,
    prunable,
    slot,
    state_of,
    twin_example,
)

_EPS = 1e-9  # floor(a*n) guard against 0.29*100 == 28.999999999999996


def n_pruned(amount: float, n: int) -> int:
    """Number of weights zeroed at absolute amount ``amount`` of an ``n``-weight layer."""
    return min(n, math.floor(amount * n + _EPS))


def mask_of(module: nn.Module) -> torch.Tensor:
    """The layer's boolean keep-mask (all True when it was never pruned)."""
    owner, attr = slot(module)
    mask = getattr(owner, f"{attr}_mask", None)
    return mask if mask is not None else torch.ones_like(module.weight, dtype=torch.bool)


def prune_order(module: nn.Module) -> torch.Tensor:
    """Flat weight indices in the order magnitude pruning removes them: masked weights first,
    then ascending |w| (stable, so ties break by index and results are deterministic)."""
    w = module.weight.detach().abs().flatten().float()
    score = torch.where(mask_of(module).flatten(), w, torch.full_like(w, -1.0))
    return torch.argsort(score, stable=True)


def smallest(module: nn.Module, k: int) -> torch.Tensor:
    """The flat indices of ``prune_order(module)[:k]`` (as a set, in index order) without the
    full sort: the k-th smallest score by selection (``kthvalue``), everything below it, and the
    ties at it by index, as the stable sort takes them. A 28 M-weight layer: a fraction of a
    second instead of seconds."""
    w = module.weight.detach().abs().flatten().float()
    score = torch.where(mask_of(module).flatten(), w, torch.full_like(w, -1.0))
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=w.device)
    if k >= score.numel():
        return torch.arange(score.numel(), device=w.device)
    v = torch.kthvalue(score.cpu(), k).values.to(score.device)
    below = (score < v).nonzero().flatten()
    ties = (score == v).nonzero().flatten()[:k - len(below)]
    return torch.cat([below, ties])


def _set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    owner, attr = slot(module)
    if hasattr(owner, f"{attr}_mask"):
        getattr(owner, f"{attr}_mask").copy_(mask)
    else:
        owner.register_buffer(f"{attr}_mask", mask)
    with torch.no_grad():
        module.weight.masked_fill_(~mask, 0.0)


def _check_amounts(model, amounts):
    layers = prunable(model)
    for name, a in amounts.items():
        if name not in layers:
            raise ValueError(f"{name!r} is not a prunable layer of this model; "
                             f"prunable layers: {', '.join(layers)}")
        if not 0.0 <= float(a) <= 1.0:
            raise ValueError(f"amount for {name!r} is {a}; amounts are fractions in [0, 1]")
        if not torch.isfinite(layers[name].weight).all():
            raise ValueError(f"layer {name!r} has NaN or infinite weights; cannot rank by magnitude")
    return layers


def apply(model: nn.Module, amounts: Mapping[str, float],
          orders: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Prune each named layer to its absolute sparsity ``amounts[name]`` by magnitude, or in the
    removal order ``orders[name]`` when given (another criterion, :mod:`rdprune.core.criteria`;
    masked weights first in it; or a function ``k → (weight, keep mask)`` of a criterion that
    also updates the weights it keeps, as SparseGPT), never un-pruning: an amount below the current sparsity leaves
    the layer as it is. In place."""
    layers = _check_amounts(model, amounts)
    for name, a in amounts.items():
        module = layers[name]
        mask = mask_of(module)
        k = max(n_pruned(float(a), mask.numel()), int((~mask).sum()))
        new = torch.ones(mask.numel(), dtype=torch.bool, device=mask.device)
        if orders is not None and callable(orders.get(name)):  # a criterion that updates weights
            weight, keep = orders[name](k)
            with torch.no_grad():
                module.weight.copy_(weight)
            _set_mask(module, keep.reshape(mask.shape).clone())
            continue
        if orders is not None and name in orders:
            new[orders[name][:k]] = False
        else:
            new[smallest(module, k)] = False
        _set_mask(module, new.view_as(mask))
    return model


def enforce(model: nn.Module) -> None:
    """Re-zero every masked weight (call after each optimizer step)."""
    with torch.no_grad():
        for m in model.modules():
            for key, mask in m.named_buffers(recurse=False):
                param = getattr(m, key[:-5], None) if key.endswith("_mask") else None
                if isinstance(param, nn.Parameter) and param.shape == mask.shape:
                    param.masked_fill_(~mask, 0.0)


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Current keep-masks of all prunable layers (copies)."""
    return {n: mask_of(m).clone() for n, m in prunable(model).items()}


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    return {n: int((~mask_of(m)).sum()) / m.weight.numel() for n, m in prunable(model).items()}


def sparsity(model: nn.Module) -> float:
    """Fraction of masked weights over all prunable weights."""
    layers = prunable(model).values()
    total = sum(m.weight.numel() for m in layers)
    return sum(int((~mask_of(m)).sum()) for m in layers) / total


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a state dict that may carry ``weight_mask`` buffers (a pruned checkpoint)."""
    for name, module in prunable(model).items():
        owner, attr = slot(module)
        key = f"{name}_mask" if attr != "weight" else f"{name}.weight_mask" if name else "weight_mask"
        if key in state and not hasattr(owner, f"{attr}_mask"):
            owner.register_buffer(f"{attr}_mask", torch.ones_like(module.weight, dtype=torch.bool))
    model.load_state_dict(state)
    enforce(model)
    return model


# ----------------------------------------------------------------------------- FLOPs
def clone(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` that keeps what the library remembers about ``model`` (its
    example input and FLOP counts, :func:`remember`), which is kept outside the model
    (:func:`rdprune.core.weights.state_of`) and so is not copied with it."""
    new = copy.deepcopy(model)
    copy_state(model, new)
    return new


def remember(model: nn.Module, calib) -> None:
    """Keep one sample of ``calib`` (any batch of :mod:`rdprune.core.batch`) as ``model``'s
    example input, so that FLOPs can be counted on any model (torchvision, Hugging Face, a
    user's). Kept outside the model; :func:`clone` copies it. Curves, ``allocate(..., calib=)``
    and ``rp.prune(..., calib=)`` call it."""
    calib = B.gather(calib)
    try:
        B.check(calib)
    except ValueError:
        return  # not a batch: the caller's own check says so
    state_of(model).example = B.to(B.take(calib, 0, 1), "cpu")


def example_input(model: nn.Module):
    """One input sample for counting: the calibration sample :func:`remember` kept (for this model
    or an identical twin, :func:`rdprune.core.weights.twin_example`), else zeros
    of ``model.input_size``; a ValueError that says what to pass when there is neither. The
    sample wins because it is what the model is run on (token ids where ``input_size`` would
    give float zeros)."""
    p = next(model.parameters())
    x = state_of(model).example
    if x is None:
        x = twin_example(model)  # a user's deepcopy of a model given calib= before
    if x is not None:
        return B.to(x, p.device)
    size = tuple(getattr(model, "input_size", ()) or ())
    if not size:
        raise ValueError("cannot count FLOPs: the model has no input_size and no calibration batch "
                         "was given yet; pass calib= (rd.curves, allocate, rp.prune) or set "
                         "model.input_size = (C, H, W)")
    return torch.zeros(1, *size, device=p.device, dtype=p.dtype)


def example(model: nn.Module, batch=None):
    """One input sample: the first of ``batch`` (remembered for the model), else
    :func:`example_input`."""
    if batch is not None:
        remember(model, batch)
        return B.take(batch, 0, 1)
    return example_input(model)


def architecture_flops(model: nn.Module, example_batch=None) -> int:
    """Multiply-adds of one input through the model as built, masks ignored (FlopCounterMode / 2)."""
    return module_flops(model, example(model, example_batch))[""] // 2


def count(model: nn.Module, example_batch=None, total: int | None = None) -> dict[str, int]:
    """{"params": all parameters, "flops": multiply-adds of one input}, masked weights counted as
    removed: the parameters less the masked weights, the FLOPs (:func:`architecture_flops`)
    scaled by the prunable layers' kept share of their FLOPs. ``total``: the architecture's FLOPs
    when already known (a masked copy has its model's), which saves the counting pass."""
    total = architecture_flops(model, example_batch) if total is None else int(total)
    params = sum(p.numel() for p in model.parameters())
    masked = sum(int((~mask_of(m)).sum()) for m in prunable(model).values())
    if not masked:
        return {"params": params, "flops": total}
    return {"params": params - masked,
            "flops": int(round(total * flops(model) / sum(layer_flops(model).values())))}


def _dense_flops(model: nn.Module) -> tuple[dict[str, int], tuple[str, ...]]:
    """({layer: dense multiply-adds}, the layers in the order their weights are first read) for
    :func:`example_input`, from one :func:`weight_reads` pass. Cached in the model's state, keyed
    by the input's signature and every prunable weight's shape: masks do not change dense FLOPs,
    structural pruning changes the shapes."""
    x = example_input(model)
    layers = prunable(model)
    key = (B.signature(x), tuple((k, tuple(m.weight.shape)) for k, m in layers.items()))
    state = state_of(model)
    if state.flops is None or state.flops[0] != key:
        counts, total, order = weight_reads(model, x)
        out = {name: counts.get(name, 0) // 2 for name in layers}
        covered = sum(out.values()) / max(1, total // 2)
        if total and covered < 0.9:
            warnings.warn(f"the prunable layers hold {covered:.0%} of the model's counted FLOPs "
                          "(the rest: activation-activation products such as attention scores, "
                          "or weights that are not Conv/Linear layers); FLOPs targets are "
                          "fractions of the prunable layers' FLOPs")
        state.flops = (key, out, tuple(n for n in order if n in layers))
    return dict(state.flops[1]), state.flops[2]


def layer_flops(model: nn.Module) -> dict[str, int]:
    """Dense multiply-adds of each prunable layer for one input (:func:`example_input`: a
    remembered calibration sample, else zeros of ``model.input_size``), counted with
    ``torch.utils.flop_counter.FlopCounterMode`` (its FLOPs are 2 per multiply-add); cached
    outside the model."""
    return _dense_flops(model)[0]


def weight_reads(model: nn.Module, x, on_read=None):
    """Run ``model`` once on batch ``x`` and see every matmul and convolution that reads a
    prunable weight: ``on_read(layer, op, args, flops)`` for each (``args`` the op's tensors,
    the weight among them by storage: the transposed view ``F.linear`` multiplies by, a chunk of
    attention's packed ``in_proj_weight``, a channels-last copy's weight). Returns ({layer: FLOPs
    (2 per multiply-add) of the ops its weight feeds}, all counted FLOPs, the layers in the order
    their weights are first read, then those only called as modules).

    Built on ``torch.utils.flop_counter`` (its formulas, applied per operation), so a weight used
    through a functional call (attention's ``out_proj``, Swin's ``qkv``) is seen where module
    hooks see nothing; the fused MHA kernel is switched off for the pass (it has no formula)."""
    from torch.utils.flop_counter import flop_registry
    layers = prunable(model)
    owner = {m.weight.untyped_storage().data_ptr(): name for name, m in layers.items()}
    credit: dict[str, int] = {}

    def attributing(op, formula):
        def count(*args, out_val=None, **kwargs):
            n = formula(*args, out_val=out_val, **kwargs)
            for a in args:
                if isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() in owner:
                    name = owner[a.untyped_storage().data_ptr()]
                    credit[name] = credit.get(name, 0) + n
                    if on_read is not None:
                        on_read(name, op, args, n)
                    break
            return n
        count._get_raw = True  # FlopCounterMode's flag: hand the formula tensors, not shapes
        return count

    mapping = {op: attributing(op, f) for op, f in flop_registry.items()
               if "backward" not in str(op) and "attention" not in str(op)}
    counter, called = _counted(model, x, mapping, [(n, holder(m)) for n, m in layers.items()])
    order = list(credit) + [n for n in called if n not in credit]
    return credit, counter.get_total_flops(), order


def forward_order(model: nn.Module) -> list[str]:
    """Prunable layer names in the order the forward pass first reads their weights (one
    :func:`weight_reads` pass on :func:`example_input`, cached with the FLOP counts; a functional
    call such as attention's ``out_proj`` counts where it happens), registration order for
    layers never used or when no example is known."""
    layers = list(prunable(model))
    try:
        seen = _dense_flops(model)[1]
    except Exception:  # no example, or a forward that fails on it: registration order
        return layers
    return [n for n in seen if n in layers] + [n for n in layers if n not in seen]


def module_flops(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs (2 per multiply-add) per module name for input ``x``, plus ``""`` for the total."""
    counter, _ = _counted(model, x)
    out = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            out[""] = sum(ops.values())
        else:  # keys look like "ClassName.layer1.0.conv1"
            out[key.partition(".")[2]] = sum(ops.values())
    return out


def _sdpa_cpu(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """FLOPs of the CPU kernel of ``scaled_dot_product_attention`` (torch has no formula for
    it, so attention's score and value matmuls would count 0): the same as the GPU kernels'."""
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _counted(model, x, mapping=None, hooked=()):
    """One forward pass of ``x`` under ``FlopCounterMode`` (eval mode, no grad, the fused MHA
    kernel off, since it has no FLOP formula); returns (the counter, ``hooked`` modules' names in
    the order first called)."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    called: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _, n=n: called.append(n)) for n, m in hooked]
    x = B.to(x, p.device, p.dtype)  # token ids stay integer
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        extra = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu}
        with torch.no_grad(), FlopCounterMode(display=False,
                                              custom_mapping={**extra, **(mapping or {})}) as counter:
            B.call(model, x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
        for h in hooks:
            h.remove()
    return counter, list(dict.fromkeys(called))


def flops(model: nn.Module) -> float:
    """Multiply-adds of the prunable layers with unstructured masks counted as density × dense
    (the RD authors' accounting)."""
    dense = layer_flops(model)
    return sum(dense[n] * int(mask_of(m).sum()) / m.weight.numel()
               for n, m in prunable(model).items())


def report(model: nn.Module) -> pd.DataFrame:
    """One row per prunable layer: layer, type, shape, n_weights, n_kept, sparsity,
    flops_dense, flops (density-scaled multiply-adds)."""
    dense = layer_flops(model)
    rows = []
    for name, m in prunable(model).items():
        mask = mask_of(m)
        kept = int(mask.sum())
        rows.append(dict(layer=name, type=kind(m), shape=tuple(m.weight.shape),
                         n_weights=mask.numel(), n_kept=kept, sparsity=1 - kept / mask.numel(),
                         flops_dense=dense[name], flops=dense[name] * kept / mask.numel()))
    return pd.DataFrame(rows)

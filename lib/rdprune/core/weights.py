"""What can be pruned in a model: every Conv1d/2d/3d and Linear ``weight``, Hugging Face's
transposed ``Conv1D`` and ``nn.MultiheadAttention``'s packed ``in_proj_weight`` (and its
separate ``q/k/v_proj_weight`` when key and value widths differ), by dotted name, tied weights
once (:func:`prunable`). A weight that is not a module's ``weight`` is held by a :class:`Weight`,
which every allocator reads like a layer. Masks and FLOPs live in :mod:`rdprune.core.masks`.

What the library remembers about a model (its example input, FLOP counts, forward order, the
tied-weight warning it gave) is kept outside it, in a cache keyed weakly by the model
(:func:`state_of`): no call adds attributes to the model it is given.
"""
from __future__ import annotations

import fnmatch
import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, replace

from torch import nn

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


@dataclass
class State:
    """What the library remembers about one model (:func:`state_of`)."""
    example: object = None  # one calibration sample (masks.remember)
    flops: tuple | None = None  # (key, {layer: dense multiply-adds}, layers in forward order)
    tied_warned: list | None = None  # the tied weights last warned about (prunable)


_STATES: weakref.WeakKeyDictionary[nn.Module, State] = weakref.WeakKeyDictionary()


def state_of(model: nn.Module) -> State:
    """The library's record of ``model``, kept off the model and gone with it; a copy starts
    without one (:func:`rdprune.core.masks.clone` copies with it)."""
    return _STATES.setdefault(model, State())


def twin_example(model: nn.Module):
    """The example input remembered for a model of the same class with the same parameter names
    and shapes (a user's ``copy.deepcopy`` of a model given ``calib=`` before), else None: such
    a twin takes the same inputs."""
    def signature(m):
        return type(m), tuple((n, tuple(p.shape)) for n, p in m.named_parameters())
    mine = None
    for other, state in list(_STATES.items()):
        if state.example is None or other is model:
            continue
        mine = mine or signature(model)
        if signature(other) == mine:
            return state.example
    return None


def copy_state(src: nn.Module, dst: nn.Module) -> None:
    """Give ``dst`` (a copy of ``src``) what the library remembers about ``src``."""
    if src in _STATES:
        _STATES[dst] = replace(_STATES[src])


class Weight:
    """A prunable weight held under another name than a layer module's ``weight`` (``owner``'s
    parameter ``attr``, e.g. attention's ``in_proj_weight``); ``.weight`` is that parameter."""

    def __init__(self, owner: nn.Module, attr: str):
        self.owner, self.attr = owner, attr

    @property
    def weight(self) -> nn.Parameter:
        return getattr(self.owner, self.attr)

    def __repr__(self):
        return f"Weight({type(self.owner).__name__}.{self.attr}, {tuple(self.weight.shape)})"


def is_hf_conv1d(m: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (a Linear with its weight stored in × out), by duck type, so
    transformers need not be installed."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) \
        is not None and m.weight.dim() == 2


def slot(layer) -> tuple[nn.Module, str]:
    """(the module holding the layer's weight, the parameter's name there)."""
    return (layer.owner, layer.attr) if isinstance(layer, Weight) else (layer, "weight")


def holder(layer) -> nn.Module:
    """The module a layer's weight belongs to (itself, or a :class:`Weight`'s owner)."""
    return slot(layer)[0]


def kind(layer) -> str:
    """A layer's type in words: ``Conv2d``, ``Linear``, ``Conv1D``, ``MultiheadAttention.in_proj_weight``."""
    owner, attr = slot(layer)
    return type(owner).__name__ + ("" if attr == "weight" else f".{attr}")


def _layers(model):
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE_TYPES) or is_hf_conv1d(m):
            yield name, m
        elif isinstance(m, nn.MultiheadAttention):
            for attr in _MHA_WEIGHTS:
                if getattr(m, attr, None) is not None:
                    yield (f"{name}.{attr}" if name else attr), Weight(m, attr)


def prunable(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Every prunable weight of ``model`` (module doc) by name, in registration order (forward
    order for every model in :mod:`rdprune.models`, a test checks it; :func:`forward_order`
    gives the order of any model's forward pass, and what depends on order uses it). ``exclude``
    takes names or glob patterns, e.g.
    ``("conv1", "*.shortcut.*")``.

    Tied weights appear once: a weight shared by several layers belongs to the first; a layer
    whose weight is another module's parameter too (a language model's output layer tied to the
    input embedding) is left out, with one warning naming it, since pruning it would also prune
    the embedding."""
    exclude = tuple(exclude)
    layers = dict(_layers(model))
    tied = _tied(model, layers)
    return {name: m for name, m in layers.items() if name not in tied
            and not any(fnmatch.fnmatchcase(name, pat) for pat in exclude)}


def _tied(model, layers) -> set[str]:
    """Layers left out for tied weights (:func:`prunable`), warned about once per model."""
    owners: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, m in model.named_modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), []).append((name, m))
    holders = {id(holder(m)) for m in layers.values()}
    out, to_other = set(), []
    for name, m in layers.items():
        users = owners.get(id(m.weight), [])
        if len(users) < 2:
            continue
        if any(id(u) not in holders for _, u in users):
            out.add(name)
            to_other.append(f"{name} (tied to {next(n for n, u in users if id(u) not in holders)})")
        elif users[0][1] is not holder(m):
            out.add(name)  # the first layer holding the shared weight stands for it
    if to_other and state_of(model).tied_warned != to_other:
        warnings.warn(f"left out of pruning for tied weights: {', '.join(to_other)}; pruning "
                      "them would prune what they are tied to")
        state_of(model).tied_warned = to_other
    return out

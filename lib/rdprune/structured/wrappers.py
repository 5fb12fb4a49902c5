"""HBGS's LRF-style wrappers (``docs/hbgs.md`` §1): every K×K conv but the stem becomes
``P (1×1, identity) → W → Q (1×1, identity)`` under its own name (:func:`wrap`);
:func:`wrappable` says which convs qualify and why the others do not. The search lives in
:mod:`rdprune.structured.hbgs`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core import masks as M


def run(x, conv, p, w, b, q):
    x = F.conv2d(x if p is None else F.conv2d(x, p), w, b, conv.stride, conv.padding,
                 conv.dilation)
    return x if q is None else F.conv2d(x, q)


class Wrapped(nn.Module):
    """p (1×1, m→s_in) → conv → q (1×1, s_out→n); None once folded; ``override``: candidates."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv, self.override = conv, None
        eye = lambda c: torch.eye(c, dtype=conv.weight.dtype, device=conv.weight.device)
        self.p = nn.Parameter(eye(conv.in_channels)[:, :, None, None])
        self.q = nn.Parameter(eye(conv.out_channels)[:, :, None, None])

    def tensors(self):
        return self.override or (self.p, self.conv.weight, self.conv.bias, self.q)

    def forward(self, x):
        return run(x, self.conv, *self.tensors())


def set_module(model, name, module):
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)


def wrappable(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """(the convs :func:`wrap` wraps, {every other conv: why not}): the stem, 1×1 convs, grouped
    or depthwise convs and non-zero padding are not wrapped (module doc)."""
    ok, skipped = [], {}
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for i, (name, m) in enumerate(convs):
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        why = ("the stem" if i == 0 else "1×1" if m.kernel_size == (1, 1)
               else f"depthwise (groups={m.groups})" if m.groups == m.in_channels ==
               m.out_channels > 1
               else f"grouped (groups={m.groups})" if m.groups != 1
               else f"padding mode {m.padding_mode!r}" if m.padding_mode != "zeros"
               else "already wrapped" if isinstance(parent, Wrapped) else None)
        if why:
            skipped[name] = why
        else:
            ok.append(name)
    return ok, skipped


def wrap(model: nn.Module) -> nn.Module:
    """A copy with every K×K conv except the stem wrapped as P → W → Q (module doc)."""
    model = M.clone(model)
    for name in wrappable(model)[0]:
        set_module(model, name, Wrapped(model.get_submodule(name)))
    return model


def wrappers(model: nn.Module) -> dict[str, Wrapped]:
    return {n: m for n, m in model.named_modules() if isinstance(m, Wrapped)}

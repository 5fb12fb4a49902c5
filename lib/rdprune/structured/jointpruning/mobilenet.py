"""JointPruning on MobileNet V1 / V2 (:mod:`rdprune.structured.jointpruning`): the space, the
supernet walk and the standalone network, read off the module (the zoo's ``mobilenet_v1`` /
``mobilenet_v2``: ``features`` = stem conv-BN-act, blocks, [1x1 head conv], then ``classifier``).

* **Blocks.** V2: inverted residuals (``.conv`` + ``.use_res``: [1x1 expansion], 3x3 depthwise,
  1x1 projection). V1: a depthwise conv-BN-ReLU followed by a pointwise one (two ``features``
  entries).
* **Stages [MP per stage; grouping NC].** A stage is a maximal run of blocks whose blocks after
  the first preserve shape (stride 1, as many outputs as inputs in the dense network): at width
  1.0, V2's ``(t, c, n, s)`` rows and V1's runs of equal width. (At other widths, rounding to
  multiples of 8 can make a row's first block shape-preserving; it then joins the stage before,
  as its residual addition needs.) One output-width entry per stage (V1, without residuals,
  follows the same rule) and one for the stem [MP: the stem has its own entry], shared with
  stage 1 when the first block adds the stem's output (V2 at 0.35x and below).
* **Inner widths.** Every V2 block with an expansion conv has its own expansion-width entry (the
  issue's "the expansion width is the block's own entry"); the depthwise conv takes whatever
  width reaches it. V1 has no inner width.
* **Depth.** One entry per stage of two or more blocks; blocks 1..d run, the first always (it
  changes width or stride), so only shape-preserving blocks are skipped.
* **Kept fixed.** V2's 1x1 head conv keeps the dense network's width and the classifier its
  classes. In the 1.0x space the head is 1280 wide, as in the zoo's narrower multipliers, so
  their conv shapes and FLOPs are points of the space (their architecture differs only where
  rounding gives them a residual addition the 1.0x network has not: 0.75x, 0.25x).
* **Maximum width.** The dense network given is the maximum. MetaPruning's V2 supernet is 1.4x
  wide (stage widths 44, 22, 33, 44, 88, 132, 224, 448) [MP]; the zoo's ``width=1.4`` rounds to
  multiples of 8 (stem 48, stages 24/32/48/88/136/224/448, head 1792), close to it but not the
  same, and its space no longer contains the 1280-head multipliers.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from functools import cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .space import Space, image_size_of, register_family


class MobileConfig(NamedTuple):
    """The integer MobileNet a vector maps to (hashable)."""
    stem: int                # the stem conv's output channels
    stage_widths: tuple      # output channels per stage
    inner_widths: tuple      # per stage, per block: expansion channels (0: no expansion conv)
    depths: tuple            # blocks run per stage (every stage)
    resolution: int          # input side in pixels


class _Conv(NamedTuple):
    name: str                # module path in the dense network
    kernel: int
    stride: int
    padding: int
    depthwise: bool


class _Block(NamedTuple):
    names: tuple             # its ``features`` entries ("features.3",) or V1's pair
    convs: tuple             # _Conv in forward order
    expand: bool             # V2 block with its own expansion conv (an inner-width entry)


def _conv(name, m: nn.Conv2d) -> _Conv:
    dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    if m.groups > 1 and not dw:
        raise ValueError(f"{name}: grouped convs other than depthwise are not in the MobileNet space")
    square = len(set(m.kernel_size)) == len(set(m.stride)) == len(set(m.padding)) == 1
    if not square or set(m.dilation) != {1} or m.padding_mode != "zeros":
        raise ValueError(f"{name}: the MobileNet space counts square, undilated, zero-padded "
                         f"convs only")
    return _Conv(name, m.kernel_size[0], m.stride[0], m.padding[0], dw)


def _convs(module: nn.Module, prefix: str) -> tuple:
    return tuple(_conv(f"{prefix}.{n}" if n else prefix, m) for n, m in module.named_modules()
                 if isinstance(m, nn.Conv2d))


def _is_cbr(m) -> bool:
    return isinstance(m, nn.Sequential) and len(m) and isinstance(m[0], nn.Conv2d)


class MobileNetSpace(Space):
    kind = "mobilenet"

    def __init__(self, key):
        (self.model_name, self.num_classes, self.in_channels, image_size, self.stem_conv,
         self.stem_max, self.stem_tied, self.stages, self.stage_max, self.inner_max, self.head,
         self.head_width, self.classifier) = key
        self.key = key
        self.deep = tuple(s for s, st in enumerate(self.stages) if len(st) > 1)
        stem = [] if self.stem_tied else [self.stem_max]
        self._setup([*stem, *self.stage_max, *self.inner_max],
                    [len(self.stages[s]) for s in self.deep], image_size)

    def _config(self, ch, depths, r) -> MobileConfig:
        ch = ch[:1] * self.stem_tied + ch  # a tied stem reads stage 1's entry
        S, it = len(self.stages), iter(ch[1 + len(self.stages):])
        inner = tuple(tuple(next(it) if b.expand else 0 for b in st) for st in self.stages)
        full = [1] * S
        for s, d in zip(self.deep, depths):
            full[s] = d
        return MobileConfig(ch[0], tuple(ch[1:1 + S]), inner, tuple(full), r)

    def _entries(self, c: MobileConfig):
        inner = [m for st, ms in zip(self.stages, c.inner_widths)
                 for b, m in zip(st, ms) if b.expand]
        stem = [] if self.stem_tied else [c.stem]
        return [*stem, *c.stage_widths, *inner], [c.depths[s] for s in self.deep]

    def plan(self, c: MobileConfig):
        """(output channels of every non-depthwise conv, skipped ``features`` entries) of ``c``."""
        widths, skip = {self.stem_conv.name: c.stem}, set()
        for s, st in enumerate(self.stages):
            for j, b in enumerate(st):
                if j >= c.depths[s]:
                    skip.update(b.names)
                    continue
                outs = iter(([c.inner_widths[s][j]] if b.expand else []) + [c.stage_widths[s]])
                widths.update((cv.name, next(outs)) for cv in b.convs if not cv.depthwise)
        if self.head is not None:
            widths[self.head.name] = self.head_width
        return widths, skip

    def _count(self, c: MobileConfig) -> int:
        h = c.resolution

        def conv(cv, cin, cout):
            nonlocal h
            h = (h + 2 * cv.padding - cv.kernel) // cv.stride + 1
            return cv.kernel ** 2 * h * h * (cout if cv.depthwise else cin * cout)

        total, cin = conv(self.stem_conv, self.in_channels, c.stem), c.stem
        for s, st in enumerate(self.stages):
            for j, b in enumerate(st[:c.depths[s]]):
                outs = iter(([c.inner_widths[s][j]] if b.expand else []) + [c.stage_widths[s]])
                for cv in b.convs:
                    cout = cin if cv.depthwise else next(outs)
                    total, cin = total + conv(cv, cin, cout), cout
        if self.head is not None:
            total, cin = total + conv(self.head, cin, self.head_width), self.head_width
        return total + cin * self.num_classes


@cache
def _cached(key) -> MobileNetSpace:
    return MobileNetSpace(key)


def _blocks(feats: nn.Sequential):
    """(stem, blocks, head) of a MobileNet ``features``, or None when it is not one."""
    items = list(feats.named_children())
    if len(items) < 2 or not _is_cbr(items[0][1]):
        return None
    stem, rest, head = items[0], items[1:], None
    if all(hasattr(m, "conv") and hasattr(m, "use_res") for _, m in rest[:-1]) and \
            _is_cbr(rest[-1][1]):  # V2
        head, rest = rest[-1], rest[:-1]
        blocks = []
        for n, m in rest:
            convs = _convs(m.conv, f"features.{n}.conv")
            blocks.append(_Block((f"features.{n}",), convs, not convs[0].depthwise))
    elif len(rest) % 2 == 0 and all(_is_cbr(m) for _, m in rest):  # V1: depthwise + pointwise
        blocks = []
        for (n1, dw), (n2, pw) in zip(rest[::2], rest[1::2]):
            convs = _convs(dw, f"features.{n1}") + _convs(pw, f"features.{n2}")
            if len(convs) != 2 or not convs[0].depthwise or convs[1].depthwise:
                return None
            blocks.append(_Block((f"features.{n1}", f"features.{n2}"), convs, False))
    else:
        return None
    return stem, blocks, head


@register_family
def _mobilenet_space(model: nn.Module, image_size: int | None):
    feats, fc = getattr(model, "features", None), getattr(model, "classifier", None)
    if not (isinstance(feats, nn.Sequential) and isinstance(fc, nn.Linear)):
        return None
    found = _blocks(feats)
    if found is None:
        return None
    (sname, stem), blocks, head = found
    mods = dict(model.named_modules())
    stem_conv = _conv(f"features.{sname}.0", stem[0])

    def out_of(b):
        return mods[b.convs[-1].name].out_channels

    stages, cin, residual = [], stem[0].out_channels, []
    for b in blocks:
        cout, stride = out_of(b), max(cv.stride for cv in b.convs)
        if stages and stride == 1 and cin == cout:
            stages[-1].append(b)
        else:
            stages.append([b])
        residual.append(bool(getattr(mods[b.names[0]], "use_res", False)))  # V2's flag
        cin = cout
    # a residual first block (width-multiplier rounding can make the stem as wide as stage 1,
    # e.g. V2 at 0.25x) adds the stem's output: the two share one width entry, as in a ResNet
    tied = residual[0]
    inner = [mods[b.convs[0].name].out_channels for st in stages for b in st if b.expand]
    hconv = None if head is None else _conv(f"features.{head[0]}.0", head[1][0])
    key = ("mobilenet_v2" if head is not None else "mobilenet_v1", int(fc.out_features),
           int(stem[0].in_channels), image_size_of(model, image_size), stem_conv,
           int(stem[0].out_channels), tied, tuple(tuple(st) for st in stages),
           tuple(out_of(st[0]) for st in stages), tuple(inner), hconv,
           None if head is None else int(head[1][0].out_channels), fc.in_features)
    return _cached(key)


# ----------------------------------------------------------------------------- networks
def resize(x, r):
    """The batch at ``r`` x ``r`` pixels (antialiased bilinear; unchanged when it already is)."""
    if tuple(x.shape[-2:]) == (r, r):
        return x
    return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)


def _conv_out(conv: nn.Conv2d, name: str, plan, cin: int):
    """(depthwise?, output channels) of a dense conv under ``plan``: a depthwise conv keeps the
    channels that reach it, any other the plan's width. The walk that runs the supernet's slice
    and the one that builds the network both read this, so they cannot disagree."""
    dw = conv.groups > 1
    return dw, cin if dw else plan[0][name]


def walk(mod: nn.Module, x, name: str, plan, cin: int, bn):
    """Run the dense ``mod`` as its slice under ``plan`` (leading channels; ``bn(x, module, c,
    name)`` normalises). Returns (output, its channels)."""
    if name in plan[1]:
        return x, cin
    if isinstance(mod, nn.Conv2d):
        dw, out = _conv_out(mod, name, plan, cin)
        w = mod.weight[:out] if dw else mod.weight[:out, :cin]
        b = None if mod.bias is None else mod.bias[:out]
        return F.conv2d(x, w, b, mod.stride, mod.padding, 1, cin if dw else 1), out
    if isinstance(mod, nn.BatchNorm2d):
        return bn(x, mod, cin, name), cin
    if isinstance(mod, nn.Sequential):
        for n, child in mod.named_children():
            x, cin = walk(child, x, f"{name}.{n}", plan, cin, bn)
        return x, cin
    if hasattr(mod, "conv") and hasattr(mod, "use_res"):
        y, c = walk(mod.conv, x, f"{name}.conv", plan, cin, bn)
        return (x + y if mod.use_res else y), c
    return mod(x), cin  # activations


def supernet_forward(net: nn.Module, x, cfg: MobileConfig, sp: MobileNetSpace, bn):
    x, c = walk(net.features, x, "features", sp.plan(cfg), sp.in_channels, bn)
    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return F.linear(x, net.classifier.weight[:, :c], net.classifier.bias)


def _narrow(mod: nn.Module, name: str, plan, cin: int):
    """A fresh copy of ``mod`` with ``plan``'s widths (None when skipped), and its channels out."""
    if name in plan[1]:
        return None, cin
    if isinstance(mod, nn.Conv2d):
        dw, out = _conv_out(mod, name, plan, cin)
        return nn.Conv2d(cin, out, mod.kernel_size, mod.stride, mod.padding,
                         groups=cin if dw else 1, bias=mod.bias is not None), out
    if isinstance(mod, nn.BatchNorm2d):
        return nn.BatchNorm2d(cin, mod.eps, mod.momentum, mod.affine,
                              mod.track_running_stats), cin
    if isinstance(mod, nn.Sequential):
        kept = OrderedDict()
        for n, child in mod.named_children():
            new, cin = _narrow(child, f"{name}.{n}", plan, cin)
            if new is not None:
                kept[n] = new
        return nn.Sequential(kept), cin
    if hasattr(mod, "conv") and hasattr(mod, "use_res"):
        new = copy.deepcopy(mod)  # its class, flags and forward; its convs replaced below
        new.conv, c = _narrow(mod.conv, f"{name}.conv", plan, cin)
        return new, c
    return copy.deepcopy(mod), cin


class PrunedMobileNet(nn.Module):
    """A standalone JointPruning MobileNet: the dense model's module names (skipped blocks are
    absent, the others keep their ``features`` index), freshly initialised narrower convs, and the
    input resized to ``resolution`` inside ``forward``."""

    def __init__(self, sp: MobileNetSpace, cfg: MobileConfig, template: nn.Module):
        super().__init__()
        self.features, c = _narrow(template.features, "features", sp.plan(cfg), sp.in_channels)
        self.classifier = nn.Linear(c, sp.num_classes)
        self.resolution, self.config = cfg.resolution, cfg
        self.arch, self.input_size = sp.model_name, (sp.in_channels, sp.full, sp.full)

    def forward(self, x):
        x = self.features(resize(x, self.resolution))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

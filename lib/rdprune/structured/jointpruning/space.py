"""JointPruning's search space (:mod:`rdprune.structured.jointpruning`, whose docstring records
the choices): the pruning-vector layout and rounding (:class:`Space`), analytic FLOPs, and the FLOPs
projection every vector goes through."""
from __future__ import annotations

from functools import cache
from typing import NamedTuple

import numpy as np
from torch import nn

from ...util import NotApplicable

MODELS = ("resnet20", "resnet32", "resnet56")
RATIO_MIN = 0.10


class Config(NamedTuple):
    """The integer network a vector maps to (hashable, so FLOPs and losses can be cached)."""
    stage_widths: tuple      # output channels per stage
    inner_widths: tuple      # per stage, per block: conv1's output channels
    depths: tuple            # blocks run per stage
    resolution: int          # input side in pixels


class Space:
    """Layout, bounds and rounding of the pruning vector for one network family and input shape:
    ``nc`` channel entries (ratios of ``cmax``), one depth entry per stage with skippable blocks
    (blocks run, up to ``dmax``), the input side last. A family (:class:`ResNetSpace`,
    :class:`~.mobilenet.MobileNetSpace`) says how entries map to its :class:`Config` (``_config``,
    ``_entries``) and counts that network's FLOPs (``_count``)."""

    kind = ""

    def _setup(self, cmax, dmax, image_size):
        self.full = image_size
        self.cmax, self.dmax = np.asarray(cmax, float), np.asarray(dmax, float)
        self.nc, nd = len(self.cmax), len(self.dmax)
        self.size = self.nc + nd + 1
        self.groups = {"channel": slice(0, self.nc), "depth": slice(self.nc, self.nc + nd),
                       "resolution": slice(self.nc + nd, self.size)}
        step, rmin = (4, 16) if image_size <= 64 else (8, 96)
        rmin = min(rmin, image_size)
        first = -(-rmin // step) * step
        self.res_grid = np.array(sorted({rmin, image_size, *range(first, image_size + 1, step)}))
        self.lo = np.r_[np.full(self.nc, RATIO_MIN), np.ones(nd), rmin].astype(float)
        self.hi = np.r_[np.ones(self.nc), self.dmax, image_size].astype(float)
        self.unit = np.r_[1.0 / self.cmax, np.ones(nd), step]  # one rounding step per entry
        self._macs = {}

    def check(self, vector) -> np.ndarray:
        v = np.asarray(vector, dtype=float)
        if v.shape != (self.size,) or not np.isfinite(v).all():
            raise ValueError(f"a {self.model_name} pruning vector has {self.size} finite entries "
                             f"(widths, inner widths, depths, resolution); got shape {v.shape}")
        return np.clip(v, self.lo, self.hi)

    def config(self, v):
        v = np.clip(v, self.lo, self.hi)
        ch = np.maximum(1, np.rint(v[:self.nc] * self.cmax)).astype(int).tolist()
        depths = np.rint(v[self.groups["depth"]]).astype(int).tolist()
        r = int(self.res_grid[np.abs(self.res_grid - v[-1]).argmin()])
        return self._config(ch, depths, r)

    def snap(self, v) -> np.ndarray:
        """The canonical vector of ``config(v)``: ratios c/C, integer depths, grid resolution."""
        c = self.config(v)
        ch, depths = self._entries(c)
        return np.r_[np.asarray(ch) / self.cmax, depths, c.resolution].astype(float)

    def macs(self, cfg) -> int:
        if cfg not in self._macs:
            if len(self._macs) > 500_000:  # bound the cache over many searches
                self._macs.clear()
            self._macs[cfg] = self._count(cfg)
        return self._macs[cfg]

    @property
    def full_macs(self) -> int:
        return self.macs(self.config(self.hi))

    def active(self, dims) -> np.ndarray:
        mask = np.zeros(self.size, bool)
        for d in dims:
            mask[self.groups[d]] = True
        return mask


class ResNetSpace(Space):
    """A CIFAR-style ResNet (stages of 16/32/64 channels, ``n`` basic blocks each): one width per
    stage (the stem shares stage 1's, which its identity shortcuts need), one inner width per
    block, blocks per stage."""

    kind = "resnet"

    def __init__(self, model_name, num_classes, in_channels, image_size):
        self.model_name, self.num_classes, self.in_channels = model_name, num_classes, in_channels
        self.n = (int(model_name[6:]) - 2) // 6
        self.widths = (16, 32, 64)
        S, n = len(self.widths), self.n
        self._setup(list(self.widths) + [w for w in self.widths for _ in range(n)], [n] * S,
                    image_size)

    def _config(self, ch, depths, r) -> Config:
        S, n = len(self.widths), self.n
        inner = tuple(tuple(ch[S + s * n: S + (s + 1) * n]) for s in range(S))
        return Config(tuple(ch[:S]), inner, tuple(depths), r)

    def _entries(self, c: Config):
        return [*c.stage_widths, *(m for s in c.inner_widths for m in s)], list(c.depths)

    def _count(self, c: Config) -> int:
        return _config_macs(self, c)


def conv_shortcut(s: int, j: int) -> bool:
    """Whether block j of stage s has a 1x1 conv shortcut: the first block of every stage but the
    first (stride 2; the stem is as wide as stage 1), in the dense and every pruned network."""
    return s > 0 and j == 0


def _config_macs(sp: Space, c: Config) -> int:
    h = c.resolution
    total, cin = sp.in_channels * c.stage_widths[0] * 9 * h * h, c.stage_widths[0]
    for s, cout in enumerate(c.stage_widths):
        for j in range(c.depths[s]):
            h = (h - 1) // (2 if (s > 0 and j == 0) else 1) + 1
            m = c.inner_widths[s][j]
            total += 9 * h * h * m * (cin + cout) + (cin * cout * h * h if conv_shortcut(s, j)
                                                      else 0)
            cin = cout
    return total + cin * sp.num_classes


@cache
def _space_cached(model_name, num_classes, in_channels, image_size) -> Space:
    return ResNetSpace(model_name, num_classes, in_channels, image_size)


def space(model, num_classes: int = 10, in_channels: int = 1,
          image_size: int | None = None) -> Space:
    """The search space of a network: a ResNet's name (``"resnet20"``, with the shape given
    here; image size 28 for one input channel, else 32), a :class:`Space`, or the network itself
    (its depth, classes and input channels read off its layers; image size from ``image_size``,
    else its ``input_size``)."""
    if isinstance(model, Space):
        return model
    if isinstance(model, nn.Module):
        return space_of(model, image_size)
    if model not in MODELS:
        raise ValueError(f"JointPruning supports {', '.join(MODELS)} by name, not {model!r}; for "
                         f"a MobileNet pass the network itself (its space is read off its layers)")
    return _space_cached(model, int(num_classes), int(in_channels),
                         int(image_size or (28 if in_channels == 1 else 32)))


_FAMILIES: list = []  # functions (module, image_size) -> Space, or None when not theirs


def register_family(read):
    """Add a network family: ``read(module, image_size)`` returns its :class:`Space`, None when
    the module is not of that family, or raises ValueError when it is but cannot be searched."""
    _FAMILIES.append(read)
    return read


def space_of(model: nn.Module, image_size: int | None = None) -> Space:
    """The space of a network of a registered family: the CIFAR-style ResNets (stem
    ``conv1``/``bn1``, stages ``layer1..3``, classifier ``fc``) and the zoo's MobileNet V1 / V2
    (``features`` + ``classifier``, :mod:`.mobilenet`). The space is read off the module, so a
    wider or narrower network of the family is its own maximum."""
    for read in _FAMILIES:
        sp = read(model, image_size)
        if sp is not None:
            return sp
    raise NotApplicable(f"JointPruning's space covers CIFAR-style ResNets ({', '.join(MODELS)}: "
                     f"modules conv1, bn1, layer1-3, fc) and the zoo's mobilenet_v1 / mobilenet_v2 "
                     f"(features + classifier); {type(model).__name__} is neither",
                        reason="outside JointPruning's space (CIFAR ResNets, zoo MobileNets)")


def image_size_of(model: nn.Module, image_size: int | None) -> int:
    if image_size is None:
        size = getattr(model, "input_size", None)
        if not size:
            raise ValueError("give image_size= (the input side in pixels) for this network")
        image_size = size[-1]
    return int(image_size)


@register_family
def _resnet_space(model: nn.Module, image_size: int | None):
    need = ("conv1", "bn1", "layer1", "layer2", "layer3", "fc")
    if not all(hasattr(model, a) for a in need) or hasattr(model, "layer4"):
        return None
    n = len(model.layer1)
    widths = tuple(getattr(model, f"layer{s}")[0].conv2.out_channels for s in (1, 2, 3))
    if widths != (16, 32, 64) or any(len(getattr(model, f"layer{s}")) != n for s in (2, 3)):
        raise ValueError(f"JointPruning's space covers ResNets with stage widths 16/32/64 and equal "
                         f"stages; this one has widths {widths}")
    return _space_cached(f"resnet{6 * n + 2}", int(model.fc.out_features),
                         int(model.conv1.in_channels), image_size_of(model, image_size))


# ----------------------------------------------------------------------------- vectors
DIMS = ("channel", "depth", "resolution")
_TOL = 0.01  # the projection lands in [0.99, 1] x target


def dims_of(dims) -> tuple:
    dims = (dims,) if isinstance(dims, str) else tuple(dims)
    bad = [d for d in dims if d not in DIMS]
    if bad or not dims:
        raise ValueError(f"dims must be a non-empty subset of {DIMS}; got {dims!r}")
    return dims


def target_macs(sp: Space, flops_target: float) -> float:
    if not 0.0 < float(flops_target) <= 1.0:
        raise ValueError(f"flops_target is a fraction of the full model's FLOPs in (0, 1]; "
                         f"got {flops_target}")
    return float(flops_target) * sp.full_macs


# ----------------------------------------------------------------------------- public helpers
def decode(model, vector, **shape) -> Config:
    """The integer network (channels, depths, resolution) that ``vector`` maps to (``model``: a
    name, a :class:`Space` or the network, as in :func:`space`)."""
    sp = space(model, **shape)
    return sp.config(sp.check(vector))


def flops(model, vector, num_classes: int = 10, in_channels: int = 1,
          image_size: int | None = None) -> int:
    """Analytic multiply-adds (convs + classifier) of the subnetwork ``vector`` for one image."""
    sp = space(model, num_classes, in_channels, image_size)
    return sp.macs(sp.config(sp.check(vector)))


def uniform(model, width: float, **shape) -> np.ndarray:
    """The uniform width-multiplier baseline: every ratio ``width``, full depth and resolution."""
    sp = space(model, **shape)
    if not RATIO_MIN <= width <= 1.0:
        raise ValueError(f"width must be in [{RATIO_MIN}, 1]; got {width}")
    return np.r_[np.full(sp.nc, float(width)), sp.hi[sp.nc:]]


def uniform_for_flops(model, flops_target: float, **shape) -> np.ndarray:
    """The widest uniform baseline with FLOPs <= ``flops_target`` x full (no greedy fill, so it
    may sit a few percent under the target)."""
    sp = space(model, **shape)
    target = target_macs(sp, flops_target)
    lo, hi = RATIO_MIN, 1.0
    if sp.macs(sp.config(uniform(sp, lo, **shape))) > target:
        raise ValueError(f"flops_target {flops_target} is below the narrowest uniform network")
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sp.macs(sp.config(uniform(sp, mid, **shape))) <= target \
            else (lo, mid)
    return sp.snap(uniform(sp, lo, **shape))


def project(model, vector, flops_target: float, dims=DIMS, **shape) -> np.ndarray:
    """Scale ``vector``'s active dimensions by one factor (bisection), then add single channels,
    so that the rounded network's FLOPs lie in [0.99, 1] x ``flops_target`` x full FLOPs."""
    sp = space(model, **shape)
    active = sp.active(dims_of(dims))
    v = np.where(active, sp.check(vector), sp.hi)  # dimensions not searched stay at full size
    return project_vector(sp, v, target_macs(sp, flops_target), active)


def _bump(sp: Space, x, j):
    """``x`` with entry ``j`` raised by one rounding step (None at the top of its range)."""
    x, c = x.copy(), sp.config(x)
    if j < sp.nc:
        n = np.rint(x[j] * sp.cmax[j])
        x[j] = (n + 1) / sp.cmax[j] if n < sp.cmax[j] else np.nan
    elif j < sp.size - 1:
        x[j] = np.rint(x[j]) + 1 if np.rint(x[j]) < sp.hi[j] else np.nan
    else:
        up = sp.res_grid[sp.res_grid > c.resolution]
        x[j] = up[0] if len(up) else np.nan
    return None if np.isnan(x[j]) else x


def project_vector(sp: Space, v, target: float, active, fill: bool = True) -> np.ndarray:
    """Bisection along lo -> v -> hi over the active entries (the others stay as they are), then
    greedy single-channel fill; if that stalls, trade a coarse step (block / resolution) up for
    a channel-only re-projection."""
    v = np.clip(v, sp.lo, sp.hi)
    lo, hi = np.where(active, sp.lo, v), np.where(active, sp.hi, v)

    def path(t):
        return lo + t * (v - lo) if t <= 1 else v + (t - 1) * (hi - v)

    def cost(x):
        return sp.macs(sp.config(x))

    if cost(lo) > target:
        raise ValueError(f"FLOPs target {target / sp.full_macs:.4f} of full is below the smallest "
                         f"network of this space ({cost(lo) / sp.full_macs:.4f})")
    t_ok, t_bad = (2.0, 2.0) if cost(hi) <= target else (0.0, 2.0)
    for _ in range(40 if t_bad > t_ok else 0):
        mid = (t_ok + t_bad) / 2
        t_ok, t_bad = (mid, t_bad) if cost(path(mid)) <= target else (t_ok, mid)
    out = path(t_ok)
    if not fill:
        return out
    chan = active & (np.arange(sp.size) < sp.nc)
    coords = np.flatnonzero(chan if chan.any() else active)
    cur = cost(out)
    while cur < (1 - _TOL) * target:
        cands = [c for c in (_bump(sp, out, j) for j in coords) if c is not None]
        fits = [(cost(c), i) for i, c in enumerate(cands) if cost(c) <= target]
        if not fits:
            break
        cur, i = max(fits)
        out = cands[i]
    if cur < (1 - _TOL) * target and chan.any():
        for j in np.flatnonzero(active & ~chan):
            cand = _bump(sp, out, j)
            if cand is not None and cost(np.where(chan, sp.lo, cand)) <= target:
                alt = project_vector(sp, cand, target, chan)
                if cur < cost(alt):
                    out, cur = alt, cost(alt)
    return out

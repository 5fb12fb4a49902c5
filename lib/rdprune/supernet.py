"""The search space and networks of JointPruning (:mod:`rdprune.jointpruning`, whose docstring
records the choices): the pruning-vector layout and rounding (:class:`Space`), analytic FLOPs,
the slimmable weight-sharing :class:`Supernet` and the standalone :class:`PrunedResNet`.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import models

MODELS = ("resnet20", "resnet32", "resnet56")
RATIO_MIN = 0.10


class Config(NamedTuple):
    """The integer network a vector maps to (hashable, so FLOPs and losses can be cached)."""
    stage_widths: tuple      # output channels per stage
    inner_widths: tuple      # per stage, per block: conv1's output channels
    depths: tuple            # blocks run per stage
    resolution: int          # input side in pixels


class Space:
    """Layout, bounds and rounding of the pruning vector for one model and input shape."""

    def __init__(self, model_name, num_classes, in_channels, image_size):
        self.model_name, self.num_classes, self.in_channels = model_name, num_classes, in_channels
        self.full = image_size
        self.n = (int(model_name[6:]) - 2) // 6
        self.widths = (16, 32, 64)
        S, n = len(self.widths), self.n
        self.nc = S + S * n
        self.size = self.nc + S + 1
        self.groups = {"channel": slice(0, self.nc), "depth": slice(self.nc, self.nc + S),
                       "resolution": slice(self.nc + S, self.size)}
        step, rmin = (4, 16) if image_size <= 64 else (8, 96)
        rmin = min(rmin, image_size)
        first = -(-rmin // step) * step
        self.res_grid = np.array(sorted({rmin, image_size, *range(first, image_size + 1, step)}))
        self.cmax = np.array(list(self.widths) + [w for w in self.widths for _ in range(n)], float)
        self.lo = np.r_[np.full(self.nc, RATIO_MIN), np.ones(S), rmin].astype(float)
        self.hi = np.r_[np.ones(self.nc), np.full(S, n), image_size].astype(float)
        self.unit = np.r_[1.0 / self.cmax, np.ones(S), step]  # one rounding step per entry
        self._macs = {}

    def check(self, vector) -> np.ndarray:
        v = np.asarray(vector, dtype=float)
        if v.shape != (self.size,) or not np.isfinite(v).all():
            raise ValueError(f"a {self.model_name} pruning vector has {self.size} finite entries "
                             f"(widths, inner widths, depths, resolution); got shape {v.shape}")
        return np.clip(v, self.lo, self.hi)

    def config(self, v) -> Config:
        v = np.clip(v, self.lo, self.hi)
        ch = np.maximum(1, np.rint(v[:self.nc] * self.cmax)).astype(int).tolist()
        S, n = len(self.widths), self.n
        inner = tuple(tuple(ch[S + s * n: S + (s + 1) * n]) for s in range(S))
        depths = tuple(np.rint(v[self.groups["depth"]]).astype(int).tolist())
        r = int(self.res_grid[np.abs(self.res_grid - v[-1]).argmin()])
        return Config(tuple(ch[:S]), inner, depths, r)

    def snap(self, v) -> np.ndarray:
        """The canonical vector of ``config(v)``: ratios c/C, integer depths, grid resolution."""
        c = self.config(v)
        ch = np.r_[c.stage_widths, [m for s in c.inner_widths for m in s]] / self.cmax
        return np.r_[ch, c.depths, c.resolution].astype(float)

    def macs(self, cfg: Config) -> int:
        if cfg not in self._macs:
            if len(self._macs) > 500_000:  # bound the cache over many searches
                self._macs.clear()
            self._macs[cfg] = _config_macs(self, cfg)
        return self._macs[cfg]

    @property
    def full_macs(self) -> int:
        return self.macs(self.config(self.hi))

    def active(self, dims) -> np.ndarray:
        mask = np.zeros(self.size, bool)
        for d in dims:
            mask[self.groups[d]] = True
        return mask


def _conv_shortcut(s: int, j: int) -> bool:
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
            total += 9 * h * h * m * (cin + cout) + (cin * cout * h * h if _conv_shortcut(s, j)
                                                      else 0)
            cin = cout
    return total + cin * sp.num_classes


@lru_cache(maxsize=None)
def _space_cached(model_name, num_classes, in_channels, image_size) -> Space:
    return Space(model_name, num_classes, in_channels, image_size)


def space(model_name: str, num_classes: int = 10, in_channels: int = 1,
          image_size: int | None = None) -> Space:
    """The search space of ``model_name``; image size defaults as in :func:`models.build`."""
    if model_name not in MODELS:
        raise ValueError(f"JointPruning supports {', '.join(MODELS)}, not {model_name!r}")
    return _space_cached(model_name, int(num_classes), int(in_channels),
                         int(image_size or (28 if in_channels == 1 else 32)))


# ----------------------------------------------------------------------------- networks
def _bn(x, bn, c, k, name, record):
    w, b = bn.weight[:c], bn.bias[:c]
    if k is None:  # training: batch statistics, no running statistics kept
        return F.batch_norm(x, None, None, w, b, True, 0.0, bn.eps)
    var, mean = torch.var_mean(x[:k], (0, 2, 3), correction=0)
    if record is not None:
        record[name] = (mean, var)
    return F.batch_norm(x, mean, var, w, b, False, 0.0, bn.eps)


def _resize(x, r):
    if tuple(x.shape[-2:]) == (r, r):
        return x
    return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)


class Supernet(nn.Module):
    """The slimmable max-width network; ``forward(x, cfg, k)`` runs the subnetwork ``cfg``. With
    ``k``, every BN normalises with the statistics of the first ``k`` rows of ``x`` (calibration)."""

    def __init__(self, model_name="resnet20", num_classes=10, in_channels=1, image_size=None,
                 init_model: nn.Module | None = None):
        super().__init__()
        self.space = space(model_name, num_classes, in_channels, image_size)
        self.net = models.build(model_name, num_classes, in_channels, image_size=self.space.full)
        if init_model is not None:
            self.net.load_state_dict(init_model.state_dict(), strict=False)
        self.calib = None  # the calibration batch the search used (for inherit)

    def forward(self, x, cfg: Config, k: int | None = None, record: dict | None = None):
        net, sp = self.net, self.space
        w = cfg.stage_widths
        x = _resize(x, cfg.resolution)
        x = F.relu(_bn(F.conv2d(x, net.conv1.weight[:w[0]], None, 1, 1), net.bn1, w[0], k, "bn1",
                       record))
        cin = w[0]
        for s, layer in enumerate((net.layer1, net.layer2, net.layer3)):
            for j in range(cfg.depths[s]):
                blk, m, p = layer[j], cfg.inner_widths[s][j], f"layer{s + 1}.{j}."
                st = blk.conv1.stride
                out = F.conv2d(x, blk.conv1.weight[:m, :cin], None, st, 1)
                out = F.relu(_bn(out, blk.bn1, m, k, p + "bn1", record))
                out = _bn(F.conv2d(out, blk.conv2.weight[:w[s], :m], None, 1, 1), blk.bn2, w[s], k,
                          p + "bn2", record)
                if _conv_shortcut(s, j):
                    x = _bn(F.conv2d(x, blk.shortcut[0].weight[:w[s], :cin], None, st),
                            blk.shortcut[1], w[s], k, p + "shortcut.1", record)
                x, cin = F.relu(out + x), w[s]
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.linear(x, net.fc.weight[:, :cin], net.fc.bias)


class PrunedResNet(nn.Module):
    """A standalone JointPruning network: the dense model's module names, smaller convs, fewer
    blocks, and the input resized to ``resolution`` inside ``forward``."""

    def __init__(self, sp: Space, cfg: Config):
        super().__init__()
        w = cfg.stage_widths
        self.resolution, self.config = cfg.resolution, cfg
        self.conv1 = nn.Conv2d(sp.in_channels, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        cin = w[0]
        for s, cout in enumerate(w):
            blocks = []
            for j in range(cfg.depths[s]):
                blocks.append(models.BasicBlock(cin, cout, 2 if (s > 0 and j == 0) else 1,
                                                mid=cfg.inner_widths[s][j]))
                cin = cout
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, sp.num_classes)
        self.arch, self.input_size = sp.model_name, (sp.in_channels, sp.full, sp.full)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(_resize(x, self.resolution))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

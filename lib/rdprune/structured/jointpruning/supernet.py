"""JointPruning's networks (:mod:`rdprune.structured.jointpruning`): the slimmable weight-sharing
:class:`Supernet`, the standalone :class:`PrunedResNet`, and :func:`build` / :func:`inherit`.
Both start from the user's dense network (a model is all a method needs), never from the zoo."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .mobilenet import PrunedMobileNet, supernet_forward
from .mobilenet import resize as _resize
from .space import Config, Space, conv_shortcut, space_of


# ----------------------------------------------------------------------------- networks
def _bn(x, bn, c, k, name, record):
    w, b = (None, None) if bn.weight is None else (bn.weight[:c], bn.bias[:c])
    if k is None:  # training: batch statistics, no running statistics kept
        return F.batch_norm(x, None, None, w, b, True, 0.0, bn.eps)
    var, mean = torch.var_mean(x[:k], (0, 2, 3), correction=0)
    if record is not None:
        record[name] = (mean, var)
    return F.batch_norm(x, mean, var, w, b, False, 0.0, bn.eps)


class Supernet(nn.Module):
    """The slimmable max-width network; ``forward(x, cfg, k)`` runs the subnetwork ``cfg``. With
    ``k``, every BN normalises with the statistics of the first ``k`` rows of ``x`` (calibration)."""

    def __init__(self, model: nn.Module, image_size: int | None = None):
        super().__init__()
        self.space = space_of(model, image_size)
        self.net = copy.deepcopy(model)  # the max-width network: a trained one, or a fresh one
        self.calib = None  # the calibration batch the search used (for inherit)

    def forward(self, x, cfg: Config, k: int | None = None, record: dict | None = None):
        net = self.net
        x = _resize(x, cfg.resolution)
        if self.space.kind == "mobilenet":
            return supernet_forward(net, x, cfg, self.space,
                                    lambda y, bn, c, name: _bn(y, bn, c, k, name, record))
        w = cfg.stage_widths
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
                if conv_shortcut(s, j):
                    x = _bn(F.conv2d(x, blk.shortcut[0].weight[:w[s], :cin], None, st),
                            blk.shortcut[1], w[s], k, p + "shortcut.1", record)
                x, cin = F.relu(out + x), w[s]
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.linear(x, net.fc.weight[:, :cin], net.fc.bias)


def _conv(like: nn.Conv2d, cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, like.kernel_size, like.stride, like.padding,
                     bias=like.bias is not None)


def _narrow(block: nn.Module, cin: int, mid: int, cout: int) -> nn.Module:
    """A fresh copy of ``block`` with ``mid`` inner and ``cout`` output channels (its own class
    and forward; its convs and BNs new, created in the order a block builds them)."""
    new = copy.deepcopy(block)
    new.conv1, new.bn1 = _conv(block.conv1, cin, mid), nn.BatchNorm2d(mid)
    new.conv2, new.bn2 = _conv(block.conv2, mid, cout), nn.BatchNorm2d(cout)
    if len(block.shortcut):
        new.shortcut = nn.Sequential(_conv(block.shortcut[0], cin, cout), nn.BatchNorm2d(cout))
    return new


class PrunedResNet(nn.Module):
    """A standalone JointPruning network: the dense model's module names, smaller convs, fewer
    blocks, and the input resized to ``resolution`` inside ``forward``. ``template`` is the dense
    network whose blocks are narrowed (freshly initialised)."""

    def __init__(self, sp: Space, cfg: Config, template: nn.Module):
        super().__init__()
        w = cfg.stage_widths
        self.resolution, self.config = cfg.resolution, cfg
        self.conv1 = nn.Conv2d(sp.in_channels, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        cin = w[0]
        for s, cout in enumerate(w):
            blocks = []
            for j in range(cfg.depths[s]):
                blocks.append(_narrow(getattr(template, f"layer{s + 1}")[j], cin,
                                      cfg.inner_widths[s][j], cout))
                cin = cout
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, sp.num_classes)
        self.arch, self.input_size = sp.model_name, (sp.in_channels, sp.full, sp.full)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(_resize(x, self.resolution))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(model: nn.Module, vector, image_size: int | None = None) -> nn.Module:
    """A freshly initialised pruned network of the dense ``model``'s family with exactly
    ``decode(model, vector)``'s channels, depths and resolution (:class:`PrunedResNet` or
    :class:`PrunedMobileNet`)."""
    sp = space_of(model, image_size)
    cfg = sp.config(sp.check(vector))
    template = model
    model = (PrunedMobileNet if sp.kind == "mobilenet" else PrunedResNet)(sp, cfg, template)
    model.vector = sp.snap(sp.check(vector))
    return model


@torch.no_grad()
def inherit(supernet: Supernet, vector, calib: torch.Tensor | None = None) -> nn.Module:
    """:func:`build` with the supernet's leading slices copied in; BN running statistics are set
    from ``calib`` (default: the calibration batch the search used), in eval mode."""
    sp = supernet.space
    model = build(supernet.net, vector, sp.full)
    calib = supernet.calib if calib is None else calib
    if calib is None:
        raise ValueError("inherit needs calib= (a batch of training inputs) to set BN statistics")
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) and mod.weight is not None:
            src = supernet.net.get_submodule(name)
            idx = tuple(slice(0, n) for n in mod.weight.shape)
            mod.weight.copy_(src.weight[idx])
            if mod.bias is not None:
                mod.bias.copy_(src.bias[idx[:1]])
    stats = {}
    p = next(supernet.parameters())
    supernet(calib.to(p.device), model.config, k=len(calib), record=stats)
    for name, (mean, var) in stats.items():
        bn = model.get_submodule(name)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    return model.to(p.device).eval()

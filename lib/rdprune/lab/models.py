"""Model zoo: the CIFAR-style networks of the RD authors' code, LeNet-5, MobileNets, a small ViT
(``vit_tiny``), a byte-level GPT-2 (``lm_tiny``, for the text data set ``pystdlib``) and
torchvision's ImageNet models. Every image model accepts any input-channel count and class count
and carries ``arch`` and ``input_size`` (C, H, W) attributes so accounting needs no extra
arguments (``lm_tiny``'s ``input_size`` is None: it counts on a window of token ids).

``build("resnet32")`` has 34 prunable layers (31 convs in the trunk, 2 downsample 1×1 convs, the
classifier), as in the authors' code.

:func:`build` also takes a **model spec** (:mod:`rdprune.lab.specs`) for a network that is not ours
(the CLI's ``--model``):
``torchvision:NAME`` (any classification model of ``torchvision.models``, random weights, the
class count of the data set and its first conv re-made for the data's channels), ``timm:NAME``
(with ``pip install timm``; ``in_chans`` and ``num_classes`` passed), ``hf:CONFIG`` (a Hugging
Face image classifier built from a local config folder or json, with the data set's labels,
channels and image size; nothing downloaded), or ``path/to/file.py:factory``
(``factory`` is called with those of ``num_classes``, ``in_channels``, ``image_size`` it accepts
and must return an ``nn.Module``). :func:`check` validates a spec before anything is built.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core import masks as M
from . import specs
from .text import WINDOW


# ----------------------------------------------------------------------------- LeNet-5
class LeNet5(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.AdaptiveAvgPool2d(5)
        self.fc1 = nn.Linear(16 * 25, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


# ----------------------------------------------------------------------------- CIFAR ResNets
class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut, ReLU. ``mid`` (inner width, default ``cout``) lets
    JointPruning's pruned blocks reuse it."""

    def __init__(self, cin, cout, stride, mid=None):
        super().__init__()
        mid = mid or cout
        self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # 1×1 conv + BN downsample, as in the authors' code
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth, num_classes=10, in_channels=3, widths=(16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------- VGG-16 (BN)
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg=_VGG16, num_classes=10, in_channels=3):
        super().__init__()
        layers, cin = [], in_channels
        for v in cfg:
            if v == "M":  # ceil_mode keeps 28×28 inputs alive through five poolings
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# ----------------------------------------------------------------------------- DenseNet-121 (CIFAR)
class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(self, blocks=(6, 12, 24, 16), growth=12, reduction=0.5, num_classes=10,
                 in_channels=3):
        super().__init__()
        c = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        stages = []
        for i, nb in enumerate(blocks):
            layers = []
            for _ in range(nb):
                layers.append(DenseLayer(c, growth))
                c += growth
            stages.append(nn.Sequential(*layers))
            if i < len(blocks) - 1:
                cout = int(c * reduction)
                stages.append(Transition(c, cout))
                c = cout
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.features(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------- MobileNets (CIFAR)
def _cbr(cin, cout, k, stride, groups=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act(inplace=True))


class MobileNetV1(nn.Module):
    _cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + \
           [(1024, 2), (1024, 1)]

    def __init__(self, num_classes=10, in_channels=3, width=1.0):
        super().__init__()
        c = max(8, int(32 * width))
        layers = [_cbr(in_channels, c, 3, 1)]  # stride 1 stem for 28/32-pixel inputs
        for cout, s in self._cfg:
            cout = max(8, int(cout * width))
            layers += [_cbr(c, c, 3, s, groups=c), _cbr(c, cout, 1, 1)]
            c = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_cbr(cin, hidden, 1, 1, act=nn.ReLU6)]
        layers += [_cbr(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion, channels, repeats, stride); CIFAR variant: stride 1 in the stem and 2nd stage
    _cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes=10, in_channels=3, width=1.0):
        super().__init__()
        c = _divisible(32 * width)
        layers = [_cbr(in_channels, c, 3, 1, act=nn.ReLU6)]
        for t, ch, n, s in self._cfg:
            cout = _divisible(ch * width)
            for i in range(n):
                layers.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                c = cout
        last = _divisible(1280 * max(1.0, width))
        layers.append(_cbr(c, last, 1, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def _divisible(v, d=8):
    return max(d, int(v + d / 2) // d * d)


# ----------------------------------------------------------------------------- ViT
def vit_tiny(num_classes=10, in_channels=1, image_size=28):
    """A small vision transformer for 28×28 or 32×32 images: torchvision's
    ``VisionTransformer`` with patch 4 (49 or 64 tokens), 6 blocks of width 96, 4 heads and an
    MLP of 192 (0.44 M weights in its prunable layers). Its patch embedding is re-made for
    ``in_channels``, and its head, which torchvision starts at zero, is initialised like the
    other Linear layers so that a random model's outputs (and RD curves in tests) are not all
    zero."""
    import torchvision.models as tvm
    if image_size % 4:
        raise ValueError(f"vit_tiny needs an image size divisible by its patch size 4, got "
                         f"{image_size}")
    model = tvm.VisionTransformer(image_size=image_size, patch_size=4, num_layers=6, num_heads=4,
                                  hidden_dim=96, mlp_dim=192, num_classes=num_classes)
    if in_channels != 3:
        specs.reinput(model, in_channels)
    nn.init.trunc_normal_(model.heads.head.weight, std=0.02)
    return model


# ----------------------------------------------------------------------------- language model
def lm_tiny(vocab=256, context=128):
    """A small GPT-style byte-level language model: Hugging Face's ``GPT2LMHeadModel`` built
    from a config (4 blocks of width 128, 4 heads, MLP 512, context ``context`` tokens, no
    dropout; 0.79 M weights in its prunable layers, the 16 ``Conv1D`` projections). Its output
    layer is tied to the token embedding, as in GPT-2, and so is left out of pruning. Needs
    ``transformers`` (``pip install 'rdprune[hf]'``); nothing is downloaded. Its example input
    for FLOP counts is one window of ``context`` tokens."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        raise ValueError("lm_tiny is Hugging Face's GPT2LMHeadModel: pip install "
                         "'rdprune[hf]' (transformers)") from e
    cfg = GPT2Config(vocab_size=vocab, n_positions=context, n_embd=128, n_layer=4, n_head=4,
                     n_inner=512, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0, use_cache=False)
    model = GPT2LMHeadModel(cfg)
    M.remember(model, torch.zeros(1, context, dtype=torch.long))
    return model


TEXT = ("lm_tiny",)  # zoo models that read token ids (data sets with Info.text)


# ----------------------------------------------------------------------------- torchvision
_TV_WEIGHTS = {"tv_resnet50": "ResNet50_Weights", "tv_vgg16_bn": "VGG16_BN_Weights",
               "tv_mobilenet_v2": "MobileNet_V2_Weights"}


def _torchvision(name, num_classes, in_channels, pretrained):
    import torchvision.models as tvm
    arch = name[3:]
    enum = getattr(tvm, _TV_WEIGHTS[name]).IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    use = pretrained and num_classes == 1000 and in_channels == 3 and cached.is_file()
    if pretrained and not use:
        import warnings
        warnings.warn(f"{name}: no cached torchvision weights usable at {cached} "
                      f"(classes={num_classes}, channels={in_channels}); random init")
    model = getattr(tvm, arch)(weights=enum if use else None,
                               num_classes=1000 if use else num_classes)
    if in_channels != 3:
        specs.reinput(model, in_channels)
    return model


# ----------------------------------------------------------------------------- registry
_BUILDERS = {  # (classes, input channels, width multiplier, image size) -> model
    "lenet5": lambda c, i, w, s: LeNet5(c, i),
    "resnet20": lambda c, i, w, s: CifarResNet(20, c, i),
    "resnet32": lambda c, i, w, s: CifarResNet(32, c, i),
    "resnet56": lambda c, i, w, s: CifarResNet(56, c, i),
    "vgg16": lambda c, i, w, s: VGG(_VGG16, c, i),
    "densenet121": lambda c, i, w, s: DenseNet((6, 12, 24, 16), 12, 0.5, c, i),
    "mobilenet_v1": lambda c, i, w, s: MobileNetV1(c, i, w),
    "mobilenet_v2": lambda c, i, w, s: MobileNetV2(c, i, w),
    "vit_tiny": lambda c, i, w, s: vit_tiny(c, i, s),
    # a text data set's Info has no channels (0), its vocabulary as classes and its window as
    # size; build("lm_tiny") with the image defaults gives the byte model (256, 128)
    "lm_tiny": lambda c, i, w, s: lm_tiny(c, s) if i == 0 else lm_tiny(),
}
_TV = tuple(_TV_WEIGHTS)


def available() -> list[str]:
    """Zoo names accepted by :func:`build` (which also takes the specs of the module doc)."""
    return list(_BUILDERS) + list(_TV)


def check(spec: str) -> None:
    """ValueError unless ``spec`` is a zoo name or a buildable spec (:mod:`.specs`)."""
    specs.check(spec, available())


def check_data(name: str, data_info) -> None:
    """ValueError when a zoo language model meets an image data set or a zoo image model a
    text data set (a spec, e.g. a user's factory, is not checked: we cannot know what it reads)."""
    if name not in _BUILDERS:
        return
    is_text = name in TEXT
    if is_text != bool(getattr(data_info, "text", False)):
        want = "a text data set (pystdlib)" if is_text else "an image data set"
        raise ValueError(f"{name} reads {'token ids' if is_text else 'images'}; "
                         f"{data_info.name} is {'text' if data_info.text else 'images'}: use "
                         f"{want}, or a {'language' if data_info.text else 'vision'} model "
                         f"({', '.join(TEXT) if data_info.text else 'e.g. resnet20'})")


def slug(spec: str) -> str:
    """A file-name-safe name for ``spec``: a zoo name itself, else :func:`rdprune.lab.specs.slug`."""
    return spec if spec in available() else specs.slug(spec)


def build(name: str, num_classes: int = 10, in_channels: int = 1, *, image_size: int | None = None,
          width: float = 1.0, pretrained: bool = True) -> nn.Module:
    """Build a model by zoo name or spec (module doc). ``image_size`` defaults to 28 for one
    channel, 32 for three (224 for the torchvision ImageNet models of the zoo); ``width`` is the
    MobileNets' multiplier; the zoo's torchvision models load their ImageNet weights when cached
    locally and shapes allow."""
    if name not in available():
        default_size = 28 if in_channels == 1 else 32
        check(name)
        model = specs.build_spec(name, num_classes, in_channels, image_size or default_size)
        model.arch = name
        if not getattr(model, "input_size", None):  # a factory's own input_size wins
            model.input_size = (in_channels, image_size or default_size,
                                image_size or default_size)
        return model
    if name in _TV:
        model = _torchvision(name, num_classes, in_channels, pretrained)
        default_size = 224
    else:
        default_size = WINDOW if name in TEXT else 28 if in_channels == 1 else 32
        model = _BUILDERS[name](num_classes, in_channels, width, image_size or default_size)
    model.arch = name
    model.input_size = None if name in TEXT else \
        (in_channels, image_size or default_size, image_size or default_size)
    return model

"""Model specs: networks that are not in our zoo, built for a data set (the CLI's ``--model``).
``torchvision:NAME``, ``timm:NAME``, ``hf:CONFIG`` and ``path/to/file.py:factory``
(:func:`rdprune.models.build` documents each); :func:`check` validates a spec before anything is
built, :func:`slug` names its checkpoints.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import re
from pathlib import Path

from torch import nn

SPECS = ("torchvision:NAME", "timm:NAME", "hf:CONFIG_DIR_OR_JSON", "path/to/file.py:factory")


def _split_file_spec(spec: str):
    path, _, factory = spec.rpartition(":")
    return (Path(path), factory) if path.endswith(".py") and factory.isidentifier() else None


def check(spec: str, zoo=()) -> None:
    """ValueError unless ``spec`` is one of the ``zoo`` names or a buildable spec (module doc);
    nothing built."""
    if not isinstance(spec, str):
        raise ValueError(f"a model is a zoo name or a spec, got {spec!r}")
    kind, _, name = spec.partition(":")
    if spec in zoo:
        return
    if kind == "torchvision" and name:
        import torchvision.models as tvm
        if name not in tvm.list_models(module=tvm):
            raise ValueError(f"torchvision has no classification model {name!r}; see "
                             "torchvision.models.list_models(module=torchvision.models)")
        return
    if kind == "timm" and name:
        try:
            import timm
        except ImportError as e:
            raise ValueError(f"{spec!r} needs timm: pip install 'rdprune[timm]' (or timm)") from e
        if not timm.is_model(name):
            raise ValueError(f"timm has no model {name!r}; see timm.list_models()")
        return
    if kind == "hf" and name:
        try:
            import transformers  # noqa: F401
        except ImportError as e:
            raise ValueError(f"{spec!r} needs transformers: pip install 'rdprune[hf]'") from e
        if not Path(name).exists():
            raise ValueError(f"{spec!r}: no config at {name} (a folder with config.json, or the "
                             "json file; nothing is downloaded)")
        return
    file_spec = _split_file_spec(spec)
    if file_spec:
        path, factory = file_spec
        if not path.is_file():
            raise ValueError(f"model file {path} does not exist (spec {spec!r})")
        return
    raise ValueError(f"unknown model {spec!r}; choose one of {', '.join(zoo)}, or give a "
                     f"spec: {', '.join(SPECS)}")


def slug(spec: str) -> str:
    """A file-name-safe name for ``spec`` (checkpoints, run folders); a file spec's name carries a
    hash of the file's contents, so an edited model file never loads an old checkpoint."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.rpartition("/")[2]).strip("_")
    h = hashlib.sha256(spec.encode())
    file_spec = _split_file_spec(spec)
    if file_spec and file_spec[0].is_file():
        h.update(file_spec[0].read_bytes())
    return f"{safe}-{h.hexdigest()[:8]}"


def build_spec(spec, num_classes, in_channels, image_size):
    check(spec)
    kind, _, name = spec.partition(":")
    if kind == "torchvision":
        import torchvision.models as tvm
        try:  # vision transformers need the image size
            model = tvm.get_model(name, weights=None, num_classes=num_classes,
                                  image_size=image_size)
        except TypeError:
            model = tvm.get_model(name, weights=None, num_classes=num_classes)
        if in_channels != 3:
            reinput(model, in_channels)
        return model
    if kind == "hf":  # an image classifier from a local config, random weights
        import transformers as T
        cfg = T.AutoConfig.from_pretrained(name, local_files_only=True)
        for key, value in dict(num_labels=num_classes, num_channels=in_channels,
                               image_size=image_size).items():
            if hasattr(cfg, key) or key == "num_labels":
                setattr(cfg, key, value)
        try:
            return T.AutoModelForImageClassification.from_config(cfg)
        except ValueError as e:
            raise ValueError(f"{spec}: {type(cfg).__name__} is not an image classifier the CLI's "
                             "image data sets can feed; use the Python API for other models") from e
    if kind == "timm":
        import timm
        kw = dict(pretrained=False, num_classes=num_classes, in_chans=in_channels)
        try:  # vision transformers need the image size, CNNs refuse the keyword
            return timm.create_model(name, img_size=image_size, **kw)
        except TypeError:
            return timm.create_model(name, **kw)
    path, factory = _split_file_spec(spec)
    mod_spec = importlib.util.spec_from_file_location(f"rdprune_user_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # the user's file, said with its name
        raise ValueError(f"could not import {path} ({type(e).__name__}: {e})") from e
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ValueError(f"{path} has no function {factory!r}")
    offered = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    params = inspect.signature(fn).parameters
    open_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    model = fn(**{k: v for k, v in offered.items() if open_kw or k in params})
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec}: {factory}() returned {type(model).__name__}, not an nn.Module")
    return model


def reinput(model, in_channels):
    """Re-make the first conv for ``in_channels`` input channels (random weights)."""
    first = first_conv(model)
    owner, attr = parent(model, first)
    old = getattr(owner, attr)
    setattr(owner, attr, nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride,
                                    old.padding, bias=old.bias is not None))


def first_conv(model):
    return next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def parent(model, dotted):
    *path, attr = dotted.split(".")
    parent = model
    for p in path:
        parent = getattr(parent, p)
    return parent, attr

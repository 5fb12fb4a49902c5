"""``rp.train``: cached pre-trained checkpoints of the zoo, plus the generic loops of
:mod:`rdprune.core.loops` (``fit``, ``fine_tune``, ``evaluate``, ``recalibrate_bn``) under one name.
Recipes (how long and how to train) live in :mod:`rdprune.lab.presets`."""
from __future__ import annotations

import io
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..core import masks as M
from ..core.loops import device, evaluate, fine_tune, fit, recalibrate_bn  # noqa: F401 - rp.train API
from ..util import atomic_write_bytes, state_hash  # rp.train API
from . import data as D
from . import models
from .presets import RECIPES, Recipe, get_recipe  # noqa: F401 - rp.train API


# ----------------------------------------------------------------------------- checkpoints
def save(model: nn.Module, path: Path, meta: dict) -> None:
    buf = io.BytesIO()
    torch.save({"state": model.state_dict(), "meta": meta, "hash": state_hash(model)}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def checkpoint_path(model_name, dataset, recipe_name, seed) -> Path:
    return (D.data_dir() / "checkpoints"
            / f"{models.slug(model_name)}-{D.slug(dataset)}-{recipe_name}-s{seed}.pt")


def load_weights(model: nn.Module, path) -> nn.Module:
    """Load a user's checkpoint into ``model``: a state dict, or a dict holding one under
    ``state``, ``state_dict`` or ``model`` (masks of a pruned checkpoint included). A file that
    does not fit the model is a ValueError that names the first mismatches."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--weights {path}: no such file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to read means corrupt
        raise ValueError(f"--weights {path} could not be read ({type(e).__name__}: {e})") from e
    for key in ("state", "state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
            break
    if not isinstance(blob, dict) or not all(torch.is_tensor(v) for v in blob.values()):
        raise ValueError(f"--weights {path} holds no state dict of tensors")
    try:
        M.load_state(model, blob)
    except RuntimeError as e:
        first = "; ".join(str(e).splitlines()[1:4]).strip()
        raise ValueError(f"--weights {path} does not fit {getattr(model, 'arch', 'the model')} "
                         f"({first}); build the model it was saved from") from e
    return model


def _load_checked(model, path, meta) -> str | None:
    """Load ``path`` into ``model``; return None on success or the reason it is unusable."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("meta") != meta:
            return f"it was made with different settings ({blob.get('meta')} != {meta})"
        M.load_state(model, blob["state"])
        if state_hash(model) != blob["hash"]:
            return "its contents do not match the stored hash"
        return None
    except Exception as e:
        return f"it could not be read ({type(e).__name__}: {e})"


def pretrained(model_name: str = "resnet20", dataset: str = "fashion_mnist",
               recipe: str = "quick", seed: int = 0, *, dev="auto", progress: bool = True,
               verbose: bool = True, weights: str | Path | None = None) -> nn.Module:
    """A trained dense model, cached under ``data/checkpoints`` keyed by model, dataset, recipe and
    seed. A corrupt or mismatched checkpoint is reported and retrained, never silently loaded.
    ``model_name`` is a zoo name or a spec (:func:`rdprune.models.build`); with ``weights`` (a
    user's checkpoint, :func:`load_weights`) nothing is trained."""
    r = get_recipe(recipe, model_name)
    meta = {"model": model_name, "dataset": dataset, "recipe": asdict(r), "seed": seed}
    inf = D.info(dataset)
    models.check_data(model_name, inf)
    torch.manual_seed(seed)
    model = models.build(model_name, inf.num_classes, inf.in_channels, image_size=inf.image_size)
    if weights is not None:
        if verbose:
            print(f"using weights {weights}")
        return load_weights(model, weights).to(device(dev)).eval()
    path = checkpoint_path(model_name, dataset, recipe, seed)
    if path.exists():
        problem = _load_checked(model, path, meta)
        if problem is None:
            if verbose:
                print(f"using cached checkpoint {path}")
            return model.to(device(dev)).eval()
        warnings.warn(f"checkpoint {path} is unusable: {problem}; retraining")
        torch.manual_seed(seed)
        model = models.build(model_name, inf.num_classes, inf.in_channels,
                             image_size=inf.image_size)
    train_loader, _ = D.loaders(dataset, r.batch_size, seed=seed)
    steps = r.steps or int(round(r.epochs * len(train_loader)))
    if verbose:
        print(f"training {model_name} on {dataset} ({recipe} recipe, {steps} steps, seed {seed})")
    fit(model, train_loader, steps, lr=r.lr, weight_decay=r.weight_decay, schedule=r.schedule,
        dev=dev, progress=progress, desc=f"train {model_name}")
    save(model, path, meta)
    return model

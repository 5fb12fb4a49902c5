"""Training, evaluation and mask-preserving fine-tuning, with cached pre-trained checkpoints.

Recipes are named presets (:data:`RECIPES`): ``quick`` finishes in minutes on a 2-core CPU
(ResNet-20 reaches ≥ 90 % on Fashion-MNIST), ``smoke`` in seconds (tests, a first look), ``paper`` is the RD authors' CIFAR recipe (AdamW
lr 3e-4, batch 100, 50k steps for ResNets, 20k VGG-16, 80k DenseNet; fine-tune 80k/40k/60k).
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data as D
from . import masks as M
from . import models


@dataclass(frozen=True)
class Recipe:
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    epochs: float = 2.0           # dense training length (epochs, fractional allowed)
    steps: int | None = None      # overrides epochs when set
    schedule: str = "cosine"      # "cosine" | "constant"
    finetune_steps: int = 300     # per pruning round
    finetune_lr: float = 3e-4


RECIPES = {
    "quick": Recipe(),
    "smoke": Recipe(epochs=0.1),  # seconds: for tests and a first look, not for results
    "paper": Recipe(lr=3e-4, batch_size=100, steps=50_000, finetune_steps=80_000,
                    finetune_lr=3e-4, schedule="cosine"),
}
_PAPER_STEPS = {"vgg16": (20_000, 40_000), "densenet121": (80_000, 60_000)}


def get_recipe(name: str | Recipe, model_name: str | None = None) -> Recipe:
    """Look up a named recipe (the ``paper`` one has per-architecture step counts)."""
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    r = RECIPES[name]
    if name == "paper" and model_name in _PAPER_STEPS:
        steps, ft = _PAPER_STEPS[model_name]
        r = replace(r, steps=steps, finetune_steps=ft)
    return r


def device(spec: str | torch.device = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def _batches(loader, steps):
    """Cycle ``loader`` for exactly ``steps`` batches."""
    done = 0
    while True:
        for batch in loader:
            if done == steps:
                return
            yield batch
            done += 1


def fit(model: nn.Module, loader, steps: int, *, lr: float = 1e-3, weight_decay: float = 0.01,
        schedule: str = "cosine", teacher: nn.Module | None = None, temperature: float = 2.0,
        dev="auto", progress: bool = True, desc: str = "train") -> nn.Module:
    """AdamW for ``steps`` batches. Masked weights stay exactly zero after every step. With a
    ``teacher``, the loss adds KL distillation (temperature ``temperature``)."""
    dev = device(dev)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
             if schedule == "cosine" else None)
    bar = tqdm(_batches(loader, steps), total=steps, desc=desc, disable=not progress, leave=False)
    for x, y in bar:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        out = model(x)
        loss = F.cross_entropy(out, y)
        if teacher is not None:
            with torch.no_grad():
                t = teacher(x)
            loss = loss + temperature ** 2 * F.kl_div(
                F.log_softmax(out / temperature, 1), F.softmax(t / temperature, 1),
                reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        M.enforce(model)
        if sched:
            sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()


@torch.inference_mode()
def evaluate(model: nn.Module, loader, dev=None) -> dict[str, float]:
    """Top-1 accuracy (fraction) and mean cross-entropy over ``loader``."""
    dev = next(model.parameters()).device if dev is None else device(dev)
    was = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for x, y in loader:
        x, y = x.to(dev), y.to(dev)
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
    model.train(was)
    return {"top1": correct / n, "loss": loss / n}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on inputs ``x``, in place: the equally
    weighted average of the statistics of each ``batch`` images (one batch: exactly those of
    ``x``); no weight changes. Pruning shifts
    the activations each BN normalises, so a pruned network with the dense network's statistics
    can collapse although its weights are fine. Returns the model in eval mode."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or len(x) == 0:
        raise ValueError("recalibrate_bn needs a non-empty batch of inputs (N, ...)")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the batches
    model.train()
    dev = next(model.parameters()).device
    try:
        for xb in torch.split(x, batch):
            model(xb.to(dev))
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    return model


def fine_tune(model, loader, steps: int, lr: float = 3e-4, **kw) -> nn.Module:
    """Mask-preserving fine-tune (constant learning rate, as the RD authors)."""
    kw.setdefault("desc", "fine-tune")
    return fit(model, loader, steps, lr=lr, schedule="constant", **kw)


# ----------------------------------------------------------------------------- checkpoints
def state_hash(model: nn.Module) -> str:
    """Hash of every tensor in the state dict (weights, buffers, masks)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(model: nn.Module, path: Path, meta: dict) -> None:
    buf = io.BytesIO()
    torch.save({"state": model.state_dict(), "meta": meta, "hash": state_hash(model)}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def checkpoint_path(model_name, dataset, recipe_name, seed) -> Path:
    return D.data_dir() / "checkpoints" / f"{model_name}-{dataset}-{recipe_name}-s{seed}.pt"


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
    except Exception as e:  # noqa: BLE001 - any failure to read means corrupt
        return f"it could not be read ({type(e).__name__}: {e})"


def pretrained(model_name: str = "resnet20", dataset: str = "fashion_mnist",
               recipe: str = "quick", seed: int = 0, *, dev="auto", progress: bool = True,
               verbose: bool = True) -> nn.Module:
    """A trained dense model, cached under ``data/checkpoints`` keyed by model, dataset, recipe and
    seed. A corrupt or mismatched checkpoint is reported and retrained, never silently loaded."""
    r = get_recipe(recipe, model_name)
    meta = {"model": model_name, "dataset": dataset, "recipe": asdict(r), "seed": seed}
    inf = D.info(dataset)
    torch.manual_seed(seed)
    model = models.build(model_name, inf.num_classes, inf.in_channels, image_size=inf.image_size)
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

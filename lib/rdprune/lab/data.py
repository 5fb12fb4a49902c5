"""Datasets, loaders and calibration sets.

Fashion-MNIST is the default and works offline: it is read from ``data/`` if the IDX files are
there, else from Debian's ``dataset-fashion-mnist`` package, else torchvision downloads it into
``data/``. Small datasets are held as normalised tensors in memory (no per-sample PIL work), so a
loader is a tensor shuffle and the calibration set is an exact, reproducible slice.

Calibration sets are always taken from the *training* split with the *test-time* transform (the RD
authors' CIFAR code accidentally kept the random crop/flip there, so its distortion is not zero at
amount 0; ours is).

A folder of your own images is the data set ``imagefolder:/path``: ``/path/train/<class>/*`` and
``/path/val/<class>/*`` (torchvision ``ImageFolder`` layout), read with ImageNet's transforms
(test and calibration: resize 256, centre crop 224, ImageNet mean/std; training: random resized
crop 224 and flip) as RGB, so torchvision and timm models see what they were built for.

Text: ``pystdlib`` is the Python standard library's source as bytes (:mod:`.text`), windows of
128 tokens; its :class:`Info` has ``text=True``, the vocabulary (256) as ``num_classes`` and the
window as ``image_size``; loaders yield (tokens, next tokens) and calibration sets are windows.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.loops import TensorLoader
from ..util import data_dir
from . import text as TX

DATASETS = ("fashion_mnist", "cifar10", "imagenet", "synthetic", TX.NAME)
IN_MEMORY = ("fashion_mnist", "cifar10", TX.NAME)  # held as tensors: held-out splits are exact slices
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_STATS = {  # per-channel mean, std of the training split
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class Info:
    """What a model needs to know about a dataset (for text: the vocabulary as ``num_classes``,
    no channels, the window length in tokens as ``image_size``)."""
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    text: bool = False


FOLDER = "imagefolder:"


def _folder(name: str, imagenet_root: str | None = None) -> str | None:
    """The image folder of ``imagefolder:/path`` (or ImageNet's root), None for the others."""
    return name[len(FOLDER):] if name.startswith(FOLDER) else imagenet_root


def slug(name: str) -> str:
    """A file-name-safe data set name (an image folder's name plus a hash of its path)."""
    if name == TX.NAME:
        return TX.slug()
    if not name.startswith(FOLDER):
        return name
    root = Path(_folder(name)).resolve()
    return f"imagefolder_{root.name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"


def info(name: str) -> Info:
    _check(name)
    if name.startswith(FOLDER):
        classes = sorted(p.name for p in (Path(_folder(name)) / "train").iterdir() if p.is_dir())
        return Info(name, len(classes), 3, 224)
    return {
        "fashion_mnist": Info(name, 10, 1, 28),
        "cifar10": Info(name, 10, 3, 32),
        "imagenet": Info(name, 1000, 3, 224),
        "synthetic": Info(name, 10, 1, 28),
        TX.NAME: Info(name, TX.VOCAB, 0, TX.WINDOW, text=True),
    }[name]


def _check(name: str) -> None:
    if isinstance(name, str) and name.startswith(FOLDER):
        root = Path(_folder(name))
        classes = {}
        for split in ("train", "val"):
            if not (root / split).is_dir() or not any(p.is_dir() for p in (root / split).iterdir()):
                raise ValueError(f"{name}: {root / split} is not a folder of class folders; an "
                                 "image folder holds train/<class>/* and val/<class>/*")
            classes[split] = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
        if classes["train"] != classes["val"]:
            odd = sorted(set(classes["train"]) ^ set(classes["val"]))
            raise ValueError(f"{name}: train/ and val/ hold different class folders ({odd[:5]}); "
                             "labels would not match")
        return
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or "
                         f"{FOLDER}/path (a folder with train/ and val/ ImageFolders)")


# ----------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated or corrupt: expected {dims}, got {arr.size} bytes; "
                         "delete it and run again")
    return arr.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def local_fashion_mnist() -> Path | None:
    """The first folder holding all four IDX files: data/, torchvision's layout in data/, Debian;
    None when there is none (nothing is downloaded)."""
    root = data_dir()
    stems = [s for pair in _FMNIST_FILES.values() for s in pair]
    for folder in (root / "fashion_mnist", root / "FashionMNIST" / "raw", DEBIAN_FMNIST):
        if all(_find_idx(folder, s) for s in stems):
            return folder
    return None


def _fashion_mnist_folder() -> Path:
    """:func:`local_fashion_mnist`, else torchvision's download into data/."""
    folder = local_fashion_mnist()
    if folder is not None:
        return folder
    root = data_dir()
    try:  # last resort: torchvision's download (needs the internet)
        from torchvision.datasets import FashionMNIST
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
        return root / "FashionMNIST" / "raw"
    except Exception as e:  # any failure means "not available offline"
        raise FileNotFoundError(
            "Fashion-MNIST is not available and could not be downloaded "
            f"({type(e).__name__}: {e}). Fix it one of three ways:\n"
            f"  1. put the four IDX files (*-ubyte or *-ubyte.gz) in {root / 'fashion_mnist'};\n"
            "  2. on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
            f"(files in {DEBIAN_FMNIST});\n"
            "  3. connect to the internet once so torchvision can download it into data/."
        ) from e


_TENSOR_CACHE: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def tensors(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised images N×C×H×W float32, labels int64) of a small dataset, held in memory."""
    _check(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    key = (name, split)
    if name == TX.NAME:  # token ids: nothing to normalise
        if key not in _TENSOR_CACHE:
            _TENSOR_CACHE[key] = TX.windows(split)
        return _TENSOR_CACHE[key]
    if key not in _TENSOR_CACHE:
        if name == "fashion_mnist":
            folder = _fashion_mnist_folder()
            img_stem, lab_stem = _FMNIST_FILES[split]
            x = torch.from_numpy(_read_idx(_find_idx(folder, img_stem)).copy()).unsqueeze(1)
            y = torch.from_numpy(_read_idx(_find_idx(folder, lab_stem)).astype(np.int64))
        elif name == "cifar10":
            from torchvision.datasets import CIFAR10
            try:
                ds = CIFAR10(str(data_dir()), train=split == "train", download=True)
            except Exception as e:
                raise FileNotFoundError(
                    f"CIFAR-10 is not in {data_dir()} and could not be downloaded ({e}); put "
                    "torchvision's cifar-10-batches-py folder there or connect once.") from e
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            y = torch.tensor(ds.targets, dtype=torch.int64)
        else:
            raise ValueError(f"{name!r} is not held in memory; use loaders({name!r}, ...)")
        mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in _STATS[name])
        _TENSOR_CACHE[key] = ((x.float() / 255 - mean) / std, y)
    return _TENSOR_CACHE[key]


# ----------------------------------------------------------------------------- loaders
def loaders(name: str = "fashion_mnist", batch_size: int = 128, *, seed: int = 0,
            subset: int | None = None, imagenet_root: str | None = None):
    """(train_loader, test_loader). ``subset`` keeps the first n test and an even-stride n*6
    training images, for quick experiments. ImageNet needs ``imagenet_root`` with train/ and val/
    ImageFolders."""
    _check(name)
    if name == "imagenet" or name.startswith(FOLDER):
        return _imagenet_loaders(_folder(name, imagenet_root), batch_size)
    if name == "synthetic":
        raise ValueError("'synthetic' has no labels; use calibration('synthetic', ...) instead")
    xtr, ytr = tensors(name, "train")
    xte, yte = tensors(name, "test")
    if subset:
        stride = max(1, len(xtr) // (6 * subset))
        xtr, ytr = xtr[::stride][: 6 * subset], ytr[::stride][: 6 * subset]
        # images: the first n; text windows at even strides (a prefix would be a few files)
        step = max(1, len(xte) // subset) if name == TX.NAME else 1
        xte, yte = xte[::step][:subset], yte[::step][:subset]
    train = TensorLoader(xtr, ytr, batch_size, shuffle=True, augment=name == "cifar10", seed=seed)
    test = TensorLoader(xte, yte, max(batch_size, 512), shuffle=False)
    return train, test


def _imagenet_loaders(root, batch_size):
    if not root or not Path(root).is_dir():
        raise FileNotFoundError("ImageNet needs imagenet_root=<folder with train/ and val/ "
                                "ImageFolders>; torchvision cannot download it.")
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T
    norm = T.Normalize(*_STATS["imagenet"])
    tr = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    te = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
    train = datasets.ImageFolder(str(Path(root) / "train"), tr)
    val = datasets.ImageFolder(str(Path(root) / "val"), te)
    workers = min(8, os.cpu_count() or 1)
    return (DataLoader(train, batch_size, shuffle=True, num_workers=workers),
            DataLoader(val, batch_size, shuffle=False, num_workers=workers))


def calibration(name: str = "fashion_mnist", n: int = 1024, seed: int = 0, *,
                shape: tuple[int, ...] | None = None, imagenet_root: str | None = None
                ) -> torch.Tensor:
    """A fixed calibration tensor of ``n`` training inputs with the test-time transform.

    Images are taken at even strides through the training split, starting at an offset drawn
    from ``seed`` (the authors' protocol), so the same arguments give the same tensor bit for bit.
    ``synthetic`` gives i.i.d. N(0, 1) inputs (zero-data mode) of ``shape`` (default 1×28×28);
    ``pystdlib`` gives ``n`` windows of training text (:func:`rdprune.lab.text.calibration`).
    """
    _check(name)
    if n <= 0:
        raise ValueError(f"calibration size must be positive, got n={n}")
    gen = torch.Generator().manual_seed(seed)
    if name == "synthetic":
        shape = tuple(shape or (1, 28, 28))
        return torch.randn((n, *shape), generator=gen)
    if name == "imagenet" or name.startswith(FOLDER):
        return _imagenet_calibration(_folder(name, imagenet_root), n, gen)
    if name == TX.NAME:
        return TX.calibration(n, seed)
    x, _ = tensors(name, "train")
    if n > len(x):
        raise ValueError(f"asked for {n} calibration images but {name} has {len(x)}")
    stride = len(x) // n
    start = int(torch.randint(0, stride, (1,), generator=gen))
    return x[start::stride][:n].clone()


def _imagenet_calibration(root, n, gen):
    if not root:
        raise FileNotFoundError("ImageNet calibration needs imagenet_root=<folder with train/>")
    from torchvision import datasets
    from torchvision import transforms as T
    te = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(*_STATS["imagenet"])])
    ds = datasets.ImageFolder(str(Path(root) / "train"), te)
    if n > len(ds):
        raise ValueError(f"asked for {n} calibration images but {root}/train has {len(ds)}")
    stride = len(ds) // n
    start = int(torch.randint(0, stride, (1,), generator=gen))
    return torch.stack([ds[start + i * stride][0] for i in range(n)])


def selection_split(dataset: str = "fashion_mnist", n: int = 1024, *, batch_size: int = 128,
                    seed: int = 0, train_size: int | None = None, labels: bool = False):
    """(n held-out TRAINING inputs, e.g. HBGS's selection set, and a shuffled loader over the rest
    of the training split for fine-tuning, optionally only its first ``train_size`` images).
    With ``labels`` the first item is ``(inputs, labels)``: a validation set that fine-tuning
    never sees (:func:`rdprune.evaluate_pruned`'s ``val``)."""
    x, y = tensors(dataset, "train")
    if not 0 < n < len(x):
        raise ValueError(f"n must lie in (0, {len(x)}), got {n}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    rest = perm[n:] if train_size is None else perm[n:n + train_size]
    held = (x[perm[:n]].clone(), y[perm[:n]].clone()) if labels else x[perm[:n]].clone()
    return held, TensorLoader(x[rest], y[rest], batch_size, shuffle=True,
                              augment=dataset == "cifar10", seed=seed)

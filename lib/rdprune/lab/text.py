"""A byte-level text corpus that every machine has offline: the Python standard library's own
source files (the data set ``pystdlib``).

- **Corpus**: every ``*.py`` under ``sysconfig``'s ``stdlib`` folder, except test suites
  (``test``, ``tests``, ``idle_test``) and installed packages (``site-packages``), in sorted
  order, each file's bytes followed by a 0 byte (the end-of-document token). Tokens are bytes:
  a vocabulary of 256 and no tokenizer to download.
- **Split by file**: a file is held out when the SHA-256 of its path relative to the stdlib
  folder is 0 modulo 10 (about a tenth of the files and bytes), so the split depends only on the
  files present, and no held-out *file* was seen in training (lines that repeat across files,
  licence headers and common idioms, are in both, as in any corpus split by document).
- **Windows**: training and test samples are non-overlapping windows of :data:`WINDOW` tokens
  (input ``x``) with the next token of each position (label ``y``); calibration windows are taken
  at even strides through the training text from an offset drawn from the seed, like the images.

The corpus differs between Python versions, patch releases and distributions (Debian ships
some modules apart), so the data set's slug, under which checkpoints are cached, names the
version and a hash of the corpus files' relative paths and sizes: ``pystdlib-py3.11-1a2b3c4d``.
"""
from __future__ import annotations

import functools
import hashlib
import sys
import sysconfig
from pathlib import Path

import numpy as np
import torch

NAME = "pystdlib"
VOCAB = 256
WINDOW = 128  # tokens per sample: lm_tiny's context
_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_CACHE: dict[str, np.ndarray] = {}


def root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.cache
def slug() -> str:
    """``pystdlib-py<major>.<minor>-<hash of every corpus file's relative path and size>``."""
    base = root()
    listing = "\n".join(f"{p.relative_to(base).as_posix()} {p.stat().st_size}"
                         for split in ("train", "test") for p in files(split))
    digest = hashlib.sha256(listing.encode()).hexdigest()[:8]
    return f"{NAME}-py{sys.version_info.major}.{sys.version_info.minor}-{digest}"


def files(split: str) -> list[Path]:
    """The corpus files of ``split`` ("train" or "test"), sorted by their relative path."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    return list(_split()[split == "test"])


@functools.cache
def _split() -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    base = root()
    if not base.is_dir():
        raise ValueError(f"{NAME}: the Python standard library is not at {base}; this data set "
                         "reads its source files")
    out: tuple[list, list] = ([], [])
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base)
        if _SKIP & set(rel.parts):
            continue
        held = int(hashlib.sha256(rel.as_posix().encode()).hexdigest(), 16) % 10 == 0
        out[held].append(path)
    return tuple(out[0]), tuple(out[1])


def text(split: str) -> np.ndarray:
    """The split's bytes as one uint8 array (files in order, each ended by a 0 byte)."""
    if split not in _CACHE:
        parts = []
        for path in files(split):
            parts += [path.read_bytes(), b"\0"]
        _CACHE[split] = np.frombuffer(b"".join(parts), dtype=np.uint8)
    return _CACHE[split]


def windows(split: str, window: int = WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): every non-overlapping window of ``window`` tokens of the split and, for each
    position, the token that follows (int64, N × window)."""
    t = torch.from_numpy(text(split).astype(np.int64))
    n = (len(t) - 1) // window
    x = t[: n * window].view(n, window)
    y = t[1: n * window + 1].view(n, window)
    return x, y


def calibration(n: int, seed: int = 0, window: int = WINDOW) -> torch.Tensor:
    """``n`` windows of training text (int64, n × window) at even strides from an offset drawn
    from ``seed``: the same arguments give the same tensor on the same Python."""
    t = text("train")
    stride = (len(t) - window) // n
    if stride < 1:
        raise ValueError(f"asked for {n} calibration windows of {window} tokens, but the "
                         f"training text has {len(t)} tokens")
    start = int(torch.randint(0, stride, (1,), generator=torch.Generator().manual_seed(seed)))
    idx = start + stride * np.arange(n)[:, None] + np.arange(window)[None, :]
    return torch.from_numpy(t[idx].astype(np.int64))

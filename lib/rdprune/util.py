"""Helpers every floor may use (this module imports nothing from rdprune): content hashes, atomic
writes, the cache folder, and the "choose one of" / target checks behind every clear error."""
from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from torch import nn

REPO = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """Where datasets, checkpoints and curves are cached: ``$RDPRUNE_DATA`` or ``<repo>/data``."""
    env = os.environ.get("RDPRUNE_DATA")
    root = Path(env) if env else REPO / "data"
    root.mkdir(parents=True, exist_ok=True)
    return root


def state_hash(model: nn.Module) -> str:
    """Hash of every tensor in the state dict (weights, buffers, masks)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def atomic_write_bytes(path: Path, payload: bytes, mode: int = 0o644) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a
    file; the result gets ordinary permissions (``mode``), not mkstemp's owner-only ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class NotApplicable(ValueError):
    """A method that cannot prune this network at all (HBGS on a network of depthwise and 1x1
    convs, JointPruning on a family outside its space). ``reason``: a short phrase for a table
    cell; the message says what to use instead. A comparison records it and goes on."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


LR_SCHEDULES = ("constant", "cosine")  # fit / fine_tune: a fixed rate, or cosine decay to zero


def check_choice(kind: str, value, valid: Iterable) -> None:
    """ValueError naming the valid choices unless ``value`` is one of them."""
    valid = list(valid)
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(map(str, valid))}")


def check_target(target, what: str = "weights", low_open: bool = False) -> float:
    """``target`` as a float in [0, 1) (or (0, 1) with ``low_open``): the fraction of ``what`` to
    remove. ValueError naming the valid range otherwise."""
    ok = isinstance(target, (int, float)) and not isinstance(target, bool) and \
        not math.isnan(float(target)) and (0.0 < float(target) if low_open else
                                           0.0 <= float(target)) and float(target) < 1.0
    if not ok:
        rng = "(0, 1)" if low_open else "[0, 1)"
        raise ValueError(f"target is the fraction of {what} to remove and must lie in {rng} "
                         f"(e.g. 0.9 removes 90 %), got {target!r}")
    return float(target)

"""The one place that measures output distortion, and its registry.

A distortion is a *per-sample* error between the dense logits ``y_ref`` and the pruned ones ``y``
(both ``(N, ...)``, returning ``(N,)``) plus a *reduction* over samples, ``"mean"`` or ``"max"``:

- ``mse``: per-sample mean of ``(y - y_ref)²`` over the output dims, mean over samples (the
  library's default, the paper's);
- ``worst_case``: the same per-sample error, max over samples (the RD authors' README);
- ``kl``: per-sample KL(p_dense ‖ p_pruned) of the softmax over the last axis, averaged over
  tokens, mean over samples (for language models and classifiers alike).

``register_distortion("kl", fn, reduce="mean")`` adds another by name; every caller (RD curves,
refinement, RD-filter, the CLI) then accepts it. Curves are cached under the measure's name and the
function's qualified name, so registering a different function under an old name recomputes.

:class:`Reducer` accumulates per-sample errors over calibration chunks, :func:`per_sample` handles
``copies`` perturbations stacked along the batch axis (the fast path's batching), :func:`measure`
runs a network against given reference logits, and :func:`channels_last` is the CPU speed-up both
curve paths share.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..util import check_choice
from . import batch as B


class Measure(NamedTuple):
    per_sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    reduce: str


def squared_error(y_ref: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of ``(y - y_ref)²`` over every output dimension."""
    return (y - y_ref).pow(2).flatten(1).mean(1)


def kl_divergence(y_ref: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p_dense ‖ p_pruned) of the softmax over the last axis (classes, or a
    language model's vocabulary), averaged over any other axes (tokens)."""
    log_ref = torch.log_softmax(y_ref.double(), -1)
    log_y = torch.log_softmax(y.double(), -1)
    kl = (log_ref.exp() * (log_ref - log_y)).sum(-1)
    return kl.reshape(len(kl), -1).mean(1).clamp_min(0.0)


_MEASURES: dict[str, Measure] = {"mse": Measure(squared_error, "mean"),
                                 "worst_case": Measure(squared_error, "max"),
                                 "kl": Measure(kl_divergence, "mean")}
REDUCTIONS = ("mean", "max")


def register_distortion(name: str, per_sample: Callable, reduce: str = "mean") -> None:
    """Make ``name`` a distortion everywhere: ``per_sample(y_ref, y) -> (N,)`` errors of the pruned
    outputs ``y`` against the dense ones ``y_ref``, reduced over samples by ``reduce``."""
    if not isinstance(name, str) or not name:
        raise ValueError("a distortion needs a non-empty name")
    if not callable(per_sample):
        raise ValueError(f"per_sample for {name!r} must be callable (y_ref, y) -> (N,) errors")
    check_choice("reduction", reduce, REDUCTIONS)
    _MEASURES[name] = Measure(per_sample, reduce)


def unregister_distortion(name: str) -> None:
    """Remove ``name`` from the registry (ValueError if it is not registered)."""
    check(name)
    del _MEASURES[name]


def names() -> list[str]:
    """Every registered distortion."""
    return list(_MEASURES)


def check(kind: str) -> Measure:
    check_choice("distortion", kind, _MEASURES)
    return _MEASURES[kind]


def identity(kind: str) -> list[str]:
    """What a cache key needs to know of a measure: its name, function and reduction."""
    m = check(kind)
    fn = m.per_sample
    code = getattr(fn, "__code__", None)  # two lambdas share a qualified name, not their code
    body = hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:12] \
        if code is not None else ""
    return [kind, f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}",
            body, m.reduce]


_OUTPUT: contextvars.ContextVar = contextvars.ContextVar("rdprune_output", default=None)


@contextlib.contextmanager
def reading(output):
    """Inside: :func:`output_tensor` picks ``output`` from every model output: a key or index
    (``"logits"``, ``0``), an attribute name, or a callable ``output(y) -> tensor``; ``None``
    keeps the default rule. ``rd.curves(..., output=)`` and ``distortion(..., output=)`` use it."""
    token = _OUTPUT.set(output)
    try:
        yield
    finally:
        _OUTPUT.reset(token)


def output_tensor(y) -> torch.Tensor:
    """What distortion compares in a model's output: what :func:`reading` asks for, else the
    tensor itself, a ``.logits`` field (Hugging Face's ``ModelOutput``) or ``"logits"`` key, else
    the first tensor of a tuple or list; a ValueError when there is none."""
    pick = _OUTPUT.get()
    if pick is not None:
        try:
            if callable(pick):
                got = pick(y)
            elif hasattr(y, "__getitem__") and not isinstance(y, torch.Tensor):
                got = y[pick]  # a key of a dict or ModelOutput, an index of a tuple
            else:
                got = getattr(y, pick)
        except (KeyError, IndexError, AttributeError, TypeError) as e:
            raise ValueError(f"output={pick!r} does not pick anything from the model's output "
                             f"({type(y).__name__})") from e
        if not isinstance(got, torch.Tensor):
            raise ValueError(f"output={pick!r} gives {type(got).__name__}, not a tensor")
        return got
    if isinstance(y, torch.Tensor):
        return y
    logits = y.get("logits") if isinstance(y, dict) else getattr(y, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(y, (tuple, list)) and y and isinstance(y[0], torch.Tensor):
        return y[0]
    raise ValueError(f"the model's output ({type(y).__name__}) has no tensor to compare: return "
                     "a tensor, a tuple whose first item is one, or an object with .logits")


def per_sample(kind: str, y_ref: torch.Tensor, y: torch.Tensor,
               copies: int | None = None) -> torch.Tensor:
    """``(copies, N)`` float64 errors of ``y`` (``copies`` batches of ``N`` stacked along the batch
    axis) against ``y_ref`` (``N``); either may be any output :func:`output_tensor` reads.
    ``copies``, when given, must be what ``y`` holds (a RuntimeError otherwise: the stacking
    went wrong and the caller runs one batch at a time)."""
    y_ref, y = output_tensor(y_ref), output_tensor(y)
    n = len(y_ref)
    if copies is not None and len(y) != copies * n:
        raise RuntimeError(f"{copies} stacked batches of {n} gave {len(y)} outputs")
    copies = len(y) // n
    ref = y_ref if copies == 1 else y_ref.repeat(copies, *([1] * (y_ref.dim() - 1)))
    err = check(kind).per_sample(ref, y)
    if not isinstance(err, torch.Tensor) or err.shape != (len(y),):
        raise ValueError(f"distortion {kind!r} must return one error per sample, shape "
                         f"({len(y)},); got {getattr(err, 'shape', type(err).__name__)}")
    return err.double().view(copies, n)


class Reducer:
    """Accumulates per-sample errors of ``m`` candidates over calibration chunks."""

    def __init__(self, kind: str, m: int):
        self.reduce, self.n = check(kind).reduce, 0
        self.acc = torch.zeros(m, dtype=torch.float64)

    def add(self, errors: torch.Tensor) -> None:  # (m, n_chunk)
        errors = errors.cpu()
        if self.reduce == "mean":
            self.acc += errors.sum(1)
        else:
            self.acc = torch.maximum(self.acc, errors.max(1).values)
        self.n += errors.shape[1]

    def value(self) -> np.ndarray:
        return (self.acc / self.n if self.reduce == "mean" else self.acc).numpy()


@torch.no_grad()
def measure(y_refs, pruned: nn.Module, chunks, kind: str = "mse") -> float:
    """Distortion of ``pruned`` on calibration ``chunks`` against the logits ``y_refs``."""
    pruned.eval()
    r = Reducer(kind, 1)
    for x, y in zip(chunks, y_refs):
        r.add(per_sample(kind, y, B.call(pruned, x)))
    return float(r.value()[0])


@torch.no_grad()
def distortion(model: nn.Module, pruned: nn.Module, calib: torch.Tensor, kind: str = "mse",
               batch: int = 256, output=None) -> float:
    """Measured output distortion of ``pruned`` against ``model`` on ``calib`` (``output``:
    what to compare, :func:`reading`)."""
    check(kind)
    model.eval()
    chunks = B.split(B.to(B.gather(calib), next(model.parameters()).device), batch)
    with reading(output):
        return measure([B.call(model, x) for x in chunks], pruned, chunks, kind)


def channels_last(model: nn.Module, x: torch.Tensor):
    """On the CPU, a channels-last copy of a conv net and its inputs (about 20 % faster per pass
    here; used by every curve path so that they stay comparable); anything else unchanged."""
    if not B.is_images(x) or x.device.type != "cpu" or \
            not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model, x
    return (copy.deepcopy(model).to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last))


def check_inputs(model: nn.Module, calib: torch.Tensor, grid: int, kind: str) -> None:
    """ValueError, before any work, for an unknown distortion, a calibration tensor we cannot
    read, a grid of fewer than 2 points or a model with NaN/infinite parameters."""
    check(kind)
    B.check(calib)
    B.check_tokens(model, calib)
    if int(grid) < 2:
        raise ValueError(f"grid must have at least 2 points (0 and 1), got {grid}")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise ValueError(f"model parameter {name!r} has NaN or infinite values")

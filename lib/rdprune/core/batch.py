"""Calibration batches, whatever a model takes: a tensor, a tuple of tensors (positional
inputs) or a mapping of tensors (keyword inputs, e.g. ``input_ids`` and ``attention_mask``, a
tokenizer's ``BatchEncoding``), the
batch axis first in every tensor; integer tensors (token ids) stay integer. A list or
``DataLoader`` of such batches is one batch, concatenated (:func:`gather`); give a labelled
loader's inputs, e.g. ``[x for x, _ in loader]``. Every core step (curves, distortion, FLOPs,
allocation) goes through these few functions, so it never needs to know which it got.
"""
from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

Batch = "torch.Tensor | tuple | dict"

# Batches that passed a check, so that one call (``rp.prune`` → curves → criterion → counting)
# reads a batch's values once: first tensor → {stamp: result}, where the stamp names every tensor
# and its in-place version counter, so a changed tensor is read again. Kept beside the user's
# objects, weakly, never on them; ``check_tokens`` keeps one such table per model.
_PASSED = WeakIdKeyDictionary()
_READABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stamp(items) -> tuple | None:
    try:
        return tuple((id(t), t._version) for t in items)
    except RuntimeError:  # an inference-mode tensor has no version counter: read it each time
        return None


def _passed(table, items) -> tuple:
    """(the items' stamp, what was remembered for them under it, else None)."""
    stamp = _stamp(items)
    return stamp, (None if stamp is None else table.get(items[0], {}).get(stamp))


def _remember(table, items, stamp, result):
    if stamp is not None:
        table.setdefault(items[0], {})[stamp] = result
    return result


def _tensors(b) -> list:
    if isinstance(b, torch.Tensor):
        return [b]
    if isinstance(b, Mapping):
        return [b[k] for k in sorted(b)]
    if isinstance(b, tuple):
        return list(b)
    return []


def check(b) -> int:
    """The batch size; a ValueError that says what to pass when ``b`` is no batch we can read
    (not a tensor, tuple or dict of tensors; empty; tensors disagreeing on the batch size;
    NaN or infinite values)."""
    items, stamp = _tensors(b), None
    if items and all(isinstance(t, torch.Tensor) for t in items):
        stamp, n = _passed(_PASSED, items)
        if n is not None:
            return n
    if not items or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in items):
        raise ValueError("calib must be a batch of inputs: a tensor (N, ...), a tuple of tensors "
                         "(positional inputs) or a dict of tensors (keyword inputs), batch axis "
                         f"first; got {type(b).__name__}. Use rdprune.data.calibration(...)")
    sizes = {len(t) for t in items}
    if len(sizes) != 1:
        raise ValueError(f"the tensors of the calibration batch disagree on the batch size "
                         f"({sorted(sizes)}); the first axis of every tensor is the batch axis")
    n = sizes.pop()
    if n == 0:
        raise ValueError("calib is empty: give a non-empty batch, at least one sample")
    if not _finite(items):
        raise ValueError("calibration inputs contain NaN or infinite values")
    return _remember(_PASSED, items, stamp, n)


def _finite(items) -> bool:
    return all(torch.isfinite(t).all() for t in items if t.is_floating_point())


def _ids(b):
    """The token-id tensor of a batch, if any: a bare integer tensor, a mapping's
    ``input_ids``, or a tuple's first item when it is integer."""
    if isinstance(b, Mapping):
        t = b.get("input_ids")
    elif isinstance(b, tuple):
        t = b[0] if b else None
    else:
        t = b
    if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.dtype in (
            torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        return t
    return None


def _vocabulary(model: nn.Module):
    """The input embedding's size: Hugging Face's ``get_input_embeddings()``, else
    ``config.vocab_size``, else None (the model says nothing we can trust)."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        emb = None
    if isinstance(emb, nn.Embedding):
        return emb.num_embeddings
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return size if isinstance(size, int) else None


def check_tokens(model: nn.Module, b) -> None:
    """ValueError, before any work, for inputs a language model cannot read: float inputs to a
    model whose input embedding takes token ids, token ids (a bare integer tensor, ``input_ids``
    or a tuple's first item) outside ``[0, vocabulary)``, or windows longer than its context
    (``config.n_positions`` / ``max_position_embeddings``). The vocabulary is Hugging Face's
    ``get_input_embeddings()`` or ``config.vocab_size``; a model that declares neither is not
    checked (its own error will come from inside). A batch that passed for ``model`` is not
    read again."""
    vocab = _vocabulary(model)
    if vocab is None:
        return
    items = _tensors(b)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        return  # not a batch: check() says so
    table = _READABLE.setdefault(model, WeakIdKeyDictionary())
    stamp, passed = _passed(table, items)
    if passed == vocab:
        return
    _read_tokens(model, b, vocab)
    _remember(table, items, stamp, vocab)


def _read_tokens(model: nn.Module, b, vocab: int) -> None:
    first = b.get("input_ids") if isinstance(b, Mapping) else (b[0] if isinstance(b, tuple) and b
                                                                else b)
    if isinstance(first, torch.Tensor) and first.is_floating_point() and \
            getattr(model, "main_input_name", "input_ids") == "input_ids":
        raise ValueError(f"{type(model).__name__} reads token ids (integers), but the "
                         f"calibration batch holds {first.dtype} values: pass token windows, "
                         "e.g. rdprune.data.calibration('pystdlib', n) for a byte model")
    ids = _ids(b)
    if ids is None:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"token ids run from {lo} to {hi}, but the model's vocabulary has "
                         f"{vocab} entries: encode the text with the model's own tokenizer")
    cfg = getattr(model, "config", None)
    context = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    if isinstance(context, int) and ids.shape[1] > context:
        raise ValueError(f"windows of {ids.shape[1]} tokens are longer than the model's context "
                         f"of {context}: cut the calibration text into windows of at most "
                         f"{context} tokens")


def gather(b):
    """A list or DataLoader of batches concatenated into one batch; anything else unchanged."""
    if isinstance(b, (torch.Tensor, tuple, Mapping)):
        return b
    if isinstance(b, torch.utils.data.DataLoader) or isinstance(b, list):
        parts = list(b)
        if not parts:
            raise ValueError("calib is an empty list of batches")
        first = parts[0]
        if isinstance(first, torch.Tensor):
            return torch.cat(parts)
        if isinstance(first, Mapping):
            return {k: torch.cat([p[k] for p in parts]) for k in first}
        if isinstance(first, (tuple, list)):
            return tuple(torch.cat([p[i] for p in parts]) for i in range(len(first)))
    return b


def size(b) -> int:
    return len(_tensors(b)[0])


def take(b, start: int, stop: int):
    """Samples ``start:stop`` of a batch."""
    if isinstance(b, torch.Tensor):
        return b[start:stop]
    if isinstance(b, Mapping):
        return {k: v[start:stop] for k, v in b.items()}
    return tuple(t[start:stop] for t in b)


def index(b, idx: torch.Tensor):
    """The samples ``idx`` of a batch."""
    if isinstance(b, torch.Tensor):
        return b[idx.to(b.device)]
    if isinstance(b, Mapping):
        return {k: v[idx.to(v.device)] for k, v in b.items()}
    return tuple(t[idx.to(t.device)] for t in b)


def split(b, n: int) -> list:
    """Chunks of at most ``n`` samples."""
    return [take(b, i, i + n) for i in range(0, size(b), n)]


def to(b, device, dtype=None):
    """On ``device``; floating tensors in ``dtype`` when given, integer ones left integer."""
    def move(t):
        return t.to(device, dtype) if dtype is not None and t.is_floating_point() else t.to(device)
    if isinstance(b, torch.Tensor):
        return move(b)
    if isinstance(b, Mapping):
        return {k: move(v) for k, v in b.items()}
    return tuple(move(t) for t in b)


def call(model: nn.Module, b):
    """``model`` applied to a batch: ``model(x)``, ``model(*x)`` or ``model(**x)``."""
    if isinstance(b, Mapping):
        return model(**b)
    if isinstance(b, tuple):
        return model(*b)
    return model(b)


def tile(value, copies: int):
    """Every tensor repeated ``copies`` times along the batch axis (inside tuples, lists and
    dicts too); anything else as it is."""
    if copies == 1:
        return value
    if isinstance(value, torch.Tensor):
        return value.repeat(copies, *([1] * (value.dim() - 1)))
    if isinstance(value, (tuple, list)):
        return type(value)(tile(v, copies) for v in value)
    if isinstance(value, Mapping):
        return {k: tile(v, copies) for k, v in value.items()}
    return value


def cat(values: list):
    """Module outputs concatenated along the batch axis, tuples, lists and dicts element-wise
    (``None`` kept); anything else cannot be stacked (RuntimeError: run one at a time)."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values)
    if isinstance(first, (tuple, list)):
        return type(first)(cat(list(parts)) for parts in zip(*values))
    if isinstance(first, Mapping):
        try:
            return type(first)({k: cat([v[k] for v in values]) for k in first})
        except (TypeError, ValueError) as e:
            raise RuntimeError(f"cannot stack {type(first).__name__} outputs") from e
    if first is None or len(values) == 1:
        return first
    raise RuntimeError(f"cannot stack module outputs of type {type(first).__name__}")


def copy(value):
    """Tensors (also inside tuples and lists) cloned; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(copy(v) for v in value)
    return value


def has_tensor(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(has_tensor(v) for v in value)
    if isinstance(value, Mapping):
        return any(has_tensor(v) for v in value.values())
    return False


def tobytes(b) -> bytes:
    """The batch's contents, for cache keys (dict keys included, in sorted order)."""
    out = b""
    keys = sorted(b) if isinstance(b, Mapping) else range(len(_tensors(b)))
    for k, t in zip(keys, _tensors(b)):
        out += str(k).encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode()
        out += t.detach().cpu().contiguous().numpy().tobytes()
    return out


def signature(b) -> tuple:
    """Names, shapes and dtypes of a batch's tensors (what FLOP counts depend on)."""
    keys = sorted(b) if isinstance(b, Mapping) else range(len(_tensors(b)))
    return tuple((k, tuple(t.shape), str(t.dtype)) for k, t in zip(keys, _tensors(b)))


def is_images(b) -> bool:
    """A single 4-D floating tensor (the channels-last speed-up applies)."""
    return isinstance(b, torch.Tensor) and b.dim() == 4 and b.is_floating_point()

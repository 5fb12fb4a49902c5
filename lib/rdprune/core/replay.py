"""Replay the part of a forward pass that a change cannot reach, for models torch.fx cannot trace.

A probe forward records when each sub-module starts and ends. A module that *ends* before a
target module *starts* computed its output without it (causality, nothing about the code needs
to be known), so when only the target changes, that output can be replayed from a dense pass
instead of recomputed: the largest such modules (called once, with a tensor or a tuple of tensors
as output) get their ``forward`` patched to return a copy of the kept value, and a forward pass of
the model runs only what follows. On a transformer whose blocks run in a Python loop (Hugging
Face's GPT-2 and BERT, whose ``forward`` torch.fx cannot trace) a weight of block ``i`` re-runs
the embedding and blocks ``i..n``, not the whole stack.

:func:`plan` finds the modules to replay; :func:`capture` runs a dense pass keeping their
outputs; :func:`replaying` patches them for the ``with`` block. The structured HBGS search uses
the same three for its output-error candidates.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from . import batch as B


def probe(model: nn.Module, x, watch: dict | None = None) -> tuple[dict, dict]:
    """One forward pass on ``x``: ({module: [start tick, end tick, calls, replayable output]},
    {name: tick of the first operation that reads the tensor ``watch[name]``}). Reads are seen
    by a torch function mode, so a weight read functionally (``F.linear(x, other.weight)``) counts
    where it is read, not where its module is called."""
    order, hooks, clock, first = {}, [], [0], {}

    def pre(m, *_):
        order.setdefault(m, [clock[0], None, 0, False])
        order[m][2] += 1
        clock[0] += 1

    def post(m, inp, out):
        order[m][1], order[m][3] = clock[0], _replayable(out)
        clock[0] += 1

    for m in list(model.modules())[1:]:
        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    storages: dict[int, list[str]] = {}  # a tensor's storage: its aliases (views, tied) count
    for k, t in (watch or {}).items():
        storages.setdefault(_storage(t), []).append(k)
    try:
        with torch.no_grad(), _Reads(storages, clock, first):
            B.call(model, x)
    finally:
        for h in hooks:
            h.remove()
    return order, first


class _Reads(torch.overrides.TorchFunctionMode):
    """Records the tick at which each watched storage is first read by an operation (through
    the tensor itself or any view or alias of it)."""

    def __init__(self, storages: dict, clock: list, first: dict):
        super().__init__()
        self.storages, self.clock, self.first = storages, clock, first

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.storages:
            for a in _leaves((args, kwargs)):
                for name in self.storages.get(_storage(a), ()):
                    self.first.setdefault(name, self.clock[0])
        return func(*args, **kwargs)


def _storage(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # a tensor without storage
        return None


def _leaves(tree):
    if isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _leaves(v)
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    elif isinstance(tree, torch.Tensor):
        yield tree


def plan(model: nn.Module, x, targets: dict[str, object], probed=None) -> dict[str, list]:
    """{target name: the largest modules that finish before the target starts, run once, with a
    replayable output} (empty for a target the pass never reaches). A target is a module (it
    starts when it is called) or a tensor (when an operation first reads it: a weight, wherever
    it is read). ``probed``: :func:`probe`'s result on ``x`` with every tensor target watched,
    probed here when not given."""
    tensors = {k: t for k, t in targets.items() if isinstance(t, torch.Tensor)}
    order, first = probe(model, x, tensors) if probed is None else probed
    out = {}
    for name, target in targets.items():
        out[name] = []
        start = first.get(name) if name in tensors else order.get(target, [None])[0]
        if start is None:
            continue
        todo = [model]
        while todo:
            for child in todo.pop().children():
                if child not in order:  # never called itself (a ModuleList): look inside
                    todo.append(child)
                    continue
                s, e, calls, ok = order[child]
                if s < start:  # in-place modules may be called for their side effect: not kept
                    done = e is not None and e < start and calls == 1 and ok \
                        and not getattr(child, "inplace", False)
                    (out[name] if done else todo).append(child)
    return out


@torch.no_grad()
def capture(model: nn.Module, x, modules) -> tuple[object, dict]:
    """(``model``'s output on ``x``, {module: what its ``forward`` returned}) for ``modules``,
    from one pass. ``forward`` itself is wrapped (not a hook), so the kept value is the one
    :func:`replaying` must stand in for: the module's hooks run on it again as usual."""
    kept = {}

    def keep(m, forward):
        def wrapped(*a, **k):
            out = forward(*a, **k)
            kept[m] = B.copy(out)
            return out
        return wrapped

    with _patched({m: keep(m, m.forward) for m in set(modules)}):
        y = B.call(model, x)
    return y, kept


@contextlib.contextmanager
def replaying(kept: dict):
    """Within the block, each module of ``kept`` returns (a copy of) its kept output instead of
    running: a copy, since a later in-place operation must not change the kept value."""
    with _patched({m: (lambda *a, _v=value, **k: B.copy(_v)) for m, value in kept.items()}):
        yield


@contextlib.contextmanager
def _patched(forwards: dict):
    """Each module's ``forward`` replaced for the block, then restored."""
    saved = {m: m.__dict__.get("forward") for m in forwards}
    for m, f in forwards.items():
        m.forward = f
    try:
        yield
    finally:
        for m, f in saved.items():
            if f is None:
                del m.forward
            else:
                m.forward = f


def _replayable(out) -> bool:
    if isinstance(out, torch.Tensor):
        return True
    return isinstance(out, tuple) and any(isinstance(v, torch.Tensor) for v in out) and \
        all(v is None or isinstance(v, torch.Tensor) for v in out)

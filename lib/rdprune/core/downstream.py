"""Recompute only what pruning one layer changes.

The network is traced once with ``torch.fx``. A dense pass keeps every intermediate value; to
perturb layer *l*, only the nodes that depend on *l*'s output (its downstream "cone") are
re-evaluated, reading every other input (a residual branch, the earlier features of a dense
block's concatenation) from the kept values. Residual and dense connections need no special case:
the graph says exactly what depends on what.

Several perturbations of the same layer go through the cone as one batch: the layer's outputs
for ``m`` weight variants are stacked along the batch axis (m·N samples), and every kept
activation that meets the cone is tiled m times.

What the trace cannot serve is said, not hidden: a model ``torch.fx`` cannot trace raises
:class:`Untraceable`; a layer the graph does not call exactly once as a module (called through a
functional op, shared, or never called) is listed in ``unserved`` with the reason, and
:func:`rdprune.core.curves.sweep` measures those layers with full forward passes instead.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import batch as B
from . import masks as M
from .distortion import output_tensor


def layer_forward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with ``weight`` in place of its own (a conv, a Linear or Hugging Face's
    transposed ``Conv1D``)."""
    if isinstance(module, M.CONV_TYPES):
        return module._conv_forward(x, weight, module.bias)
    if M.is_hf_conv1d(module):
        out = torch.addmm(module.bias, x.reshape(-1, x.size(-1)), weight)
        return out.view(*x.shape[:-1], weight.shape[1])
    return F.linear(x, weight, module.bias)


class Untraceable(ValueError):
    """``torch.fx`` cannot trace the model, or its trace does not compute what the model does."""


class Downstream:
    """A traced model that can re-run the part of the network downstream of a prunable layer;
    ``unserved``: {prunable layer: why the trace cannot perturb it alone}."""

    def __init__(self, model: nn.Module):
        try:
            self.gm = fx.symbolic_trace(model)
        except Exception as e:  # noqa: BLE001
            raise Untraceable(f"{type(model).__name__} cannot be traced by torch.fx "
                              f"({type(e).__name__}: {e})") from e
        self.modules = dict(self.gm.named_modules())
        self.nodes = list(self.gm.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        calls: dict[str, list[fx.Node]] = {}
        for n in self.nodes:
            if n.op == "call_module":
                calls.setdefault(n.target, []).append(n)
        self.layer_node, self.unserved = {}, {}
        readers: dict[int, list[str]] = {}  # weight storage -> the modules holding it
        for mname, mod in model.named_modules():
            for p in mod.parameters(recurse=False):
                readers.setdefault(p.untyped_storage().data_ptr(), []).append(mname)
        attrs = {n.target for n in self.nodes if n.op == "get_attr"}
        for name, layer in M.prunable(model).items():
            found = calls.get(name, [])
            ptr = layer.weight.untyped_storage().data_ptr()
            others = [m for m in readers.get(ptr, []) if m != name]
            if len(found) == 1 and (others or f"{name}.weight" in attrs):
                self.unserved[name] = ("its weight is also read elsewhere ("
                                       + (", ".join(others) or "a functional call") + ")")
                continue
            if len(found) == 1:
                self.layer_node[name] = found[0]
            else:
                self.unserved[name] = (f"called {len(found)} times as a module in the traced "
                                       "forward pass" + (" (its weight is used by a functional "
                                                         "call, or not at all)" if not found
                                                         else ""))
        inputs = [n for n in self.nodes if n.op == "placeholder"]
        self.batchy = self.descendants(inputs)  # values that carry the batch axis
        self._cones: dict[frozenset, tuple] = {}  # start nodes -> (cone, frees)

    def descendants(self, roots) -> set:
        """``roots`` and every node that reads them, directly or not."""
        seen, stack = set(roots), list(roots)
        while stack:
            for user in stack.pop().users:
                if user not in seen:
                    seen.add(user)
                    stack.append(user)
        return seen

    def cone(self, name: str) -> list[fx.Node]:
        """Nodes strictly downstream of layer ``name``, in execution order."""
        return self._plan(frozenset([self.layer_node[name]]))[0]

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> dict[fx.Node, object]:
        """Dense pass; returns every node's value (the output node holds the logits)."""
        env: dict[fx.Node, object] = {}
        inputs = self._inputs(x)
        for node in self.nodes:
            if node.op == "placeholder":
                env[node] = inputs[node]
            else:
                env[node] = self._eval(node, env.__getitem__)
        return env

    def _inputs(self, x) -> dict:
        """Placeholder values for a batch: a tensor feeds the first input, a tuple the inputs
        in order, a dict by name; the others take their defaults."""
        holders = [n for n in self.nodes if n.op == "placeholder"]
        given = (dict(zip([n.target for n in holders], x)) if isinstance(x, tuple)
                 else dict(x) if isinstance(x, Mapping) else {holders[0].target: x})
        unknown = set(given) - {n.target for n in holders}
        if unknown:
            raise ValueError(f"the model takes no input named {sorted(unknown)}")
        return {n: given[n.target] if n.target in given else (n.args[0] if n.args else None)
                for n in holders}

    def output(self, env):
        return env[self.nodes[-1]]

    @torch.no_grad()
    def check(self, model: nn.Module, x: torch.Tensor) -> None:
        """:class:`Untraceable` unless the traced graph gives ``model``'s own output on ``x``."""
        try:
            got = self.output(self.run(x))
        except Exception as e:  # noqa: BLE001 - a trace that fails when run
            raise Untraceable(f"the torch.fx trace of {type(model).__name__} fails when run "
                              f"({type(e).__name__}: {e})") from e
        want = output_tensor(B.call(model, x))
        try:
            got = output_tensor(got)
        except ValueError:
            pass
        if not (isinstance(got, torch.Tensor) and got.shape == want.shape
                and torch.allclose(got, want, rtol=1e-4,
                                   atol=1e-5 * float(want.abs().max().clamp_min(1e-30)))):
            raise Untraceable(f"the torch.fx trace of {type(model).__name__} does not compute "
                              "the model's output")

    def layer_input(self, env, name):
        node = self.layer_node[name]
        return env[node.args[0]]

    @torch.no_grad()
    def rerun(self, env, name: str, new_out: torch.Tensor, copies: int = 1) -> torch.Tensor:
        """Logits when layer ``name`` outputs ``new_out`` (``copies`` perturbations stacked along
        the batch axis), all else as in ``env``."""
        return self.rerun_from(env, {self.layer_node[name]: new_out}, copies)

    @torch.no_grad()
    def rerun_from(self, env, starts: dict, copies: int = 1) -> torch.Tensor:
        """Logits when the nodes of ``starts`` take the given values (``copies`` stacked along the
        batch axis): the union of their downstream cones re-runs, every other value is read from
        ``env`` (batch values tiled ``copies`` times)."""
        local = dict(starts)

        def get(node):
            if node in local:
                return local[node]
            value = env[node]
            if copies > 1 and node in self.batchy and isinstance(value, torch.Tensor):
                return value.repeat(copies, *([1] * (value.dim() - 1)))
            return value

        cone, frees = self._plan(frozenset(starts))
        for node in cone:
            local[node] = self._eval(node, get)
            for dead in frees.get(node, ()):
                local.pop(dead, None)  # free activations no later node reads
        return local[self.nodes[-1]]

    def _plan(self, starts: frozenset):
        """(cone of ``starts`` in execution order, {cone node: local values it reads last})."""
        if starts not in self._cones:
            cone = sorted(self.descendants(list(starts)) - starts, key=self.index.__getitem__)
            last = {}
            for node in sorted(starts, key=self.index.__getitem__) + cone:
                for arg in node.all_input_nodes:
                    last[arg] = node
            frees: dict = {}
            for value, reader in last.items():
                if reader.op != "output":
                    frees.setdefault(reader, []).append(value)
            self._cones[starts] = (cone, frees)
        return self._cones[starts]

    def _eval(self, node: fx.Node, get):
        args = fx.node.map_arg(node.args, get)
        kwargs = fx.node.map_arg(node.kwargs, get)
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            obj, *rest = args
            return getattr(obj, node.target)(*rest, **kwargs)
        if node.op == "get_attr":
            value = self.gm
            for part in node.target.split("."):
                value = getattr(value, part)
            return value
        if node.op == "output":
            return args[0]
        raise ValueError(f"unsupported fx node {node.op}")

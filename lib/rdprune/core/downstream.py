"""Recompute only what pruning one layer changes.

The network is traced once with ``torch.fx``. A dense pass keeps every intermediate value; to
perturb layer *l*, only the nodes that depend on *l*'s output (its downstream "cone") are
re-evaluated, reading every other input (a residual branch, the earlier features of a dense
block's concatenation) from the kept values. Residual and dense connections need no special case:
the graph says exactly what depends on what.

Several perturbations of the same layer go through the cone as one batch: the layer's outputs
for ``m`` weight variants are stacked along the batch axis (m·N samples), and every kept
activation that meets the cone is tiled m times.

Each cone runs as generated code: the first time a set of start nodes is asked for, its cone is
copied into a graph of its own (the start values and every kept value it reads become inputs,
tiling happens just before a value's first read, and sizes read off batch values are
recomputed from the tiled ones) and compiled by ``torch.fx`` into a Python function, cached by
the start nodes. That removes the per-node interpretation, the cost that
dominates when the calibration set is small; the operations and their order are the same, so the
numbers are too.

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


class _Tracer(fx.Tracer):
    """torch.fx's tracer with extra leaf modules (by qualified name); remembers the innermost
    module whose forward failed to trace."""

    def __init__(self, leaves):
        super().__init__()
        self.leaves, self.failed = set(leaves), None

    def is_leaf_module(self, m, qualname):
        return qualname in self.leaves or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:
                self.failed = self.path_of_module(m)
            raise


def _innermost(node: fx.Node) -> str:
    """The innermost module whose code made ``node`` ('' for the model's own forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


class Downstream:
    """A traced model that can re-run the part of the network downstream of a prunable weight;
    ``unserved``: {prunable weight: why the trace cannot perturb it alone}.

    The trace degrades by module, not by model: a sub-module torch.fx cannot trace, whose trace
    fails when run on ``example``, or whose code reads a prunable weight functionally (attention
    computing ``F.linear(x, self.qkv.weight)``) becomes a leaf, called as a whole, and the trace is
    retried. A weight inside a leaf (``nn.MultiheadAttention``'s ``in_proj_weight`` and
    ``out_proj``, a leaf by torch.fx's default) starts its cone at that leaf's call: the leaf is
    re-run with the weight swapped in (:meth:`perturbed`). ``leaves`` lists the leaves added."""

    def __init__(self, model: nn.Module, example=None, max_leaves: int = 64):
        self.leaves: list[str] = []
        layers = M.prunable(model)
        weights = {(k if isinstance(v, M.Weight) else f"{k}.weight") for k, v in layers.items()}
        read_by: dict[str, set[str]] = {}  # weight -> the modules made leaves for reading it

        def grow(where: str, why: Exception | None):
            """Make ``where`` a leaf, or its nearest enclosing module that is not one yet."""
            up = next((p for p in _prefixes(where) if p not in self.leaves), "")
            if not up:  # the model's own code
                raise Untraceable(f"{type(model).__name__} cannot be traced by torch.fx "
                                  f"({type(why).__name__}: {why})") from why
            self.leaves.append(up)

        for _ in range(max_leaves):
            tracer = _Tracer(self.leaves)
            try:
                graph = tracer.trace(model)
            except Exception as e:
                grow(tracer.failed or "", e)
                continue
            self.gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
            self.nodes, self.modules = list(self.gm.graph.nodes), dict(self.gm.named_modules())
            functional = {}
            for n in self.nodes:
                if n.op == "get_attr" and n.target in weights and _innermost(n):
                    functional.setdefault(_innermost(n), set()).add(n.target)
            if functional:
                for where, read in sorted(functional.items()):
                    for w in read:
                        read_by.setdefault(w, set()).add(where)
                    grow(where, None)
                continue
            if example is None:
                break
            try:
                self.check(model, example)
                break
            except Untraceable as e:
                where = _innermost(self.failed_node) if self.failed_node is not None else ""
                if not where:
                    raise
                grow(where, e)
        else:
            raise Untraceable(f"{type(model).__name__}: torch.fx needed more than {max_leaves} "
                              "leaf modules")
        self.index = {n: i for i, n in enumerate(self.nodes)}
        calls: dict[str, list[fx.Node]] = {}
        for n in self.nodes:
            if n.op == "call_module":
                calls.setdefault(n.target, []).append(n)
        self.layer_node, self.swapped, self.unserved = {}, set(), {}
        readers: dict[int, list[str]] = {}  # weight storage -> the modules holding it
        for mname, mod in model.named_modules():
            for p in mod.parameters(recurse=False):
                readers.setdefault(p.untyped_storage().data_ptr(), []).append(mname)
        attrs = {n.target for n in self.nodes if n.op == "get_attr"}
        for name, layer in layers.items():
            owner = name.rpartition(".")[0] if isinstance(layer, M.Weight) else name
            ptr = layer.weight.untyped_storage().data_ptr()
            others = [m for m in readers.get(ptr, []) if m != owner]
            pname = name if isinstance(layer, M.Weight) else f"{name}.weight"
            # a leaf made for reading this weight that does not hold it: a second reader
            others += sorted(r for r in read_by.get(pname, ()) if r not in _prefixes(owner))
            if others or pname in attrs:
                self.unserved[name] = ("its weight is also read elsewhere ("
                                       + (", ".join(others) or "a functional call") + ")")
                continue
            direct = not isinstance(layer, M.Weight) and name in calls
            where = owner if direct else next(
                (p for p in _prefixes(owner) if p in calls), None)
            found = calls.get(where, [])
            if len(found) == 1:
                self.layer_node[name] = found[0]
                if not direct:
                    self.swapped.add(name)
            else:
                self.unserved[name] = (f"called {len(found)} times as a module in the traced "
                                       "forward pass" + (" (its weight is used by a functional "
                                                         "call, or not at all)" if not found
                                                         else ""))
        inputs = [n for n in self.nodes if n.op == "placeholder"]
        self.batchy = self.descendants(inputs)  # values that carry the batch axis
        self._cones: dict[frozenset, list] = {}  # start nodes -> cone
        self._programs: dict[frozenset, tuple] = {}  # start nodes -> (compiled cone, inputs)
        self._stacks: dict = {}  # leaf start node (None: the traced layers) -> stacking is exact

    def descendants(self, roots) -> set:
        """``roots`` and every node that reads them, directly or not."""
        seen, stack = set(roots), list(roots)
        while stack:
            for user in stack.pop().users:
                if user not in seen:
                    seen.add(user)
                    stack.append(user)
        return seen

    def module_nodes(self, names) -> dict[str, fx.Node] | None:
        """The call node of each named module (a leaf of the trace), or None when one is not
        called exactly once: its output is then no single node to replace."""
        found: dict[str, list] = {}
        for node in self.nodes:
            if node.op == "call_module" and node.target in names:
                found.setdefault(node.target, []).append(node)
        if set(found) != set(names) or any(len(v) != 1 for v in found.values()):
            return None
        return {k: v[0] for k, v in found.items()}

    def sources(self, nodes: dict[str, fx.Node]) -> set[str]:
        """The names among ``nodes`` that no other of them feeds: replacing their values covers
        the others' inputs, which then re-run inside the cone."""
        below = set().union(*(self.descendants([o]) - {o} for o in nodes.values()))
        return {k for k, n in nodes.items() if n not in below}  # one walk per node

    def cone(self, name: str) -> list[fx.Node]:
        """Nodes strictly downstream of layer ``name``, in execution order."""
        return self._plan(frozenset([self.layer_node[name]]))

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> dict[fx.Node, object]:
        """Dense pass; returns every node's value (the output node holds the logits)."""
        env: dict[fx.Node, object] = {}
        inputs = self._inputs(x)
        self.failed_node = None
        for node in self.nodes:
            if node.op == "placeholder":
                env[node] = inputs[node]
                continue
            try:
                env[node] = self._eval(node, env.__getitem__)
            except Exception:  # whatever fails stacked runs one at a time
                self.failed_node = node
                raise
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
        except Exception as e:  # a trace that fails when run
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
    def stacks(self, env, name: str, layer) -> bool:
        """Whether several amounts of layer ``name`` may share one pass through its cone: its
        current weight and an all-zero one, stacked, must give what each gives alone (two
        different variants: attention cannot tell two identical copies from one). Stacking
        assumes the batch is the first axis of every value; a sequence-first attention
        (``batch_first=False``) or recurrent part breaks that, and such a layer then runs one
        amount at a time. Checked once per leaf start node, and once for the traced layers."""
        key = self.layer_node[name] if name in self.swapped else None
        if key not in self._stacks:
            try:
                w = layer.weight.detach()
                variants = [w, torch.zeros_like(w)]
                alone = torch.cat([output_tensor(self.rerun(
                    env, name, self.perturbed(env, name, layer, [v]))) for v in variants])
                both = output_tensor(self.rerun(env, name, self.perturbed(env, name, layer,
                                                                          variants), copies=2))
                scale = float(alone.abs().max().clamp_min(1e-30)) if alone.numel() else 1.0
                self._stacks[key] = (both.shape == alone.shape and torch.allclose(
                    both, alone, rtol=1e-4, atol=1e-5 * scale))
            except Exception:
                self._stacks[key] = False
        return self._stacks[key]

    @torch.no_grad()
    def perturbed(self, env, name: str, layer, weights) -> object:
        """The value of layer ``name``'s start node with each of ``weights`` in place of its
        weight, stacked along the batch axis: the layer itself applied to its kept input, or, for
        a weight inside a leaf module, that leaf re-run with the weight swapped in."""
        if name not in self.swapped:
            inp = self.layer_input(env, name)
            return torch.cat([layer_forward(layer, inp, w) for w in weights])
        node, param = self.layer_node[name], layer.weight
        original, outs = param.data, []
        try:
            for w in weights:  # the leaf's inputs copied: it may change them in place
                param.data = w
                outs.append(self._eval(node, lambda n: B.copy(env[n])))
        finally:
            param.data = original
        return B.cat(outs)

    @torch.no_grad()
    def rerun(self, env, name: str, new_out: torch.Tensor, copies: int = 1) -> torch.Tensor:
        """Logits when layer ``name`` outputs ``new_out`` (``copies`` perturbations stacked along
        the batch axis), all else as in ``env``."""
        return self.rerun_from(env, {self.layer_node[name]: new_out}, copies)

    @torch.no_grad()
    def rerun_from(self, env, starts: dict, copies: int = 1) -> torch.Tensor:
        """Logits when the nodes of ``starts`` take the given values (``copies`` stacked along the
        batch axis): the union of their downstream cones re-runs as compiled code, every other
        value is read from ``env`` (batch values tiled ``copies`` times; sizes read off batch
        values, such as a ViT's ``n = x.shape[0]``, recomputed from the tiled values)."""
        program, order, kept = self._program(frozenset(starts), env)
        # .forward, not the module call: torch.fx's wrapper prints every exception to stderr,
        # and a failing stacked run is caught and retried one amount at a time by the caller
        return program.forward(*[starts[n] for n in order], *[env[n] for n in kept], copies)

    def _program(self, starts: frozenset, env):
        """(the cone of ``starts`` compiled to one function, the start nodes in its argument
        order, the kept nodes it reads in its argument order); the function's arguments are the
        start values, the kept values, then ``copies``."""
        if starts not in self._programs:
            cone = self._plan(starts)
            if not cone or cone[-1] is not self.nodes[-1]:
                raise RuntimeError("the model's output does not depend on the perturbed layer")
            body, stack = set(cone), [a for n in cone for a in n.all_input_nodes]
            while stack:  # batch-derived sizes are recomputed, not read
                a = stack.pop()
                if a not in body and a not in starts and a in self.batchy \
                        and a.op != "placeholder" and not B.has_tensor(env[a]):
                    body.add(a)
                    stack += a.all_input_nodes
            body = sorted(body, key=self.index.__getitem__)
            order = sorted(starts, key=self.index.__getitem__)
            kept = sorted({a for n in body for a in n.all_input_nodes} - set(body) - starts,
                          key=self.index.__getitem__)
            g = fx.Graph()
            value = {n: g.placeholder(f"start_{n.name}") for n in order}
            given = {n: g.placeholder(f"kept_{n.name}") for n in kept}
            copies = g.placeholder("copies")
            for node in body:
                for arg in node.all_input_nodes:
                    if arg not in value:  # a kept value, tiled just before its first read
                        value[arg] = (g.call_function(B.tile, (given[arg], copies))
                                      if arg in self.batchy else given[arg])
                if node.op == "output":
                    g.output(fx.node.map_arg(node.args[0], value.__getitem__))
                else:
                    value[node] = g.node_copy(node, value.__getitem__)
            self._programs[starts] = (fx.GraphModule(self.gm, g), order, kept)
        return self._programs[starts]

    def _plan(self, starts: frozenset) -> list[fx.Node]:
        """The cone of ``starts`` in execution order."""
        if starts not in self._cones:
            self._cones[starts] = sorted(self.descendants(list(starts)) - starts,
                                         key=self.index.__getitem__)
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


def _prefixes(name: str):
    """``a.b.c``, ``a.b``, ``a`` (innermost first; not the model itself)."""
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]

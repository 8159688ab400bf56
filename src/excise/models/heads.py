"""Where a classifier's head starts: the features a linear probe reads and a concept eraser edits.

A classifier ends in an affine head: one ``nn.Linear`` (a CIFAR ResNet's ``fc``) or several composed with
nothing non-linear in between (the Essential-Graph paper's ``linear1 -> linear2``). The *classifier-input
features* are the input of the layer that produces the logits (:func:`classifier_output`): the deepest
representation the model computes, and what a linear probe reads (:mod:`excise.metrics.probe`). When a linear
layer of the same affine chain produces them, an eraser can be folded into that producer exactly
(:mod:`excise.erasure`). The chain is found on the module graph (``torch.fx``), never by names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["HeadError", "affine_head", "body_tail", "classifier_output", "head_features", "last_body_module",
           "module_inputs", "stage_tail"]

# Nodes that pass features through unchanged between the head's linear layers (dropout is the identity in eval
# mode). Indexing, view and reshape are not: they can select or re-lay features, and a fold across them would be
# wrong, so they end the chain.
_PASS_MODULES = (nn.Flatten, nn.Identity, nn.Dropout)
_PASS_FUNCTIONS = (torch.flatten,)
_PASS_METHODS = ("flatten", "contiguous")


class HeadError(ValueError):
    """A model whose classifier head is not an affine chain of ``nn.Linear`` layers; the message says why."""


def _trace(model: nn.Module, tracer: torch.fx.Tracer, why: str = "") -> torch.fx.Graph:
    try:
        return tracer.trace(model)
    except Exception as err:  # fx raises many types on dynamic control flow
        name = type(model).__name__
        raise HeadError(f"cannot trace {name} with torch.fx ({type(err).__name__}: {err}){why}") from err


def affine_head(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` layers of the final affine chain (the head), first to last."""
    graph = _trace(model, torch.fx.Tracer(), "; the classifier head is found on the module graph")
    modules = dict(model.named_modules())
    output = next(node for node in graph.nodes if node.op == "output")
    node = output.args[0]
    chain: list[str] = []
    while isinstance(node, torch.fx.Node):
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.Linear):
            chain.append(str(node.target))
        elif not (isinstance(module, _PASS_MODULES)
                  or (node.op == "call_function" and node.target in _PASS_FUNCTIONS)
                  or (node.op == "call_method" and node.target in _PASS_METHODS)):
            break
        node = node.args[0] if node.args else None
    if not chain:
        raise HeadError(
            f"{type(model).__name__} does not end in an nn.Linear head (its output comes from "
            f"{getattr(node, 'op', '?')} {getattr(node, 'target', '?')!r}); target erasure and the linear probe "
            "need the logits to be an affine function of pooled features"
        )
    return chain[::-1]


def classifier_output(model: nn.Module) -> str:
    """Name of the ``nn.Linear`` that produces the logits; its input is the classifier-input features."""
    return affine_head(model)[-1]


@torch.no_grad()
def module_inputs(model: nn.Module, module: nn.Module, inputs: Tensor, batch_size: int = 512,
                  flatten: bool = False, select: Callable[[Tensor, int], Tensor] | None = None) -> Tensor | None:
    """What ``module`` receives (its first positional input, ``N x ...``; ``N x D`` with ``flatten``) when ``model``
    runs on ``inputs`` (a tensor, or a data set's lazy inputs) in eval mode, in batches; the model's mode is
    restored. None when nothing ran. ``select(batch_input, first_row)`` keeps part of each batch's input, so that
    only that part is held. Refuses a module called other than once per forward pass: its inputs would not line
    up one row per input row."""
    seen: list[Tensor] = []

    def record(_module: nn.Module, args: tuple) -> None:
        seen.append(args[0].detach())

    parts: list[Tensor] = []
    was_training = model.training
    model.eval()
    handle = module.register_forward_pre_hook(record)
    try:
        for start in range(0, len(inputs), batch_size):
            seen.clear()
            model(inputs[start:start + batch_size])
            if len(seen) != 1:
                raise ValueError(f"{type(module).__name__} module was called {len(seen)} times in one forward pass of "
                                 f"{type(model).__name__}; its inputs are read from a module called once")
            part = seen[0] if select is None else select(seen[0], start)
            parts.append(part.flatten(1) if flatten else part)
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(parts) if parts else None


def head_features(model: nn.Module, inputs: Tensor, layer: str | None = None, batch_size: int = 512) -> Tensor:
    """``N x D`` classifier-input features (the input of ``layer``, default :func:`classifier_output`), in eval
    mode; the model's mode is restored."""
    name = classifier_output(model) if layer is None else layer
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, nn.Linear):
        raise HeadError(f"layer={name!r} is not an nn.Linear of {type(model).__name__}")
    features = module_inputs(model, module, inputs, batch_size, flatten=True)
    return features if features is not None else torch.empty(0, module.in_features)


class _LeafTracer(torch.fx.Tracer):
    """Traces ``leaf`` as one call, so the graph shows where its output goes."""

    def __init__(self, leaf: str) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return qualname == self.leaf or super().is_leaf_module(module, qualname)


def last_body_module(model: nn.Module) -> str:
    """The last top-level child, in the order the forward pass calls them, that has parameters and holds no layer
    of the head (ResNet-18's ``layer4``)."""
    head = affine_head(model)
    graph = _trace(model, torch.fx.Tracer())
    order: list[str] = []
    for node in graph.nodes:
        if node.op == "call_module":
            child = str(node.target).split(".")[0]
            if child not in order:
                order.append(child)
    children = dict(model.named_children())
    names = [name for name in order
             if not any(h == name or h.startswith(name + ".") for h in head)
             and any(True for _ in children[name].parameters())]
    if not names:
        raise HeadError(f"{type(model).__name__} has no module with parameters before its head {head}")
    return names[-1]


def body_tail(model: nn.Module, module: str) -> torch.fx.GraphModule:
    """A module mapping the *input* of ``module`` to ``(body features, classifier-input features, logits)``:
    ``module`` itself, then what the model computes from its output (pooling, the head). The body features are the
    input of the head's first linear layer; on a single-layer head they are the classifier-input features. The
    returned module shares ``model``'s layers (training it trains them). Trace in the mode it will run in: fx
    fixes ``self.training`` where a forward reads it. Refused by name when ``module`` is not a module of the body,
    is not called exactly once, or when anything after it also reads a value computed from the model's input
    before it (a skip connection around it): then its input alone does not determine the logits."""
    head = affine_head(model)
    if any(h == module or h.startswith(module + ".") or module.startswith(h + ".") for h in head):
        raise HeadError(f"body_module={module!r} is or holds a layer of the head {head}; name a module of the body")
    return stage_tail(model, module, (head[0], head[-1]), "body_module")


def stage_tail(model: nn.Module, module: str, reads: Sequence[str], field: str = "module",
               read_field: str = "read") -> torch.fx.GraphModule:
    """A module mapping the *input* of ``module`` to ``(*inputs of each module named in reads, model output)``:
    ``module`` itself, then what the model computes from its output. It shares ``model``'s layers. Refused (naming
    ``field``, ``read_field``) when ``module`` or a module of ``reads`` does not exist or is not called exactly once,
    when ``module`` takes more than one input, when a module of ``reads`` does not follow from its output alone, or
    when anything after it also reads a value computed before it (a skip connection around it): then its input
    alone does not determine the output."""
    modules = dict(model.named_modules())
    if module == "" or module not in modules:
        raise HeadError(f"{field}={module!r} is not a submodule of {type(model).__name__}")
    for name in reads:
        if name == "" or name not in modules:
            raise HeadError(f"{read_field}={name!r} is not a submodule of {type(model).__name__}")
    graph = _trace(model, _LeafTracer(module))
    for name in set(reads):
        called = sum(n.op == "call_module" and n.target == name for n in graph.nodes)
        if called != 1:
            raise HeadError(f"{read_field}={name!r} is called {called} times in {type(model).__name__}'s forward; "
                            "its input is read from a module called exactly once")
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == module]
    if len(calls) != 1:
        raise HeadError(f"{field}={module!r} is called {len(calls)} times in {type(model).__name__}'s forward; "
                        "it must be called exactly once")
    stage = calls[0]
    if len(stage.args) != 1 or stage.kwargs:
        raise HeadError(f"{field}={module!r} must be called with one positional input")
    # Nodes computed from the model's input; the rest (parameters read with get_attr, constants) can be copied
    # into the tail wherever they are needed.
    dependent: set[torch.fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(i in dependent for i in node.all_input_nodes):
            dependent.add(node)
    tail = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {stage: tail.call_module(module, (tail.placeholder("x"),))}

    def copied(node: torch.fx.Node) -> torch.fx.Node:
        if node not in env:  # a constant: copy it and what it is made of
            env[node] = tail.node_copy(node, copied)
        return env[node]

    wanted: dict[str | None, torch.fx.Node] = {}  # None: the model's output
    nodes = list(graph.nodes)
    for node in nodes[nodes.index(stage) + 1:]:
        if node.op == "output":
            wanted[None] = node.args[0]
            break
        inputs = [i for i in node.all_input_nodes if i in dependent]
        if node not in dependent or not any(i in env for i in inputs):
            continue
        if not all(i in env for i in inputs):
            raise HeadError(f"{node.name} in {type(model).__name__} reads both the output of {module!r} and a value "
                            f"computed before it (a skip connection around it); name a module whose output alone "
                            "determines the model's output")
        env[node] = tail.node_copy(node, copied)
        if node.op == "call_module" and node.target in reads:
            wanted.setdefault(str(node.target), node.args[0])
    missing = [name for name in (*reads, None) if wanted.get(name) not in env]
    if missing:
        what = ", ".join(f"the input of {name!r}" if name is not None else "the model's output" for name in missing)
        raise HeadError(f"{what} of {type(model).__name__} do not follow from {field}={module!r} alone")
    tail.output(tuple(env[wanted[name]] for name in (*reads, None)))
    return torch.fx.GraphModule(model, tail)

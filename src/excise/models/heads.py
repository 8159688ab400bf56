"""Where a classifier's head starts: the features a linear probe reads and a concept eraser edits.

A classifier ends in an affine head: one ``nn.Linear`` (a CIFAR ResNet's ``fc``) or several composed with
nothing non-linear in between (the Essential-Graph paper's ``linear1 -> linear2``). The *classifier-input
features* are the input of the layer that produces the logits (:func:`classifier_output`): the deepest
representation the model computes, and what a linear probe reads (:mod:`excise.metrics.probe`). When a linear
layer of the same affine chain produces them, an eraser can be folded into that producer exactly
(:mod:`excise.erasure`). The chain is found on the module graph (``torch.fx``), never by names.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["HeadError", "affine_head", "classifier_output", "head_features"]

# Nodes that pass features through unchanged between the head's linear layers (dropout is the identity in eval
# mode). Indexing, view and reshape are not: they can select or re-lay features, and a fold across them would be
# wrong, so they end the chain.
_PASS_MODULES = (nn.Flatten, nn.Identity, nn.Dropout)
_PASS_FUNCTIONS = (torch.flatten,)
_PASS_METHODS = ("flatten", "contiguous")


class HeadError(ValueError):
    """A model whose classifier head is not an affine chain of ``nn.Linear`` layers; the message says why."""


def affine_head(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` layers of the final affine chain (the head), first to last."""
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types on dynamic control flow
        raise HeadError(f"cannot trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}); "
                        "the classifier head is found on the module graph") from err
    modules = dict(model.named_modules())
    output = next(node for node in traced.graph.nodes if node.op == "output")
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


@contextmanager
def _recording(module: nn.Module) -> Iterator[list[Tensor]]:
    seen: list[Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().flatten(1)))
    try:
        yield seen
    finally:
        handle.remove()


@torch.no_grad()
def head_features(model: nn.Module, inputs: Tensor, layer: str | None = None, batch_size: int = 512) -> Tensor:
    """``N x D`` classifier-input features (the input of ``layer``, default :func:`classifier_output`), in eval
    mode; the model's mode is restored."""
    name = classifier_output(model) if layer is None else layer
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, nn.Linear):
        raise HeadError(f"layer={name!r} is not an nn.Linear of {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        with _recording(module) as seen:
            for start in range(0, len(inputs), batch_size):
                model(inputs[start:start + batch_size])
    finally:
        model.train(was_training)
    return torch.cat(seen) if seen else torch.empty(0, module.in_features)

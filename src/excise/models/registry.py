"""Name -> constructor registry for models (``timm``-style), so checkpoints rebuild from their sidecar."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from excise._registry import Registry

ModelBuilder = Callable[..., nn.Module]
MODELS: Registry[nn.Module] = Registry("model", "models")
_MODELS: dict[str, ModelBuilder] = MODELS.builders


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    return MODELS.register(name)


def list_models() -> list[str]:
    return MODELS.names()


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model, or the user's own from ``"package.module:factory"`` (any function or class
    returning an ``nn.Module``). The name and arguments are recorded on the module as ``excise_spec`` so a
    checkpoint can rebuild the same architecture."""
    builder = MODELS.get(name)
    unknown, accepted = MODELS.unknown_arguments(builder, kwargs)
    if unknown:
        raise ValueError(f"model {name!r} got unknown argument(s) {unknown}; it accepts {accepted}")
    model = builder(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    model.excise_spec = {"name": name, "kwargs": dict(kwargs)}
    return model


def accepted_arguments(name: str, candidates: dict[str, Any]) -> dict[str, Any]:
    """The sizes excise fills in (input channels, classes) that model ``name`` should be given: all of them for
    a registered model (one that does not take them is refused by :func:`create_model`, naming them), and for a
    user's ``"package.module:factory"`` only those its signature *names* — never through ``**kwargs``, where they
    would reach a constructor that did not ask for them."""
    if name in MODELS.builders:
        return dict(candidates)
    _, named = MODELS.unknown_arguments(MODELS.get(name), candidates)
    return {k: v for k, v in candidates.items() if k in named}


def model_spec(model: nn.Module) -> dict[str, Any]:
    spec = getattr(model, "excise_spec", None)
    if spec is None:
        raise ValueError(
            "this model was not built by excise.models.create_model, so its architecture cannot be recorded; "
            "build it with create_model(name, **kwargs)"
        )
    return spec

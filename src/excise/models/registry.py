"""Name -> constructor registry for models (``timm``-style), so checkpoints rebuild from their sidecar."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

ModelBuilder = Callable[..., nn.Module]
_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model. The name and arguments are recorded on the module as
    ``excise_spec`` so a checkpoint can rebuild the same architecture."""
    if name not in _MODELS:
        raise ValueError(f"model={name!r} is not registered; known models: {list_models()}")
    builder = _MODELS[name]
    params = inspect.signature(builder).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise ValueError(f"model {name!r} got unknown argument(s) {unknown}; it accepts {list(params)}")
    model = builder(**kwargs)
    model.excise_spec = {"name": name, "kwargs": dict(kwargs)}
    return model


def model_spec(model: nn.Module) -> dict[str, Any]:
    spec = getattr(model, "excise_spec", None)
    if spec is None:
        raise ValueError(
            "this model was not built by excise.models.create_model, so its architecture cannot be recorded; "
            "build it with create_model(name, **kwargs)"
        )
    return spec

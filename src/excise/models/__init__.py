"""Models by name: ``small_cnn``, ``mlp``, ``resnet18`` (CIFAR-style, width multiplier), ``bottleneck_resnet`` (the
Essential-Graph paper's SE-ResNet tail), plus the dense and language models."""

from torch import nn

from excise.models import bottleneck as _bottleneck  # noqa: F401  (registers)
from excise.models import cnn as _cnn  # noqa: F401  (registers)
from excise.models import dense as _dense  # noqa: F401  (registers)
from excise.models import gpt as _gpt  # noqa: F401  (registers)
from excise.models import resnet as _resnet  # noqa: F401  (registers)
from excise.models.registry import accepted_arguments, create_model, list_models, model_spec, register_model


def final_linear(model: nn.Module) -> nn.Linear:
    """The classifier head: the last ``nn.Linear`` in module order (found by type, never by name)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to serve as the classifier head")
    return linears[-1]


__all__ = ["accepted_arguments", "create_model", "final_linear", "list_models", "model_spec", "register_model"]

"""Unlearning methods, one module each, registered by name.

Every module in this package is imported here, so a new method is one new file with a
``@register_method`` class — nothing else to edit.
"""

import importlib
import pkgutil

from excise.methods.base import (
    COMPARE_GUARD,
    Guard,
    GuardRefused,
    GuardWarning,
    RetainAccessError,
    UnlearnData,
    UnlearningMethod,
    UnlearnResult,
    get_method,
    guard_objection,
    list_methods,
    method_class,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "COMPARE_GUARD",
    "Guard",
    "GuardRefused",
    "GuardWarning",
    "RetainAccessError",
    "UnlearnData",
    "UnlearnResult",
    "UnlearningMethod",
    "get_method",
    "guard_objection",
    "list_methods",
    "method_class",
    "register_method",
]

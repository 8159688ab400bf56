"""A small name -> builder registry (``timm``-style), shared by the data set and model registries.

:mod:`excise.data.registry` and :mod:`excise.models.registry` keep their own public functions and their own
messages for what differs (the builder's arguments); this class holds what is the same: registering a builder
under a name once, listing the names, and looking a name up with an error that lists the known ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Builders (``Callable[..., T]``) by name. ``kind`` names one entry in messages (``"model"``), ``plural``
    the listing (``"models"``)."""

    def __init__(self, kind: str, plural: str) -> None:
        self.kind = kind
        self.plural = plural
        self.builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register the builder under ``name``; a name is registered once."""

        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self.builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self.builders[name] = builder
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self.builders)

    def get(self, name: str) -> Callable[..., T]:
        if name not in self.builders:
            raise ValueError(f"{self.kind}={name!r} is not registered; known {self.plural}: {self.names()}")
        return self.builders[name]

    @staticmethod
    def unknown_arguments(builder: Callable[..., T], given: Iterable[str]) -> tuple[list[str], list[str]]:
        """The names in ``given`` that ``builder``'s signature does not accept, and the names it accepts."""
        accepted = list(inspect.signature(builder).parameters)
        return [k for k in given if k not in accepted], accepted

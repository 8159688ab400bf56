"""A small name -> builder registry (``timm``-style), shared by the data set and model registries.

:mod:`excise.data.registry` and :mod:`excise.models.registry` keep their own public functions and their own
messages for what differs (the builder's arguments); this class holds what is the same: registering a builder
under a name once, listing the names, and looking a name up with an error that lists the known ones.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

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
        """The builder registered under ``name``, or, for ``"package.module:factory"``, the user's own factory
        imported from that module (the import path is then the name a checkpoint records and rebuilds from)."""
        if name in self.builders:
            return self.builders[name]
        if is_import_path(name):
            try:
                return import_factory(name, self.kind)
            except ValueError as err:  # a misspelt registered name may contain a colon too
                raise ValueError(f"{err} (registered {self.plural}: {self.names()})") from err
        raise ValueError(f"{self.kind}={name!r} is not registered; known {self.plural}: {self.names()}; or name "
                         "your own as 'package.module:factory'")

    @staticmethod
    def unknown_arguments(builder: Callable[..., T], given: Iterable[str]) -> tuple[list[str], list[str]]:
        """The names in ``given`` that ``builder``'s signature does not accept, and the names it accepts."""
        parameters = inspect.signature(builder).parameters
        accepted = [n for n, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            return [], accepted
        return [k for k in given if k not in accepted], accepted


def is_import_path(name: str) -> bool:
    """``"package.module:factory"``: a user's builder, imported instead of looked up."""
    return isinstance(name, str) and name.count(":") == 1


TRUST_VARIABLE = "EXCISE_TRUSTED_MODULES"


class UntrustedFactoryError(ValueError):
    """A checkpoint's sidecar names code to import that the user has not said they trust."""


_TYPED: ContextVar[frozenset[str]] = ContextVar("excise_typed_factories", default=frozenset())
"""Modules of factories the user typed in this call (:func:`typed_factories`): trusted while it runs, in its own
thread or task only."""


@contextmanager
def typed_factories(*names: str | None) -> Iterator[None]:
    """Trust the modules of the factories the user typed (``excise adopt --model mine:build``) while the block
    runs: reading back the checkpoint just written from them must not be refused for naming what the user named.
    Exactly those modules, in this context only; a later command that reads the file checks :data:`TRUST_VARIABLE`
    as for any other file."""
    token = _TYPED.set(_TYPED.get() | {n.partition(":")[0] for n in names if n and is_import_path(n)})
    try:
        yield
    finally:
        _TYPED.reset(token)


def check_trusted(name: str, kind: str, where: str) -> None:
    """Refuse to import a factory that a *file* names (a sidecar, a certificate) unless its module is trusted.

    Rebuilding a model from a sidecar imports and calls what the sidecar names, with arguments it holds, so a
    checkpoint from elsewhere could run any installed function (``subprocess:getoutput``) just by being loaded;
    the sha256 check does not help, since whoever writes the sidecar writes the hash. Registered names are
    excise's own code and always allowed; an import path only when its top-level package, or the module
    itself, is listed in ``EXCISE_TRUSTED_MODULES`` (comma-separated). A factory the user types on the command
    line (``excise adopt --model``) is trusted by being typed."""
    if not is_import_path(name):
        return
    module_name = name.partition(":")[0]
    if module_name in _TYPED.get():
        return
    trusted = {m.strip() for m in os.environ.get(TRUST_VARIABLE, "").split(",") if m.strip()}
    if module_name in trusted or module_name.split(".")[0] in trusted:
        return
    raise UntrustedFactoryError(
        f"{where} names the {kind} factory {name!r}; excise imports code a file names only from modules you "
        f"trust: set {TRUST_VARIABLE}={module_name.split('.')[0]} (comma-separated) if it is yours")


def import_factory(path: str, kind: str) -> Callable[..., Any]:
    """Import ``"package.module:attribute"`` and check it is callable; every failure names the field. The current
    directory is searched too (as ``python -m`` does), so a factory module beside the user's data is found by the
    ``excise`` command as well."""
    module_name, _, attribute = path.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    if not module_name or not attribute or not all(p.isidentifier() for p in module_name.split(".")) \
            or not all(p.isidentifier() for p in attribute.split(".")):
        raise ValueError(f"{kind}={path!r} is not 'package.module:factory' (dotted module, a colon, a function)")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{kind}={path!r}: cannot import module {module_name!r} ({err}); it must be importable "
                         "from the current directory or PYTHONPATH") from err
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ValueError(f"{kind}={path!r}: module {module_name!r} has no attribute {attribute!r}")
        found = getattr(found, part)
    if not callable(found):
        raise ValueError(f"{kind}={path!r}: {attribute!r} is a {type(found).__name__}, not a callable factory")
    return found

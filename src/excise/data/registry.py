"""Name -> builder registry for data sets, so the CLI and benchmark suites pick data by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from excise.data.base import DatasetBundle

DatasetBuilder = Callable[..., DatasetBundle]
_DATASETS: dict[str, DatasetBuilder] = {}


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register ``builder(*, root=None, seed=0, **options) -> DatasetBundle`` under ``name``."""

    def decorator(builder: DatasetBuilder) -> DatasetBuilder:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        _DATASETS[name] = builder
        return builder

    return decorator


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def dataset_builder(name: str) -> DatasetBuilder:
    if name not in _DATASETS:
        raise ValueError(f"dataset={name!r} is not registered; known data sets: {list_datasets()}")
    return _DATASETS[name]


def load_dataset(name: str, *, root: str | Path | None = None, seed: int = 0, **options: Any) -> DatasetBundle:
    """Build a registered data set. ``root`` is the local directory for sets that are not bundled."""
    builder = dataset_builder(name)
    accepted = inspect.signature(builder).parameters
    unknown = [k for k in options if k not in accepted]
    if unknown:
        allowed = [p for p in accepted if p not in ("root", "seed")]
        raise ValueError(f"dataset {name!r} got unknown option(s) {unknown}; it accepts {allowed}")
    bundle = builder(root=root, seed=seed, **options)
    bundle.meta.setdefault("options", dict(options))
    bundle.meta.setdefault("seed", seed)
    return bundle

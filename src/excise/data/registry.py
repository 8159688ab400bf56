"""Name -> builder registry for data sets, so the CLI and benchmark suites pick data by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from excise._registry import Registry
from excise.data.base import DatasetBundle

DatasetBuilder = Callable[..., DatasetBundle]
DATASETS: Registry[DatasetBundle] = Registry("dataset", "data sets")
_DATASETS: dict[str, DatasetBuilder] = DATASETS.builders


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register ``builder(*, root=None, seed=0, **options) -> DatasetBundle`` under ``name``."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def dataset_builder(name: str) -> DatasetBuilder:
    return DATASETS.get(name)


def load_dataset(name: str, *, root: str | Path | None = None, seed: int = 0, **options: Any) -> DatasetBundle:
    """Build a registered data set. ``root`` is the local directory for sets that are not bundled."""
    builder = dataset_builder(name)
    unknown, accepted = DATASETS.unknown_arguments(builder, options)
    if unknown:
        allowed = [p for p in accepted if p not in ("root", "seed")]
        raise ValueError(f"dataset {name!r} got unknown option(s) {unknown}; it accepts {allowed}")
    bundle = builder(root=root, seed=seed, **options)
    bundle.meta.setdefault("options", dict(options))
    bundle.meta.setdefault("seed", seed)
    return bundle

"""Name -> builder registry for data sets, so the CLI and benchmark suites pick data by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from excise._registry import Registry
from excise.data.base import DatasetBundle, load_task

DatasetBuilder = Callable[..., DatasetBundle]
DATASETS: Registry[DatasetBundle] = Registry("dataset", "data sets")
_DATASETS: dict[str, DatasetBuilder] = DATASETS.builders

REQUEST_KINDS = {"multiclass": "samples, class", "multilabel": "samples, target", "segmentation": "target",
                 "detection": "target", "sequence": "samples, class"}


@dataclass(frozen=True)
class DatasetInfo:
    """What a user needs to pick a data set and a request kind, without loading it (``excise datasets``)."""

    task: str
    size: str  # e.g. "1,797 images, 8x8 grey"
    classes: str  # e.g. "10 digits", "5 targets"
    source: str  # "bundled" (ships with a package), "synthetic" (made here) or "local (--root)"
    licence: str
    superclasses: str = ""  # e.g. "5 pairs {k, k+5}": sub-class requests need them

    def to_dict(self, name: str) -> dict[str, str]:
        kinds = REQUEST_KINDS.get(self.task, "")
        if self.superclasses:
            kinds += ", subclass"
        return {"name": name, "task": self.task, "size": self.size, "classes": self.classes,
                "superclasses": self.superclasses, "requests": kinds, "source": self.source, "licence": self.licence}


_INFO: dict[str, DatasetInfo] = {}


def register_dataset(name: str, info: DatasetInfo) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register ``builder(*, root=None, seed=0, **options) -> DatasetBundle`` under ``name``, described by
    ``info``."""
    _INFO[name] = info
    return DATASETS.register(name)


def dataset_info(name: str) -> DatasetInfo:
    dataset_builder(name)  # an unknown name: the registry's error, listing the known ones
    return _INFO[name]


def _load_plugins() -> None:
    """The dense tasks register their views of ``multidigits`` (``multidigits-seg``, ``multidigits-det``) when
    their modules are imported; they sit above this layer, so they are imported on the first query instead."""
    for task in ("segmentation", "detection"):
        load_task(task)


def list_datasets() -> list[str]:
    _load_plugins()
    return DATASETS.names()


def dataset_builder(name: str) -> DatasetBuilder:
    if name not in DATASETS.builders:
        _load_plugins()
    return DATASETS.get(name)


def load_dataset(name: str, *, root: str | Path | None = None, seed: int = 0, **options: Any) -> DatasetBundle:
    """Build a registered data set, or a user's own from ``"package.module:factory"``
    (:mod:`excise.data.external`). ``root`` is the local directory for sets that are not bundled."""
    builder = dataset_builder(name)
    unknown, accepted = DATASETS.unknown_arguments(builder, options)
    if unknown:
        allowed = [p for p in accepted if p not in ("root", "seed")]
        raise ValueError(f"dataset {name!r} got unknown option(s) {unknown}; it accepts {allowed}")
    if name in DATASETS.builders:
        bundle = builder(root=root, seed=seed, **options)
    else:
        from excise.data.external import call_factory

        bundle = call_factory(builder, name, root=root, seed=seed, **options)
    bundle.meta.setdefault("options", dict(options))
    bundle.meta.setdefault("seed", seed)
    return bundle

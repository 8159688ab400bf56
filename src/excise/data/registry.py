"""Name -> builder registry for data sets, so the CLI and benchmark suites pick data by name."""

from __future__ import annotations

import warnings
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
    # Whether ``root`` is read: by default a set whose source is local; a bundled one that can also be read from a
    # folder of its files (Animal-MNIST) says so.
    reads_root: bool | None = None

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


def reads_root(name: str) -> bool:
    """Whether the data set ``name`` is read from a local directory (``root``): a registered set whose source is
    local, or a user's factory (which may take one); a bundled or synthetic set never reads it."""
    info = _INFO.get(name)
    if info is None:
        return True
    return info.source.startswith("local") if info.reads_root is None else info.reads_root


def load_dataset(name: str, *, root: str | Path | None = None, seed: int = 0, **options: Any) -> DatasetBundle:
    """Build a registered data set, or a user's own from ``"package.module:factory"``
    (:mod:`excise.data.external`). ``root`` is the local directory for sets that are not bundled."""
    builder = dataset_builder(name)
    unknown, accepted = DATASETS.unknown_arguments(builder, options)
    if unknown:
        allowed = [p for p in accepted if p not in ("root", "seed")]
        raise ValueError(f"dataset {name!r} got unknown option(s) {unknown}; it accepts {allowed}")
    if root is not None:
        # '~/data' given quoted, or from a file, is the user's home, as in a shell; a str stays a str (a user's
        # factory may join it as text).
        root = str(Path(root).expanduser()) if isinstance(root, str) else Path(root).expanduser()
        info = _INFO.get(name)
        if not reads_root(name):
            warnings.warn(f"root={str(root)!r} is not read by the {info.source} data set {name!r} (it is not loaded "
                          "from a local directory); to train on your own files, bring them in as a data set of your "
                          "own (package.module:factory)", UserWarning, stacklevel=2)
    if name in DATASETS.builders:
        bundle = builder(root=root, seed=seed, **options)
    else:
        from excise.data.external import call_factory

        bundle = call_factory(builder, name, root=root, seed=seed, **options)
    for which, part in (("train", bundle.train), ("test", bundle.test)):
        if len(part) == 0:  # a user's factory is refused the same way (excise.data.external)
            raise ValueError(f"dataset {name!r}: the {which} part is empty" + (
                f" (read from root={str(root)!r}: are its {which} files complete?)" if root is not None else ""))
    bundle.meta.setdefault("options", dict(options))
    bundle.meta.setdefault("seed", seed)
    return bundle

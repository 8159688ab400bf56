"""Data sets: bundled (digits, MNIST subset, Animal-MNIST), synthetic multi-target canvases, and local-directory loaders
for CIFAR-10/100 and CelebA. Nothing here downloads."""

from excise.data import animal_mnist as _animal_mnist  # noqa: F401  (registers)
from excise.data import celeba as _celeba  # noqa: F401  (registers)
from excise.data import cifar as _cifar  # noqa: F401  (registers)
from excise.data import digits as _digits  # noqa: F401  (registers)
from excise.data import markov as _markov  # noqa: F401  (registers)
from excise.data import mnist as _mnist  # noqa: F401  (registers)
from excise.data import multidigits as _multidigits  # noqa: F401  (registers)
from excise.data.base import DatasetBundle, LabeledData
from excise.data.registry import DatasetInfo, dataset_info, list_datasets, load_dataset, reads_root, register_dataset

__all__ = ["DatasetBundle", "DatasetInfo", "LabeledData", "dataset_info", "list_datasets", "load_dataset", "reads_root",
           "register_dataset"]

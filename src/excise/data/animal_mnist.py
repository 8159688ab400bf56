"""Animal-MNIST: 10,000 animal silhouettes, 28x28 grey, 1,000 per class, in MNIST's format: no download, ever.

Mohammadi, "Animal-Shape: an animal silhouette extension to MNIST", the ``animal-mnist`` package (PyPI,
MIT licence), which ships the images inside the wheel. Ten classes in the package's label order: bear, bird,
cat, cow, dog, elephant, giraffe, horse, sheep, zebra (checked by eye on the images). A second real 28x28
image set beside ``mnist``, of another kind (shapes, not strokes), for checking that a default holds on more
than one data set.

Install with ``pip install --no-deps animal-mnist``: the package declares TensorFlow as a dependency for its own
MNIST helper, which excise never imports — excise reads only the two data files, from the installed package or
from ``root``. The files are pickled numpy arrays; they are read with an unpickler that accepts nothing but
numpy arrays (a pickle can otherwise run code).

Two registered views:

- ``animal-mnist``: the 10 animal classes;
- ``animal-mnist-super``: 3 super-classes, :data:`ANIMAL_GROUPS` — wild {bear, elephant, giraffe, zebra}, farm
  {cow, horse, sheep}, pets {bird, cat, dog} — with the animal kept as the sub-class label
  (``subclass:horse`` forgets horses inside the farm super-class; three or four siblings each).
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from excise.data.base import DatasetBundle, LabeledData
from excise.data.mnist import check_size, image_part, subsample_and_split
from excise.data.plain_pickle import load_plain_pickle
from excise.data.registry import DatasetInfo, register_dataset

ANIMAL_TOTAL = 10000
ANIMAL_NAMES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
ANIMAL_GROUPS = ((0, 5, 6, 9), (3, 7, 8), (1, 2, 4))
"""``animal-mnist-super``'s super-classes: wild, farm, pets (indices into :data:`ANIMAL_NAMES`)."""
DATA_FILE = "animal_data_version_3.gz"
LABEL_FILE = "animal_label_version_3.gz"
_SOURCE = "animal-mnist 0.4 (PyPI, MIT): 10,000 silhouettes, 1,000 per class"
_HINT = (f"the animal-mnist data set reads {DATA_FILE} and {LABEL_FILE}: install the package that ships them with "
         "`pip install --no-deps animal-mnist` (--no-deps: its TensorFlow requirement is for code excise never "
         "runs), or pass root= / --root a directory holding the two files")


def data_dir(root: str | Path | None) -> Path:
    """The directory holding the two files: ``root`` when given, else the installed package's data directory
    (located without importing the package's loader, which imports TensorFlow)."""
    if root is not None:
        folder = Path(root).expanduser()
    else:
        spec = importlib.util.find_spec("animal_mnist")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"animal_mnist is not installed; {_HINT}")
        folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"
    missing = [name for name in (DATA_FILE, LABEL_FILE) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}; {_HINT}")
    return folder


def _read_array(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        array = load_plain_pickle(handle.read(), "an Animal-MNIST data file")
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path} holds a {type(array).__name__}, expected a numpy array")
    return array


@lru_cache(maxsize=2)
def animal_arrays(root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 images as ``N x 1 x 28 x 28`` float32 in [0, 1] and their ``N`` int64 labels (read-only)."""
    folder = data_dir(root)
    pixels, labels = _read_array(folder / DATA_FILE), _read_array(folder / LABEL_FILE)
    if pixels.shape != (ANIMAL_TOTAL, 28, 28) or labels.shape != (ANIMAL_TOTAL,):
        raise ValueError(f"{folder}: expected {ANIMAL_TOTAL} images of 28x28 and as many labels, got "
                         f"{pixels.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= len(ANIMAL_NAMES):
        raise ValueError(f"{folder / LABEL_FILE}: labels must lie in 0..{len(ANIMAL_NAMES) - 1}")
    images = (pixels.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    labels = labels.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _bundle(name: str, root: str | Path | None, seed: int, test_fraction: float, size: int | None,
            groups: tuple[tuple[int, ...], ...] | None) -> DatasetBundle:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} must lie in (0, 1)")
    size = check_size(size, test_fraction, total=ANIMAL_TOTAL)
    images, labels = animal_arrays(None if root is None else str(root))
    train_idx, test_idx = subsample_and_split(labels, size, test_fraction, seed)

    def part(idx: np.ndarray) -> LabeledData:
        return image_part(images, labels, idx, ANIMAL_NAMES, name, index_key="animal_index", groups=groups)

    info = {"source": _SOURCE, "size": size}
    if groups is not None:
        info["groups"] = [list(g) for g in groups]
    return DatasetBundle(name, part(train_idx), part(test_idx), info)


@register_dataset("animal-mnist", DatasetInfo(
    "multiclass", "10,000 images, 28x28 grey (8,000 train / 2,000 test)", "10 animals",
    "bundled (pip install --no-deps animal-mnist)", "Animal-MNIST, MIT", reads_root=True))
def animal_mnist(*, root: str | Path | None = None, seed: int = 0, test_fraction: float = 0.2,
                 size: int | None = None) -> DatasetBundle:
    """Animal silhouettes (multiclass, 10 classes, ``1 x 28 x 28`` in [0, 1]).

    Args:
        root: a directory holding the package's two data files; ``None`` reads them from the installed package.
        seed: drives the stratified subsample and the stratified train/test split.
        test_fraction: share of the (subsampled) images held out as the test set.
        size: total number of images to keep (train + test), stratified by class; ``None`` keeps all 10,000.
    """
    return _bundle("animal-mnist", root, seed, test_fraction, size, None)


@register_dataset("animal-mnist-super", DatasetInfo(
    "multiclass", "10,000 images, 28x28 grey (8,000 train / 2,000 test)", "3 super-classes",
    "bundled (pip install --no-deps animal-mnist)", "Animal-MNIST, MIT",
    superclasses="wild {bear,elephant,giraffe,zebra} farm {cow,horse,sheep} pets {bird,cat,dog}", reads_root=True))
def animal_mnist_super(*, root: str | Path | None = None, seed: int = 0, test_fraction: float = 0.2,
                       size: int | None = None) -> DatasetBundle:
    """Animal-MNIST grouped into :data:`ANIMAL_GROUPS`, the animal kept as the sub-class label. Same split as
    ``animal-mnist`` for a given seed and size."""
    return _bundle("animal-mnist-super", root, seed, test_fraction, size, ANIMAL_GROUPS)

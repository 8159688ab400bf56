"""CIFAR-10, CIFAR-100 and CIFAR-20 from the official *python* pickle batches in a local directory.

excise never downloads: get ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` from the CIFAR page
yourself, extract them, and pass ``root`` (the extracted folder or the folder that contains it).

- ``cifar10``: 10 classes, ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.
- ``cifar100``: the 100 fine classes, ``cifar-100-python/{train, test, meta}``.
- ``cifar20``: the same CIFAR-100 images with the 20 coarse super-classes as targets and the fine class as
  ``subclass_targets`` (``subclass_parent`` maps each fine class to its super-class, read from the data),
  the setting of sub-class forgetting ("forget *rocket* inside *vehicles 2*").

The train/test split is the official one. ``max_train`` / ``max_test`` keep a stratified, seeded subsample
(stratified by the fine class for CIFAR-100/20) for CPU-sized runs. Inputs are ``N x 3 x 32 x 32`` float32
in [0, 1] (no normalisation: a model or transform owns that).

The official files are Python pickles. Unpickling can run arbitrary code, so they are read with an
unpickler that only resolves the few numpy names a pickled array needs and refuses everything else.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from excise.data.base import DatasetBundle, LabeledData
from excise.data.plain_pickle import RefusedGlobal, load_plain_pickle
from excise.data.registry import DatasetInfo, register_dataset

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES: tuple[str, ...] = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
CIFAR100_DIR = "cifar-100-python"
CIFAR100_FILES: tuple[str, ...] = ("train", "test", "meta")

def _load_pickle(path: Path) -> dict[Any, Any]:
    try:
        with open(path, "rb") as f:
            # encoding="bytes" is what the CIFAR page prescribes for its Python 2 pickles: keys come back as bytes.
            obj = load_plain_pickle(f.read(), "a CIFAR batch file", encoding="bytes")
    except RefusedGlobal as err:
        # Named by file: an official batch never names code, so this file is not one (or was tampered with).
        raise ValueError(f"{path}: {err}") from err
    except (EOFError, pickle.UnpicklingError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
        # KeyError/IndexError/TypeError: bytes that are no pickle at all (an HTML "Not Found" page saved under the
        # batch's name) read as opcodes a pickle never holds in that order.
        # An empty or truncated file is what an interrupted download or extraction leaves behind.
        raise ValueError(f"{path} is not a readable CIFAR batch file ({type(err).__name__}: {err}); it looks "
                         "truncated or corrupt: extract the official archive again") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a dict as an official CIFAR batch file does (got {type(obj).__name__})")
    return obj


def _field(batch: dict[Any, Any], key: str, path: Path) -> Any:
    """A field by its official bytes key (``b"data"``), also accepting str keys of re-pickled copies."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    found = [k.decode() if isinstance(k, bytes) else str(k) for k in batch]
    raise ValueError(f"{path} has no {key!r} entry; it has {found}")


def _names(values: Sequence[Any]) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _integers(values: Any, key: str, path: Path, low: int, high: int | None = None,
              dtype: type = np.int64) -> np.ndarray:
    """A field's values as int64, refused — naming the file — unless they are whole numbers in [low, high]: a cast
    would keep a wrong file's values silently (float pixels in [0, 1] became black, 256 wrapped to 0, a label 3.7
    became 3, text failed with "invalid literal for int()": an outside audit)."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as err:  # ragged lists
        raise ValueError(f"{path}: {key!r} is not an array of numbers ({err})") from err
    whole = array.dtype.kind in "iub" or (array.dtype.kind == "f" and bool(np.all(np.isfinite(array)))
                                          and np.array_equal(array, np.round(array)))
    if not whole:
        raise ValueError(f"{path}: {key!r} must hold whole numbers (the official files hold integers), got "
                         f"{array.dtype}")
    # Checked on the values as stored: an official batch's uint8 pixels are not copied into int64 first.
    if array.size and (array.min() < low or (high is not None and array.max() > high)):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{path}: {key!r} values span [{array.min()}, {array.max()}], expected {bounds}")
    return array.astype(dtype, copy=False)


def _images(batch: dict[Any, Any], path: Path) -> np.ndarray:
    data = _integers(_field(batch, "data", path), "data", path, 0, 255, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be N x 3072 uint8 (32x32 RGB, channel-major), got {data.shape}")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major: already C x H x W.
    return data.reshape(-1, 3, 32, 32)


def _resolve_dir(root: str | Path | None, name: str, folder: str, files: Sequence[str]) -> Path:
    if root is None:
        raise ValueError(
            f"{name} is read from a local directory and never downloaded: pass --root DIR (Python: root=DIR), DIR "
            f"holding {folder}/ (or {folder}/ itself) with {list(files)}"
        )
    base = Path(root).expanduser()
    for candidate in (base / folder, base):
        if all((candidate / f).is_file() for f in files):
            return candidate
    look_in = base / folder if (base / folder).is_dir() else base
    missing = [f for f in files if not (look_in / f).is_file()]
    layout = "\n".join(f"    {folder}/{f}" for f in files)
    raise FileNotFoundError(
        f"{name} files not found under root={str(root)!r} (looked in {str(look_in)!r}; missing {missing}).\n"
        f"Expected the official python version, extracted, with root pointing at its parent or at {folder}/:\n"
        f"  <root>/\n{layout}\n"
        "excise never downloads data."
    )


def check_cap(name: str, value: int | None) -> int | None:
    """A ``max_train``-style cap: a positive int, or None for no cap."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int or None (keep everything)")
    return int(value)


def _subsample(strata: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """Sorted row indices: all rows, or ``cap`` of them drawn in proportion to each stratum (seeded)."""
    n = len(strata)
    if cap is None or cap >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    values, counts = np.unique(strata, return_counts=True)
    # Largest-remainder apportionment: exact total, every stratum within one of its proportional share.
    quota = counts * cap / n
    take = np.floor(quota).astype(int)
    extra = np.argsort(-(quota - take), kind="stable")[: cap - take.sum()]
    take[extra] += 1
    chosen = [rng.choice(np.flatnonzero(strata == v), size=t, replace=False) for v, t in zip(values, take, strict=True)]
    return np.sort(np.concatenate(chosen))


def _check_labels(labels: np.ndarray, count: int, key: str, folder: Path) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= count):
        raise ValueError(
            f"{folder}: {key} span [{labels.min()}, {labels.max()}] but the meta file names only {count} classes"
        )


def _part(
    images: np.ndarray, targets: np.ndarray, keep: np.ndarray, name: str, classes: tuple[str, ...], **kw: Any
) -> LabeledData:
    return LabeledData(
        inputs=torch.from_numpy(images[keep].astype(np.float32) / 255.0),
        targets=torch.from_numpy(targets[keep].astype(np.int64)),
        classes=classes,
        name=name,
        **kw,
    )


@register_dataset("cifar10", DatasetInfo(
    "multiclass", "60,000 images, 32x32 colour (50,000 train / 10,000 test)", "10 classes", "local (--root)",
    "none stated by its authors (Krizhevsky 2009)"))
def cifar10(
    *, root: str | Path | None = None, seed: int = 0, max_train: int | None = None, max_test: int | None = None
) -> DatasetBundle:
    """CIFAR-10 (50,000 train / 10,000 test, 10 classes) from ``cifar-10-batches-py``.

    Args:
        root: the extracted ``cifar-10-batches-py`` folder or its parent (required).
        seed: drives the stratified subsample when ``max_train`` / ``max_test`` are set.
        max_train, max_test: keep at most this many train / test images (stratified by class).
    """
    max_train, max_test = check_cap("max_train", max_train), check_cap("max_test", max_test)
    folder = _resolve_dir(root, "CIFAR-10", CIFAR10_DIR, CIFAR10_FILES)
    meta_path = folder / "batches.meta"
    classes = _names(_field(_load_pickle(meta_path), "label_names", meta_path))

    def read(files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for f in files:
            batch = _load_pickle(folder / f)
            xs.append(_images(batch, folder / f))
            ys.append(_integers(_field(batch, "labels", folder / f), "labels", folder / f, 0))
            if len(ys[-1]) != len(xs[-1]):
                raise ValueError(f"{folder / f}: {len(xs[-1])} images but {len(ys[-1])} labels")
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = read(CIFAR10_FILES[:5])
    x_test, y_test = read(["test_batch"])
    _check_labels(np.concatenate([y_train, y_test]), len(classes), "labels", folder)
    train = _part(x_train, y_train, _subsample(y_train, max_train, seed), "cifar10", classes)
    test = _part(x_test, y_test, _subsample(y_test, max_test, seed + 1), "cifar10", classes)
    return DatasetBundle("cifar10", train, test, {"source": str(folder), "split": "official"})


def _read_cifar100(root: str | Path | None, name: str) -> dict[str, Any]:
    folder = _resolve_dir(root, name, CIFAR100_DIR, CIFAR100_FILES)
    meta_path = folder / "meta"
    meta = _load_pickle(meta_path)
    out: dict[str, Any] = {
        "folder": folder,
        "fine_names": _names(_field(meta, "fine_label_names", meta_path)),
        "coarse_names": _names(_field(meta, "coarse_label_names", meta_path)),
    }
    for split in ("train", "test"):
        batch = _load_pickle(folder / split)
        out[f"x_{split}"] = _images(batch, folder / split)
        for key in ("fine_labels", "coarse_labels"):
            labels = _integers(_field(batch, key, folder / split), key, folder / split, 0)
            if len(labels) != len(out[f"x_{split}"]):
                raise ValueError(f"{folder / split}: {len(out[f'x_{split}'])} images but {len(labels)} {key}")
            out[f"{key}_{split}"] = labels
    for key, names in (("fine_labels", "fine_names"), ("coarse_labels", "coarse_names")):
        _check_labels(np.concatenate([out[f"{key}_train"], out[f"{key}_test"]]), len(out[names]), key, folder)
    return out


@register_dataset("cifar100", DatasetInfo(
    "multiclass", "60,000 images, 32x32 colour (50,000 train / 10,000 test)", "100 classes", "local (--root)",
    "none stated by its authors (Krizhevsky 2009)"))
def cifar100(
    *, root: str | Path | None = None, seed: int = 0, max_train: int | None = None, max_test: int | None = None
) -> DatasetBundle:
    """CIFAR-100 (50,000 train / 10,000 test, 100 fine classes) from ``cifar-100-python``.

    Args:
        root: the extracted ``cifar-100-python`` folder or its parent (required).
        seed: drives the stratified subsample when ``max_train`` / ``max_test`` are set.
        max_train, max_test: keep at most this many train / test images (stratified by class).
    """
    max_train, max_test = check_cap("max_train", max_train), check_cap("max_test", max_test)
    d = _read_cifar100(root, "CIFAR-100")
    fine_tr, fine_te = d["fine_labels_train"], d["fine_labels_test"]
    train = _part(d["x_train"], fine_tr, _subsample(fine_tr, max_train, seed), "cifar100", d["fine_names"])
    test = _part(d["x_test"], fine_te, _subsample(fine_te, max_test, seed + 1), "cifar100", d["fine_names"])
    return DatasetBundle("cifar100", train, test, {"source": str(d["folder"]), "split": "official"})


@register_dataset("cifar20", DatasetInfo(
    "multiclass", "60,000 images, 32x32 colour (50,000 train / 10,000 test)", "20 super-classes",
    "local (--root)", "none stated by its authors (Krizhevsky 2009)",
    superclasses="100 fine classes, 5 per super-class"))
def cifar20(
    *, root: str | Path | None = None, seed: int = 0, max_train: int | None = None, max_test: int | None = None
) -> DatasetBundle:
    """CIFAR-100 images with the 20 coarse super-classes as targets and the fine classes as sub-classes.

    Args:
        root: the extracted ``cifar-100-python`` folder or its parent (required).
        seed: drives the stratified subsample when ``max_train`` / ``max_test`` are set.
        max_train, max_test: keep at most this many train / test images (stratified by fine class).
    """
    max_train, max_test = check_cap("max_train", max_train), check_cap("max_test", max_test)
    d = _read_cifar100(root, "CIFAR-100 (for cifar20)")
    fine = np.concatenate([d["fine_labels_train"], d["fine_labels_test"]])
    coarse = np.concatenate([d["coarse_labels_train"], d["coarse_labels_test"]])
    # The fine -> coarse map is read from the data (not hard-coded) and must be a function.
    parent: list[int] = []
    for j, fine_name in enumerate(d["fine_names"]):
        parents = np.unique(coarse[fine == j])
        if len(parents) != 1:
            raise ValueError(
                f"{d['folder']}: fine class {j} ({fine_name!r}) has coarse labels {parents.tolist()}; "
                "every fine class must belong to exactly one coarse class"
            )
        parent.append(int(parents[0]))
    sub = {"subclasses": d["fine_names"], "subclass_parent": tuple(parent)}

    def part(split: str, cap: int | None, sub_seed: int) -> LabeledData:
        fine_s = d[f"fine_labels_{split}"]
        keep = _subsample(fine_s, cap, sub_seed)
        return _part(
            d[f"x_{split}"], d[f"coarse_labels_{split}"], keep, "cifar20", d["coarse_names"],
            subclass_targets=torch.from_numpy(fine_s[keep]), **sub,
        )  # fmt: skip

    return DatasetBundle(
        "cifar20", part("train", max_train, seed), part("test", max_test, seed + 1),
        {"source": str(d["folder"]), "split": "official"},
    )  # fmt: skip

"""CelebA face attributes from a local directory: a multi-label (multi-target) data set. Never downloads.

Expected layout (the official "Align&Cropped Images" release and its annotation files; ``root`` may also
be the parent of a ``celeba/`` folder laid out like this, as torchvision stores it)::

    <root>/list_attr_celeba.txt       line 1: image count; line 2: the 40 attribute names;
                                      then one line per image: "<file> v1 ... v40" with v in {-1, 1}
    <root>/list_eval_partition.txt    "<file> <partition>", partition 0 = train, 1 = valid, 2 = test
    <root>/img_align_celeba/<file>    the 178x218 aligned JPEGs (000001.jpg ...)

Targets are the multi-hot attributes (``-1 -> 0``, ``1 -> 1``), one column per attribute of
``attributes`` (default all 40), the setting of target-level unlearning (forget *Eyeglasses*, keep
*Smiling* on the same faces, as in the Essential-Graph paper's CelebA settings).

Choices where the sources leave room:

- Split: the official partition (0 = train, 2 = test). The validation partition (1) is dropped unless
  ``valid_partition`` sends it to ``"train"`` or ``"test"``. (The Essential-Graph code uses its own
  75/25 split by file id instead; that split is not reproduced here.)
- Images are centre-cropped to a square (the aligned faces are 178x218, so 20 rows go off the top and
  bottom) and resized with bilinear filtering to ``image_size`` (default 64), keeping faces undistorted.
- ``max_train`` / ``max_test`` keep a seeded uniform random subset of each part; only the kept images are
  decoded. At 64x64 the full 162,770 training faces need about 8 GB as float32, so cap it on small machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from excise.data.base import DatasetBundle, LabeledData
from excise.data.cifar import check_cap
from excise.data.registry import DatasetInfo, register_dataset
from excise.progress import progress_bar

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
VALID_PARTITION_CHOICES: tuple[str, ...] = ("drop", "train", "test")
_LAYOUT = (
    "Expected the official CelebA files (excise never downloads data):\n"
    f"  <root>/{ATTR_FILE}\n"
    f"  <root>/{PARTITION_FILE}\n"
    f"  <root>/{IMAGE_DIR}/000001.jpg ...\n"
    "(root may also be the parent of a celeba/ folder with this layout)"
)


def _resolve_root(root: str | Path | None) -> Path:
    if root is None:
        raise ValueError(
            "celeba is read from a local directory: pass --root DIR (Python: root=DIR), DIR holding the CelebA "
            "files.\n"
            + _LAYOUT
        )
    base = Path(root).expanduser()
    for candidate in (base, base / "celeba"):
        if (candidate / ATTR_FILE).is_file() and (candidate / PARTITION_FILE).is_file():
            if (candidate / IMAGE_DIR).is_dir():
                return candidate
    look_in = base / "celeba" if (base / "celeba").is_dir() else base
    missing = [
        f if f != IMAGE_DIR else f"{IMAGE_DIR}/"
        for f in (ATTR_FILE, PARTITION_FILE, IMAGE_DIR)
        if not (look_in / f).exists()
    ]
    raise FileNotFoundError(f"CelebA files not found under root={str(root)!r} (missing {missing}).\n{_LAYOUT}")


def _image_dir(folder: Path) -> Path:
    images = folder / IMAGE_DIR
    # The widely mirrored zip extracts to img_align_celeba/img_align_celeba/; accept that nesting too.
    nested = images / IMAGE_DIR
    return nested if nested.is_dir() and not any(images.glob("*.jpg")) else images


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``list_attr_celeba.txt``: (attribute names, file names, ``N x 40`` int8 values in {0, 1})."""
    with open(path) as f:
        lines = [line.split() for line in f if line.strip()]
    if len(lines) < 2 or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise ValueError(f"{path}: line 1 must be the image count and line 2 the attribute names")
    count, names, rows = int(lines[0][0]), lines[1], lines[2:]
    if len(rows) != count:
        raise ValueError(f"{path}: line 1 announces {count} images but {len(rows)} rows follow")
    bad = next((i for i, r in enumerate(rows) if len(r) != len(names) + 1), None)
    if bad is not None:
        raise ValueError(
            f"{path}: row {bad + 3} has {len(rows[bad]) - 1} values; expected one per attribute ({len(names)})"
        )
    files = [r[0] for r in rows]
    values = np.array([r[1:] for r in rows], dtype=np.int64).reshape(len(rows), len(names))
    if not np.isin(values, (-1, 0, 1)).all():
        raise ValueError(f"{path}: attribute values must be -1 or 1 (0 also read as absent)")
    return names, files, (values > 0).astype(np.int8)


def read_partition(path: Path) -> dict[str, int]:
    """Parse ``list_eval_partition.txt`` into ``{file name: partition}`` (0 train, 1 valid, 2 test)."""
    out: dict[str, int] = {}
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{path}: line {n} is {line.strip()!r}; expected '<file> <0|1|2>'")
            out[parts[0]] = int(parts[1])
    return out


def _select_attributes(requested: Sequence[str] | None, known: list[str]) -> list[int]:
    if requested is None:
        return list(range(len(known)))
    if isinstance(requested, str) or not isinstance(requested, Sequence) or len(requested) == 0:
        raise ValueError(f"attributes={requested!r} must be a non-empty list of attribute names or None (all)")
    unknown = [a for a in requested if a not in known]
    if unknown:
        raise ValueError(f"attributes={list(requested)!r}: unknown {unknown}; known attributes: {known}")
    if len(set(requested)) != len(requested):
        raise ValueError(f"attributes={list(requested)!r} lists an attribute twice")
    return [known.index(a) for a in requested]


def _check_images_exist(directory: Path, files: Sequence[str]) -> None:
    """Every image a load will decode, checked before the first is decoded: a partial extraction fails in a
    second, not after minutes of decoding."""
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} CelebA image(s) listed in {ATTR_FILE} are missing from {str(directory)!r} (first: "
            f"{missing[:3]}).\n{_LAYOUT}"
        )


def _load_images(directory: Path, files: Sequence[str], image_size: int, description: str) -> torch.Tensor:
    from PIL import Image

    _check_images_exist(directory, files)
    out = np.empty((len(files), 3, image_size, image_size), dtype=np.uint8)
    with progress_bar(description, total=len(files)) as bar:
        for i, name in enumerate(files):
            path = directory / name
            try:
                with Image.open(path) as img:
                    img = img.convert("RGB")
                    w, h = img.size
                    side = min(w, h)
                    left, top = (w - side) // 2, (h - side) // 2
                    img = img.crop((left, top, left + side, top + side)).resize(
                        (image_size, image_size), Image.Resampling.BILINEAR
                    )
                    out[i] = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
            except OSError as err:  # PIL: a truncated or non-image file (UnidentifiedImageError is an OSError)
                raise ValueError(
                    f"CelebA image {str(path)!r} cannot be decoded ({err}); re-extract the archive"
                ) from err
            bar.advance()
    return torch.from_numpy(out).float().div_(255.0)


@register_dataset("celeba", DatasetInfo(
    "multilabel", "202,599 face images (resized, default 64x64)", "40 attributes", "local (--root)",
    "CelebA agreement: non-commercial research only"))
def celeba(
    *,
    root: str | Path | None = None,
    seed: int = 0,
    attributes: list[str] | None = None,
    image_size: int = 64,
    max_train: int | None = None,
    max_test: int | None = None,
    valid_partition: str = "drop",
) -> DatasetBundle:
    """CelebA as a multi-label task over ``attributes`` (``3 x image_size x image_size`` in [0, 1]).

    Args:
        root: the folder holding the CelebA files (see the module docstring), required.
        seed: drives the random subset when ``max_train`` / ``max_test`` are set.
        attributes: attribute names to use as targets, in this order; ``None`` keeps all 40.
        image_size: side of the square images after centre crop and resize.
        max_train, max_test: keep at most this many train / test images (seeded random subset).
        valid_partition: where the official validation partition goes: ``"drop"``, ``"train"`` or ``"test"``.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size={image_size!r} must be a positive int (pixels per side)")
    if valid_partition not in VALID_PARTITION_CHOICES:
        raise ValueError(f"valid_partition={valid_partition!r} is not one of {VALID_PARTITION_CHOICES}")
    max_train, max_test = check_cap("max_train", max_train), check_cap("max_test", max_test)
    folder = _resolve_root(root)
    names, files, values = read_attributes(folder / ATTR_FILE)
    columns = _select_attributes(attributes, names)
    partition = read_partition(folder / PARTITION_FILE)
    unpartitioned = [f for f in files if f not in partition]
    if unpartitioned:
        raise ValueError(
            f"{folder / PARTITION_FILE} has no partition for {len(unpartitioned)} image(s) of {ATTR_FILE}, "
            f"e.g. {unpartitioned[:3]}"
        )
    part_of = np.array([partition[f] for f in files])
    train_parts, test_parts = {0}, {2}
    if valid_partition != "drop":
        (train_parts if valid_partition == "train" else test_parts).add(1)
    images_dir = _image_dir(folder)
    rng_train, rng_test = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))

    def rows_of(parts: set[int], cap: int | None, rng: np.random.Generator) -> np.ndarray:
        rows = np.flatnonzero(np.isin(part_of, list(parts)))
        if cap is not None and cap < len(rows):
            rows = np.sort(rng.choice(rows, size=cap, replace=False))
        return rows

    def part(rows: np.ndarray, label: str) -> LabeledData:
        chosen = [files[i] for i in rows]
        return LabeledData(
            inputs=_load_images(images_dir, chosen, int(image_size), f"celeba {label} images"),
            targets=torch.from_numpy(values[np.ix_(rows, columns)].astype(np.float32)),
            classes=tuple(names[c] for c in columns),
            task="multilabel",
            extras={"filenames": chosen},
            name="celeba",
        )

    train_rows, test_rows = rows_of(train_parts, max_train, rng_train), rows_of(test_parts, max_test, rng_test)
    _check_images_exist(images_dir, [files[i] for i in np.concatenate([train_rows, test_rows])])
    train, test = part(train_rows, "train"), part(test_rows, "test")
    meta = {"source": str(folder), "split": f"official (validation partition: {valid_partition})"}
    return DatasetBundle("celeba", train, test, meta)

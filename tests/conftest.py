"""Shared, session-scoped fixtures: one small seeded model per data set, trained once for the whole suite."""

from __future__ import annotations

import os

os.environ.setdefault("EXCISE_PROGRESS", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

from excise.data import load_dataset  # noqa: E402
from excise.experiment import RunRecord, run_method, train_original  # noqa: E402
from excise.metrics import EvalViews  # noqa: E402
from excise.requests import ForgetRequest  # noqa: E402
from excise.training import TrainConfig  # noqa: E402

# One torch thread per test process unless OMP_NUM_THREADS says otherwise: the README's command runs two
# pytest-xdist workers on 2 cores, and a model trained here depends on the thread count, so a module run alone
# (`pytest tests/test_x.py`) trains exactly the models the full suite does, on any number of cores.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))


# The recipe every test model is trained with: ~1 s on 2 CPU cores for the digits.
RECIPE = TrainConfig(epochs=15, batch_size=64, lr=0.05)
FORGET_CLASS = 3


@pytest.fixture(scope="session")
def recipe() -> TrainConfig:
    return RECIPE


@pytest.fixture(scope="module")
def one_thread():
    """Torch pinned to one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``), the
    previous count restored afterwards. Two reasons, each module says which: tiny models gain nothing from a
    second thread while spinning OpenMP threads cost on a shared machine, and a trained model depends on the
    thread count (float summation order) like on a seed, so numbers a module quotes are pinned to one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def digits_model(digits):
    model, _ = train_original(digits, "small_cnn", RECIPE, seed=0, width=16)
    return model


@pytest.fixture(scope="session")
def class_views(digits) -> EvalViews:
    return EvalViews.from_bundle(digits, ForgetRequest(kind="class", labels=(FORGET_CLASS,)))


@pytest.fixture(scope="session")
def samples_views(digits) -> EvalViews:
    return EvalViews.from_bundle(digits, ForgetRequest(kind="samples", fraction=0.1, seed=0))


@pytest.fixture(scope="session")
def class_reference(digits_model, class_views) -> RunRecord:
    """The retrained model for the full-class request, with its metrics and wall time."""
    _, record = run_method("retrain", digits_model, class_views, RECIPE, seed=0)
    return record


@pytest.fixture(scope="session")
def samples_reference(digits_model, samples_views) -> RunRecord:
    _, record = run_method("retrain", digits_model, samples_views, RECIPE, seed=0)
    return record


@pytest.fixture(scope="session")
def digits_super():
    return load_dataset("digits-super", seed=0)


@pytest.fixture(scope="session")
def digits_super_model(digits_super):
    model, _ = train_original(digits_super, "small_cnn", RECIPE, seed=0, width=16)
    return model


@pytest.fixture(scope="session")
def subclass_views(digits_super) -> EvalViews:
    return EvalViews.from_bundle(digits_super, ForgetRequest(kind="subclass", labels=("8",)))


@pytest.fixture(scope="session")
def subclass_reference(digits_super_model, subclass_views) -> RunRecord:
    _, record = run_method("retrain", digits_super_model, subclass_views, RECIPE, seed=0)
    return record

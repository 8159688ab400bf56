"""The benchmark's model cache and the code versions that key it.

Trained originals, retrained references and U-LiRA shadows are stored as checkpoints named by the content hash
of what produced them (data, model, recipe, request, seed, and :func:`code_version` of the code that trains and
evaluates them), written once and sha256-checked on every load. A resumed run refuses results computed by other
code (:func:`results_code_version`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

import excise
from excise.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from excise.hashing import content_hash, model_sha256

_CODE_FILES = (
    "training.py", "requests.py", "experiment.py", "methods/base.py", "methods/retrain.py",
    "models/*.py", "metrics/*.py", "tasks/*.py", "sequential.py", "data/*.py", "bench/ulira.py",
    "provenance/history.py", "hashing.py",
)
# Modules that only present results (or drive the run) and cannot change a number in a record.
_PRESENTATION_FILES = ("bench/report.py", "cli.py", "demo.py", "progress.py", "__main__.py",
                       "provenance/certificate.py", "provenance/ledger.py", "provenance/merkle.py",
                       "provenance/verify.py")


@lru_cache(maxsize=1)
def results_code_version() -> str:
    """Hash of every package module that can change a recorded number (all but the presentation ones).

    A resumed run refuses records computed by other code, so one results file never mixes code versions."""
    root = Path(excise.__file__).parent
    h = hashlib.sha256(f"{excise.__version__}|{torch.__version__}".encode())
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if name not in _PRESENTATION_FILES:
            h.update(name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the package version, torch version and the source that trains and evaluates the cached models.

    Editing a method other than retrain does not invalidate the cache (those models do not depend on it);
    editing the training loop, the models, the request splitter or the metrics does.
    """
    root = Path(excise.__file__).parent
    h = hashlib.sha256(f"{excise.__version__}|{torch.__version__}".encode())
    for pattern in _CODE_FILES:
        for path in sorted(root.glob(pattern)):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def training_key() -> dict[str, Any]:
    """What besides the data, model, recipe and seed decides a cached model's weights: the code that trains it and
    the torch thread count (a reduction split over another number of threads rounds differently, so the weights
    differ in their last bits and a run at 2 threads is not bit-identical to one at 1). A run at another thread
    count trains its own models instead of reading ones it could not reproduce."""
    return {"code": code_version(), "torch_threads": torch.get_num_threads()}


# --- cache -------------------------------------------------------------------------------------
class ModelCache:
    """Checkpoints keyed by a content hash; written once, sha256-checked on every load."""

    def __init__(self, directory: str | Path, *, writable: bool = True) -> None:
        self.directory = Path(directory)
        self.writable = writable

    def path(self, kind: str, payload: dict[str, Any]) -> Path:
        return self.directory / f"{kind}-{content_hash(payload)[:24]}.safetensors"

    def get_or_build(
        self, kind: str, payload: dict[str, Any], build: Callable[[], tuple[nn.Module, dict[str, Any]]]
    ) -> tuple[nn.Module, dict[str, Any], bool]:
        """``(model, meta, hit)``; ``build() -> (model, meta)`` runs on a miss and its result is stored."""
        path = self.path(kind, payload)
        if path.exists():
            try:
                read_meta(path)
            except CheckpointError as err:
                if "has no sidecar" not in str(err):
                    raise
                if self.writable:  # only the writing rank touches the files
                    path.unlink(missing_ok=True)  # weights without a sidecar: a save killed between the renames
            else:
                checkpoint = load_checkpoint(path)  # raises if the weights do not match their sha256
                return checkpoint.model, checkpoint.meta, True
        model, meta = build()
        if not self.writable:  # another rank of a torchrun job: use the model, leave the files to rank 0
            return model, {**meta, "sha256": model_sha256(model)}, False
        save_checkpoint(path, model, {**meta, "cache_key": payload}, overwrite=True)
        checkpoint = load_checkpoint(path)
        return checkpoint.model, checkpoint.meta, False



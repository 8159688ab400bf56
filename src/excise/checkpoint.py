"""Checkpoints: weights in safetensors plus a JSON sidecar, sha256-checked, written atomically.

``model.safetensors`` holds the state dict; ``model.json`` beside it holds the model's registry name
and arguments, the data set, the request (if any), the seed, metrics, library versions and the
sha256 of the weights file. Writes go to a temporary file in the same directory and are renamed into
place, so a crash never leaves a half-written checkpoint, and an existing file is never replaced
unless ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from excise._files import atomic_write, atomic_write_many, atomic_write_text  # noqa: F401  (their home: _files)
from excise._registry import check_trusted
from excise.hashing import sha256_file  # noqa: F401  (its home: hashing)
from excise.models import create_model, model_spec
from excise.provenance.certificate import certificate_path

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match what it claims to be."""


@lru_cache(maxsize=1)
def source_sha256() -> str:
    """sha256 over every source file of the installed excise package: the version string alone does not
    change between commits, this does."""
    import excise

    root = Path(excise.__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of everything that changes results, recorded with every output — and the torch thread count,
    which changes float summation order and so, on small models, results like a different seed would."""
    import numpy
    import sklearn

    import excise

    return {
        "excise": excise.__version__,
        "excise_source": source_sha256()[:16],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
        "torch_threads": str(torch.get_num_threads()),
    }


def sidecar_path(weights_path: str | Path) -> Path:
    return Path(weights_path).with_suffix(".json")


def checkpoint_files(weights_path: str | Path) -> list[Path]:
    """Every file of a checkpoint: its weights, its sidecar and its deletion certificate."""
    return [Path(weights_path), sidecar_path(weights_path), certificate_path(weights_path)]


def save_checkpoint(
    path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None, *, overwrite: bool = False
) -> Path:
    """Write ``path`` (``.safetensors``) and its ``.json`` sidecar. Returns the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoint path {str(path)!r} must end in .safetensors")
    sidecar = sidecar_path(path)
    for target in (path, sidecar):
        if target.exists() and not overwrite:
            raise FileExistsError(f"{str(target)!r} exists; refusing to overwrite it (pass --overwrite)")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Both files are staged completely (the sidecar records the staged weights' sha256) before either
    # replaces anything, so a failed save never leaves new weights beside an old sidecar.
    staged_sha: list[str] = []

    def write_weights(tmp: Path) -> None:
        try:
            save_file(state, str(tmp))
        except Exception as err:
            # safetensors reports a failed write (a full disk) as its own error type, which the CLI took for a bug
            # and printed as a traceback.
            if isinstance(err, OSError) or "IoError" not in str(err):
                raise
            raise OSError(f"the weights could not be written ({err})") from err
        staged_sha.append(sha256_file(tmp))

    def write_sidecar(tmp: Path) -> None:
        record = {
            "format": FORMAT_VERSION,
            "model": model_spec(model),
            "sha256": staged_sha[0],
            "versions": versions(),
            **(meta or {}),
        }
        tmp.write_text(json.dumps(record, indent=2, default=str))

    atomic_write_many([(path, write_weights), (sidecar, write_sidecar)], overwrite=overwrite)
    return path


@dataclass
class Checkpoint:
    model: nn.Module
    meta: dict[str, Any]
    path: Path

    @property
    def sha256(self) -> str:
        return self.meta["sha256"]


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} " + ("is a directory, not a checkpoint file" if path.is_dir()
                                                              else "does not exist"))
    if path.suffix != ".safetensors":
        hint = (f"; {str(path)!r} looks like a checkpoint's sidecar: pass its weights "
                f"{str(path.with_suffix('.safetensors'))!r}" if path.suffix == ".json"
                and path.with_suffix(".safetensors").is_file() else
                "; a model excise did not train is brought in first with `excise adopt`")
        raise CheckpointError(f"checkpoint {str(path)!r} is not an excise checkpoint (.safetensors with a .json "
                              f"sidecar){hint}")
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} has no sidecar {str(sidecar)!r} (model name, args, sha256); "
                              "a model excise did not train is brought in first with `excise adopt`")
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"sidecar {str(sidecar)!r} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"sidecar {str(sidecar)!r} must hold a JSON object, not {type(meta).__name__}")
    for key in ("format", "model", "sha256"):
        if key not in meta:
            raise CheckpointError(f"sidecar {str(sidecar)!r} lacks the field {key!r}")
    if meta["format"] != FORMAT_VERSION:
        raise CheckpointError(f"sidecar {str(sidecar)!r} has format {meta['format']!r}; expected {FORMAT_VERSION}")
    return meta


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model from the sidecar and load the weights, after checking their sha256."""
    path = Path(path)
    meta = read_meta(path)
    actual = sha256_file(path)
    if actual != meta["sha256"]:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or was replaced: its sha256 is {actual[:16]}…, "
            f"the sidecar records {meta['sha256'][:16]}…"
        )
    spec = meta["model"]
    try:
        check_trusted(spec["name"], "model", f"the sidecar of {str(path)!r}")
    except ValueError as err:  # its own message says what to do; "cannot be built" would hide it
        raise CheckpointError(str(err)) from None
    try:
        model = create_model(spec["name"], **spec.get("kwargs", {}))
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"sidecar of {str(path)!r} names a model that cannot be built: {err}") from err
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {err}") from err
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {str(path)!r} do not match model {spec['name']!r}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"weights in {str(path)!r} do not fit model {spec['name']!r}: {err}") from err
    model.eval()
    return Checkpoint(model, meta, path)

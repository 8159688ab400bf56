"""Hashes every record and file of excise is named by: canonical JSON and its sha256, a file's sha256, and the
sha256 a model's weights would have as a safetensors file. One home, so a benchmark cell, a checkpoint, a
certificate and a ledger entry hash the same way."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any


def canonical_json(payload: Any) -> str:
    """Sorted keys, no spaces, UTF-8 text: the one serialisation hashes and signatures are computed over."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(payload: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``payload``."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def json_safe(value: Any) -> Any:
    """A JSON-safe copy: NaN/inf become null (JSON has no NaN, and a hash must not depend on how a reader spells
    it), tuples become lists, numpy/torch scalars become numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item"):
        return json_safe(value.item())
    return str(value)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_sha256(model: Any) -> str:
    """sha256 of the safetensors serialisation of ``model``'s state dict (what its checkpoint file hashes to)."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return hashlib.sha256(save(state)).hexdigest()

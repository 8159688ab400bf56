"""Issuing a deletion certificate for a checkpoint just written: `excise unlearn --out` (one per request) and
`excise bench --certify` (one per cell) both come here, so the two write the same certificate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from excise._files import all_or_nothing
from excise.checkpoint import checkpoint_files, read_meta, save_checkpoint
from excise.data import DatasetBundle
from excise.metrics.directions import metric_direction
from excise.metrics.uncertainty import Evidence
from excise.provenance.certificate import (
    build_certificate,
    certificate_path,
    certificate_sha256,
    sign,
    stored_path,
    write_certificate,
)
from excise.provenance.history import forget_commitment, forgotten_rows
from excise.provenance.ledger import append as append_entry
from excise.requests import ForgetRequest


def write_certified(path: str | Path, model: nn.Module, meta: dict[str, Any], *, overwrite: bool = False,
                    **certificate: Any) -> tuple[Path, str]:
    """Write the checkpoint (weights and sidecar ``meta``), its certificate and, with ``ledger``, its ledger entry
    as one: if any step fails, the model, sidecar and certificate at ``path`` are left as they were before
    (:func:`excise._files.all_or_nothing`), so no certified model exists that its ledger does not record and a
    ledgered one is never replaced by one it does not. ``certificate``: the keyword arguments of :func:`certify`."""
    path = Path(path)
    with all_or_nothing(checkpoint_files(path)):
        save_checkpoint(path, model, meta, overwrite=overwrite)
        return certify(path, meta, overwrite=overwrite, **certificate)


def certify(path: str | Path, meta: dict[str, Any], *, original: dict[str, Any], bundle: DatasetBundle,
            covers: Sequence[ForgetRequest], evidence: Evidence | None = None, ulira: dict[str, Any] | None = None,
            ledger: str | Path | None = None, sign_key: str | Path | None = None,
            overwrite: bool = False) -> tuple[Path, str]:
    """Write the certificate of the checkpoint at ``path`` (its sidecar ``meta``: request, history, dataset,
    method, metrics, … as `excise unlearn` writes them) beside it, signed with ``sign_key`` if given, and append
    it to ``ledger`` if given. ``original``: ``{"path", "sha256", "kind"}`` of the model it started from;
    ``covers``: the requests whose rows the certificate lists (this request, or a whole benchmarked sequence).
    Returns the certificate's path and its content hash (what a ledger entry records)."""
    path = Path(path)
    written = read_meta(path)
    indices, _, root = forget_commitment(bundle.train, forgotten_rows(bundle, covers))
    reference = None
    if meta.get("reference"):
        reference = {**meta["reference"], "path": stored_path(meta["reference"]["path"], path.parent),
                     "avg_gap_interval": None if evidence is None else evidence.avg_gap_interval}
    cert = build_certificate(
        request=meta["request"], history=meta["history"], history_complete=meta["history_complete"],
        covers=[r.to_dict() for r in covers], forgotten_indices=indices, merkle_root=root,
        new_samples=meta["new_samples"], forget_size=meta["forget_size"], original=original,
        unlearned={"path": path, "sha256": written["sha256"]}, data=meta["dataset"], method=meta["method"],
        method_config=meta["method_config"], seed=meta["seed"], seconds=meta["unlearn_seconds"],
        versions=written["versions"], metrics=meta["metrics"],
        directions={name: metric_direction(name) for name in meta["metrics"]},
        intervals=None if evidence is None else evidence.to_dict(), reference=reference, ulira=ulira,
        guard=(meta.get("method_stats") or {}).get("guard"), base=path.parent)
    if sign_key is not None:
        cert = sign(cert, sign_key)
    cert_path = write_certificate(certificate_path(path), cert, overwrite=overwrite)
    cert_sha = certificate_sha256(cert)
    if ledger is not None:
        ledger = Path(ledger)
        base = ledger.absolute().parent
        append_entry(ledger, {
            "model": {"path": stored_path(path, base), "sha256": written["sha256"]},
            "parent_sha256": original["sha256"],
            "certificate": {"path": stored_path(cert_path, base), "sha256": cert_sha},
            "request": " then ".join(r.describe() for r in covers),
            "method": meta["method"],
        }, origin={"model": {"path": stored_path(original["path"], base), "sha256": original["sha256"]},
                   "data": {"name": meta["dataset"]["name"], "fingerprint": meta["dataset"]["fingerprint"]}},
            expect_head_model=original["sha256"])
    return cert_path, cert_sha

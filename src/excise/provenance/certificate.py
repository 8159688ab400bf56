"""Deletion certificates: what was asked, what was done to which model, and the evidence that it worked.

A certificate is one canonical-JSON file written beside every unlearned checkpoint
(``unlearned.safetensors`` → ``unlearned.certificate.json``). It holds:

- **the request** and its place in the model's history (every request the model has served, oldest first);
- **the forgotten data**: the training rows the request selects and a Merkle root over their contents
  (:mod:`excise.provenance.merkle`), so a data subject can be shown that their sample was in the request
  (``excise prove``) without being shown the others;
- **the models**: the original's and the unlearned model's sha256, and the data set's fingerprint;
- **the run**: the method and its resolved configuration, the seed, the time, the excise source hash and the
  library versions (with the torch thread count, which changes float summation order);
- **the evidence**: FA/RA/TA and every MIA variant, each with its direction and its bootstrap interval when one
  was computed; with a retrained reference, the average gap to it; without one, the retrain-free evidence
  (:func:`retrain_free_evidence`); the U-LiRA audit when one was run; what the run's guard found (:func:`guard_record`:
  whether it fired or rolled back, forgot nothing (of a class or sub-class) or only part of a class, left random rows
  further from looking unseen, or returned the model unchanged), so a partial deletion is stated in the certificate
  itself, not only in the model's sidecar;
- **its limits**, in plain words (:func:`limits`);
- optionally an **Ed25519 signature** over all of the above, with the public key recorded (never the private
  key). Without a signature a certificate is only as trustworthy as the place it is kept; a ledger
  (:mod:`excise.provenance.ledger`) chains its hash to the others.

``excise verify`` (:mod:`excise.provenance.verify`) re-checks every field that can be re-checked.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from excise._files import atomic_write_text
from excise.hashing import canonical_json, content_hash, json_safe

FORMAT = "excise.certificate/1"
SUFFIX = ".certificate.json"


class CertificateError(ValueError):
    """A certificate that cannot be read, signed or trusted; the message names the field."""


def certificate_path(weights_path: str | Path) -> Path:
    """Where the certificate of the checkpoint at ``weights_path`` lives: beside it."""
    weights_path = Path(weights_path)
    return weights_path.with_name(weights_path.stem + SUFFIX)


def stored_path(path: str | Path, base: Path) -> str:
    """``path`` as recorded in a file kept in ``base``: relative to it when it is below it (a folder moved or
    copied whole keeps working), absolute otherwise."""
    absolute = Path(path).absolute()
    try:
        return absolute.relative_to(base.absolute()).as_posix()
    except ValueError:
        return str(absolute)


def resolve_stored(recorded: str, base: Path) -> Path:
    path = Path(recorded)
    return path if path.is_absolute() else base / path


def limits(method: str) -> str:
    """What a certificate's evidence does and does not prove, for ``method``."""
    common = ("The certificate proves which model files, data rows and configuration this run used (by their "
              "hashes), that the metrics recorded are what this model scores on the recorded views (re-checked by "
              "`excise verify`), and — when signed — who issued it. It does not prove that no copy of the original "
              "model or data remains elsewhere, and its membership-inference numbers are the outcome of specific "
              "attacks: a stronger attack could still find what these did not.")
    if method == "retrain":
        return ("Exact unlearning: the model was trained from scratch without the forgotten data, so it carries no "
                "information from it beyond what the remaining data implies. " + common)
    return (f"Approximate unlearning: {method!r} edited the trained model instead of retraining it, so the forgotten "
            "data influenced the weights and no guarantee says that influence is gone. The evidence below measures "
            "how the model behaves on the forgotten data against held-out data (and against a retrained model when "
            "one is recorded); it is evidence of forgetting, not a proof of it. " + common)


def retrain_free_evidence(metrics: dict[str, float], directions: dict[str, str]) -> list[dict[str, Any]]:
    """The evidence that needs no retrained model, each measure with what it is compared with and its direction:
    the forget set's accuracy against held-out samples of the same classes / targets (a model that never saw the
    forgotten samples scores about alike on both; one that memorised them scores higher on the forget set), and
    the membership attacks, whose non-member population is held-out test data."""
    out: list[dict[str, Any]] = []
    held_out = "TA_forget" if metrics.get("TA_forget") is not None else "TA"
    if metrics.get("FA") is not None and metrics.get(held_out) is not None:
        out.append({
            "measure": f"FA - {held_out}",
            "value": metrics["FA"] - metrics[held_out],
            "compared_with": (f"{held_out}: accuracy on held-out test samples of the forgotten classes"
                              if held_out == "TA_forget" else "TA: accuracy on held-out test samples"),
            "direction": "near 0 (or below) is what a model that never saw the forget set shows; well above 0 "
                         "means the forget set is still fitted better than unseen data",
        })
    for name in sorted(metrics):
        if name.startswith("MIA") and metrics[name] is not None:
            out.append({"measure": name, "value": metrics[name],
                        "compared_with": "held-out test samples (the attack's non-members)",
                        "direction": directions.get(name, ""),
                        "without_a_reference": "a model that never saw the forget set scores here about as on "
                                               "held-out samples of the same kind; the exact level is a retrained "
                                               "model's (pass --reference to record it)"})
    return out


GUARD_FIELDS = ("data", "task", "rows", "accuracy_before", "accuracy_after", "max_drop", "fired", "rolled_back",
                "utility_drop", "samples_max_drop", "turned_wrong", "turned_right", "worst_class", "worst_class_rows",
                "worst_class_before", "worst_class_after", "class_drop", "request_kind", "judged_as", "forget_rows",
                "forget_accuracy_before", "forget_accuracy_after", "forgot_nothing", "incomplete",
                "forget_accuracy_bn_refit", "hidden_in_statistics", "further_from_goal", "goal", "unchanged", "hint",
                "action", "reason")
"""What a certificate keeps of the guard's finding: enough for :func:`excise.methods.guard_objection` to state, from
the certificate alone, why such a run would not have been certified (``excise verify`` does)."""


def guard_record(finding: dict[str, Any] | None) -> dict[str, Any] | str:
    """The part of a run's guard finding (``stats["guard"]``) a certificate states; a string when none was kept."""
    if not finding:
        return "not recorded"
    return {name: finding[name] for name in GUARD_FIELDS if name in finding}


def build_certificate(
    *,
    request: dict[str, Any],
    history: list[dict[str, Any]],
    history_complete: bool,
    covers: list[dict[str, Any]],
    forgotten_indices: list[int],
    merkle_root: str,
    new_samples: int,
    forget_size: int,
    original: dict[str, Any],
    unlearned: dict[str, Any],
    data: dict[str, Any],
    method: str,
    method_config: dict[str, Any],
    seed: int,
    seconds: float,
    versions: dict[str, str],
    metrics: dict[str, float],
    directions: dict[str, str],
    intervals: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
    ulira: dict[str, Any] | None = None,
    guard: dict[str, Any] | None = None,
    base: Path,
) -> dict[str, Any]:
    """The certificate of one unlearning run (unsigned); paths are stored relative to ``base`` (the
    certificate's folder) when below it. See the module docstring for the fields."""
    evidence: dict[str, Any] = {
        "metrics": metrics,
        "directions": {name: directions.get(name, "") for name in metrics},
        "intervals": intervals or {},
        "evaluation": {"seed": seed, "views": "the cumulative views of `history` on the data set (what `excise "
                       "evaluate` judges)", "torch_threads": versions.get("torch_threads")},
        "reference": reference,
        "retrain_free": retrain_free_evidence(metrics, directions),
        "ulira": ulira if ulira is not None else "not run (`excise ulira` audits a method on shadow models)",
        "guard": guard_record(guard),
    }
    certificate = {
        "format": FORMAT,
        "request": request,
        "history": history,
        "history_complete": history_complete,
        "step": len(history),
        "forgotten": {
            "requests": covers,
            "indices": [int(i) for i in forgotten_indices],
            "count": len(forgotten_indices),
            "merkle_root": merkle_root,
            "leaf": "RFC 9162 leaf sha256(0x00 || 'excise-sample/1' || row index as u64 big-endian || "
                    "sha256(input bytes || label bytes [|| label-mask bytes]))",
            "new_samples": new_samples,
            "forget_size_so_far": forget_size,
        },
        "models": {
            "original": {**original, "path": stored_path(original["path"], base)},
            "unlearned": {**unlearned, "path": stored_path(unlearned["path"], base)},
            "data": data,
        },
        "run": {
            "method": method,
            "config": method_config,
            "seed": seed,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": seconds,
            "versions": versions,
        },
        "evidence": evidence,
        "limits": limits(method),
    }
    return json_safe(certificate)


def signed_bytes(certificate: dict[str, Any]) -> bytes:
    """What a signature covers: the canonical JSON of the certificate without its ``signature``."""
    return canonical_json({k: v for k, v in certificate.items() if k != "signature"}).encode()


def certificate_sha256(certificate: dict[str, Any]) -> str:
    """The hash a ledger records: over the whole certificate, signature included."""
    return content_hash(certificate)


def _load_key(path: str | Path, private: bool) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    path = Path(path)
    what = "private" if private else "public"
    if not path.is_file():
        raise CertificateError(f"{what} key {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as err:
        raise CertificateError(f"{what} key {str(path)!r} is not an unencrypted PEM {what} key: {err}") from None
    expected = Ed25519PrivateKey if private else Ed25519PublicKey
    if not isinstance(key, expected):
        raise CertificateError(f"{what} key {str(path)!r} is a {type(key).__name__}, not an Ed25519 key "
                               "(`excise keygen` makes one)")
    return key


def _raw_public(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(certificate: dict[str, Any], private_key_path: str | Path) -> dict[str, Any]:
    """``certificate`` with an Ed25519 ``signature`` by the key at ``private_key_path`` (PEM, unencrypted). The
    public key is recorded; the private key is read, used and never stored."""
    key = _load_key(private_key_path, private=True)
    raw = _raw_public(key.public_key())
    signature = key.sign(signed_bytes(certificate))
    return {**certificate, "signature": {
        "algorithm": "ed25519",
        "public_key": base64.b64encode(raw).decode(),
        "key_id": public_key_id(raw),
        "value": base64.b64encode(signature).decode(),
    }}


def check_signature(certificate: dict[str, Any], public_key_path: str | Path | None = None) -> str:
    """Check the certificate's signature; returns what was checked. With ``public_key_path`` the signature must
    be by that key (the one an auditor trusts); without, it is checked against the key the certificate records,
    which shows the content is unchanged since signing but not who signed it."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    record = certificate.get("signature")
    if record is None:
        if public_key_path is not None:
            raise CertificateError(f"the certificate is not signed, but a public key ({str(public_key_path)!r}) "
                                   "was given to check its signature against")
        return "not signed"
    if not isinstance(record, dict) or record.get("algorithm") != "ed25519":
        raise CertificateError(f"signature: expected an object with algorithm 'ed25519', got {record!r}")
    try:
        recorded = base64.b64decode(record["public_key"], validate=True)
        value = base64.b64decode(record["value"], validate=True)
    except (KeyError, TypeError, ValueError) as err:
        raise CertificateError(f"signature: public_key and value must be base64 ({err})") from None
    if public_key_path is not None:
        trusted = _raw_public(_load_key(public_key_path, private=False))
        if trusted != recorded:
            raise CertificateError(
                f"signature: the certificate was signed with key {public_key_id(recorded)}, not with the given "
                f"public key {str(public_key_path)!r} ({public_key_id(trusted)})")
    try:
        Ed25519PublicKey.from_public_bytes(recorded).verify(value, signed_bytes(certificate))
    except (InvalidSignature, ValueError):
        raise CertificateError(f"signature: invalid for key {public_key_id(recorded)} — the certificate was changed "
                               "after it was signed") from None
    who = ("the given public key" if public_key_path is not None
           else "the key it records (not checked against one you trust)")
    return f"valid Ed25519 signature by {who}, key {public_key_id(recorded)}"


def generate_key(path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """A new Ed25519 key pair: the private key at ``path`` (PEM, readable by its owner only) and the public key
    beside it (``.pub``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    public = path.with_name(path.name + ".pub")
    for target in (path, public):
        if target.exists() and not overwrite:
            raise FileExistsError(f"{str(target)!r} exists; refusing to overwrite a key (pass --overwrite)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A new file, created owner-only, renamed over the path: writing into an existing file kept its mode (a key
    # overwritten over a world-readable file stayed world-readable while the CLI said "mode 600").
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_pem)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    atomic_write_text(public, public_pem.decode(), overwrite=overwrite)
    return path, public


def write_certificate(path: str | Path, certificate: dict[str, Any], *, overwrite: bool = False) -> Path:
    return atomic_write_text(path, json.dumps(certificate, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                             overwrite=overwrite)


def read_certificate(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CertificateError(f"certificate {str(path)!r} does not exist")
    try:
        certificate = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CertificateError(f"certificate {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(certificate, dict) or certificate.get("format") != FORMAT:
        raise CertificateError(f"{str(path)!r} is not an excise certificate (expected format {FORMAT!r})")
    for key in ("request", "history", "forgotten", "models", "run", "evidence", "limits"):
        if key not in certificate:
            raise CertificateError(f"certificate {str(path)!r} lacks the field {key!r}")
    return certificate

"""``excise verify`` and ``excise prove``: re-check a deletion certificate or a whole ledger.

What is re-checked, in order, stopping at the first mismatch (:class:`VerificationError` names it):

1. for a ledger, the chain: every entry's hash, its ``seq`` and ``previous`` link, the first entry an origin,
   each deletion's parent the model of the entry before it (:mod:`excise.provenance.ledger`), the head against
   a hash the auditor kept (``head``), and each certificate file against the hash its entry records;
2. the signature, against the key the certificate records or, better, one the auditor trusts (``public_key``);
3. the files: the unlearned weights' sha256 (and their sidecar's record of it), the original model's when its file
   is at hand, a retrained reference's when one is recorded;
4. the data: the data set rebuilt from its record has the recorded fingerprint, and the Merkle root over the
   forgotten rows' contents is the recorded one;
5. the evidence: the unlearned model re-evaluated on the recorded views (every request of its history,
   together, with the recorded evaluation seed) gives every recorded metric — exactly (within
   :data:`SAME_THREADS_TOLERANCE`) at the thread count it was recorded with, within
   :data:`OTHER_THREADS_TOLERANCE` points at another (float summation order changes with the thread count, and
   on a small forget set one flipped prediction moves a percentage by ``100 / n``); with a reference, the
   average gap recomputed from the two recorded metric sets.

Bootstrap intervals are recorded but not recomputed (hundreds of refits); the U-LiRA audit is recorded as run.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from excise.hashing import sha256_file
from excise.provenance.certificate import (
    CertificateError,
    certificate_path,
    certificate_sha256,
    check_signature,
    read_certificate,
    resolve_stored,
)
from excise.provenance.history import forget_commitment, forgotten_rows
from excise.provenance.ledger import LedgerError, check_head, read_ledger
from excise.provenance.merkle import InclusionProof, check_inclusion, inclusion_proof, sample_sha256

SAME_THREADS_TOLERANCE = 1e-6
"""Points a re-evaluated metric may differ by at the recorded thread count (evaluation is deterministic)."""
OTHER_THREADS_TOLERANCE = 1.0
"""Points a re-evaluated metric may differ by at another thread count."""


class VerificationError(ValueError):
    """The first check that failed: ``check`` names it, the message says what broke."""

    def __init__(self, check: str, message: str, passed: list[Check]) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.passed = passed


@dataclass
class Check:
    name: str
    status: str  # "ok" or "skipped"
    detail: str


@dataclass
class Verification:
    """Every check that was made, in order (each ``ok`` or ``skipped`` with why)."""

    subject: str
    checks: list[Check] = field(default_factory=list)

    def run(self, name: str, check: Callable[[], str | tuple[str, str]]) -> None:
        """Run ``check`` (returns a detail, or ``("skipped", why)``); any error stops verification there."""
        try:
            outcome = check()
        except VerificationError:
            raise
        except (ValueError, OSError, KeyError, TypeError) as err:
            raise VerificationError(name, str(err), self.checks) from err
        if isinstance(outcome, tuple):
            self.checks.append(Check(name, outcome[0], outcome[1]))
        else:
            self.checks.append(Check(name, "ok", outcome))

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "checks": [c.__dict__ for c in self.checks]}


def _file_check(record: dict[str, Any], base: Path, role: str, where: str, *,
                required: bool) -> tuple[Path, str | tuple[str, str]]:
    """The file a certificate or ledger ``record`` (``{"path", "sha256"}``) names, and the outcome of checking its
    sha256: a detail, or ``("skipped", why)`` when it is not at hand and not ``required``."""
    source = resolve_stored(record["path"], base)
    if not source.is_file():
        if required:
            raise ValueError(f"the {role} {str(source)!r} is missing")
        return source, ("skipped", f"the {role} {str(source)!r} is not at hand")
    actual = sha256_file(source)
    if actual != record["sha256"]:
        raise ValueError(f"the {role} {str(source)!r} changed: sha256 {actual[:16]}…, the {where} records "
                         f"{record['sha256'][:16]}…")
    return source, f"{source.name} sha256 {actual[:16]}…"


def _certificate_data(certificate: dict[str, Any], where: str) -> Any:
    from excise.provenance.history import recorded_dataset

    return recorded_dataset(certificate["models"]["data"], where)


def verify_certificate(path: str | Path, *, public_key: str | Path | None = None, reevaluate: bool = True,
                       verification: Verification | None = None, prefix: str = "") -> Verification:
    """Re-check the certificate at ``path`` (see the module docstring); raises :class:`VerificationError` at the
    first mismatch."""
    import torch

    from excise.checkpoint import load_checkpoint, read_meta
    from excise.metrics import avg_gap
    from excise.provenance.history import history_views
    from excise.requests import ForgetRequest

    path = Path(path)
    base = path.parent
    out = verification or Verification(str(path))
    holder: dict[str, Any] = {}

    def read() -> str:
        cert = holder["cert"] = read_certificate(path)
        return f"{cert['run']['method']} forgetting {ForgetRequest.from_dict(cert['request']).describe()}"

    out.run(f"{prefix}certificate", read)
    cert = holder["cert"]
    out.run(f"{prefix}signature", lambda: check_signature(cert, public_key))

    unlearned = cert["models"]["unlearned"]
    weights = resolve_stored(unlearned["path"], base)

    def weights_check() -> str:
        _, detail = _file_check(unlearned, base, "unlearned weights", "certificate", required=True)
        recorded = read_meta(weights).get("sha256")
        if recorded != unlearned["sha256"]:
            raise ValueError(f"the sidecar of {str(weights)!r} records weights {str(recorded)[:16]}…, not the "
                             "certified ones")
        return detail

    out.run(f"{prefix}unlearned model", weights_check)

    def original_check() -> str | tuple[str, str]:
        return _file_check(cert["models"]["original"], base, "original model", "certificate", required=False)[1]

    out.run(f"{prefix}original model", original_check)

    def deletion_check() -> str | tuple[str, str]:
        from excise.methods import guard_objection

        if cert["models"]["unlearned"]["sha256"] == cert["models"]["original"]["sha256"]:
            raise ValueError("the certified model is its input model, bit for bit: nothing was deleted")
        finding = cert["evidence"].get("guard")
        if not isinstance(finding, dict):
            return "skipped", f"the run's guard finding is {finding!r}"
        from excise.methods import list_methods, method_class

        method = cert["run"]["method"]
        if method in list_methods() and not method_class(method).rolls_back:
            # A retrained model is the goal itself: another model than the original, whose classes may differ.
            return f"{method}: exact unlearning, the goal the guard measures others against"
        if finding.get("reason") == "off":
            return "skipped", ("the run was written with --guard off: nothing checked that it did not collapse the "
                               "model or leave the request unforgotten")
        objection = guard_objection(finding)
        if objection:
            raise ValueError(f"the run's own guard found that {objection}; it was written anyway (--guard warn), so "
                             "the certificate records no deletion to rely on")
        if finding.get("forgot_nothing"):  # a sub-class request: said by the run, not refused (guard_objection)
            return (f"the weights changed; the run's guard said it forgot nothing of the sub-class (accuracy on "
                    f"{finding.get('forget_rows')} forget rows {finding.get('forget_accuracy_before', 0):.1f} -> "
                    f"{finding.get('forget_accuracy_after', 0):.1f}), which it does not refuse: a retrained model may "
                    "still predict the super-class for such rows, so this certifies the run, not that the sub-class "
                    f"is forgotten ({finding.get('data')})")
        return f"the weights changed, and the run's guard found nothing against it ({finding.get('data')})"

    out.run(f"{prefix}deletion", deletion_check)

    def data_check() -> str:
        bundle = _certificate_data(cert, f"certificate {str(path)!r}")
        holder["bundle"] = bundle
        covers = [ForgetRequest.from_dict(r) for r in cert["forgotten"].get("requests", [cert["request"]])]
        indices, _, root = forget_commitment(bundle.train, forgotten_rows(bundle, covers))
        if indices != cert["forgotten"]["indices"]:
            raise ValueError(f"the request now selects {len(indices)} rows, the certificate lists "
                             f"{len(cert['forgotten']['indices'])} other ones")
        if root != cert["forgotten"]["merkle_root"]:
            raise ValueError(f"the Merkle root over the forgotten rows is {root[:16]}…, the certificate records "
                             f"{cert['forgotten']['merkle_root'][:16]}…")
        return f"fingerprint {bundle.fingerprint()[:16]}…, {len(indices)} forgotten rows, root {root[:16]}…"

    out.run(f"{prefix}forgotten data", data_check)

    evidence = cert["evidence"]
    reference = evidence.get("reference")

    def reference_check() -> str | tuple[str, str]:
        if not reference:
            return "skipped", "no retrained reference recorded"
        gap = avg_gap(evidence["metrics"], reference["metrics"])
        if abs(gap - reference["avg_gap"]) > SAME_THREADS_TOLERANCE:
            raise ValueError(f"avg_gap: the certificate records {reference['avg_gap']:.4f}, its recorded metrics give "
                             f"{gap:.4f}")
        source, detail = _file_check(reference, base, "reference", "certificate", required=False)
        if isinstance(detail, tuple):
            return "skipped", f"avg gap {gap:.2f} consistent; {detail[1]}"
        holder["reference"] = source
        return f"avg gap {gap:.2f} consistent; {detail}"

    out.run(f"{prefix}reference", reference_check)

    def evaluation_check() -> str | tuple[str, str]:
        if not reevaluate:
            return "skipped", "re-evaluation not asked for"
        from excise.experiment import judge
        from excise.metrics.distance import DISTANCE_DIRECTIONS

        requests = [ForgetRequest.from_dict(r) for r in cert["history"]]
        views, _ = history_views(holder["bundle"], None, requests, len(requests) - 1)
        model = load_checkpoint(weights).model
        reference_model = load_checkpoint(holder["reference"]).model if "reference" in holder else None
        recorded_threads = cert["evidence"]["evaluation"].get("torch_threads")
        same = str(recorded_threads) == str(torch.get_num_threads())
        tolerance = SAME_THREADS_TOLERANCE if same else OTHER_THREADS_TOLERANCE
        metrics, _ = judge(model, views, seed=cert["evidence"]["evaluation"]["seed"], reference_model=reference_model)
        checked, largest = 0, 0.0
        for name, value in evidence["metrics"].items():
            if name in DISTANCE_DIRECTIONS and reference_model is None:
                continue
            now = metrics.get(name)
            if value is None or now is None:
                if value != now:
                    raise ValueError(f"metric {name}: the certificate records {value!r}, re-evaluation gives {now!r}")
                continue
            if abs(float(now) - float(value)) > tolerance:
                raise ValueError(f"metric {name}: the certificate records {value:.4f}, re-evaluation gives {now:.4f} "
                                 f"(tolerance {tolerance:g} at {torch.get_num_threads()} threads; recorded at "
                                 f"{recorded_threads})")
            checked += 1
            largest = max(largest, abs(float(now) - float(value)))
        return (f"{checked} metrics reproduced within {tolerance:g} (largest difference {largest:.2g}; "
                f"{torch.get_num_threads()} threads)")

    out.run(f"{prefix}evidence", evaluation_check)
    return out


def verify_ledger(path: str | Path, *, public_key: str | Path | None = None, reevaluate: bool = True,
                  head: str | None = None) -> Verification:
    """Re-check the ledger at ``path`` and every certificate it chains; raises :class:`VerificationError` at
    the first mismatch."""
    path = Path(path)
    base = path.parent
    out = Verification(str(path))
    holder: dict[str, Any] = {}

    def chain() -> str:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = read_ledger(path)
        holder["state"] = state
        if not state.entries:
            raise LedgerError(f"ledger {str(path)!r} has no entry")
        torn = " (a torn last line from an interrupted append was ignored)" if caught else ""
        return f"{len(state.entries)} entries, head {state.head[:16]}…{torn}"

    out.run("chain", chain)
    state = holder["state"]
    out.run("head", lambda: ("skipped", "no --head given: entries removed from the end would not show")
            if head is None else (check_head(state, head) or f"head is {head[:16]}…"))

    def origin() -> str | tuple[str, str]:
        return _file_check(state.entries[0]["model"], base, "original model", "ledger", required=False)[1]

    out.run("entry 0 (origin)", origin)
    for previous, entry in zip(state.entries, state.entries[1:], strict=False):
        name = f"entry {entry['seq']}"

        def link(entry: dict[str, Any] = entry, previous: dict[str, Any] = previous) -> str:
            if entry.get("parent_sha256") != previous["model"]["sha256"]:
                raise LedgerError(f"its parent model {str(entry.get('parent_sha256'))[:16]}… is not the model of "
                                  f"entry {previous['seq']} ({previous['model']['sha256'][:16]}…): the lineage is "
                                  "broken")
            certificate = resolve_stored(entry["certificate"]["path"], base)
            if not certificate.is_file():
                raise ValueError(f"its certificate {str(certificate)!r} is missing")
            cert = read_certificate(certificate)
            if certificate_sha256(cert) != entry["certificate"]["sha256"]:
                raise ValueError(f"its certificate {str(certificate)!r} was changed after it was appended "
                                 f"(content hash {certificate_sha256(cert)[:16]}…, the ledger records "
                                 f"{entry['certificate']['sha256'][:16]}…)")
            if cert["models"]["unlearned"]["sha256"] != entry["model"]["sha256"]:
                raise ValueError("its certificate certifies another model than the entry records")
            if cert["models"]["original"]["sha256"] != entry["parent_sha256"]:
                raise ValueError("its certificate starts from another model than the entry's parent")
            earlier = holder.get("history")
            history_note = check_history(cert, earlier)
            holder[entry["seq"]], holder["history"] = certificate, cert["history"]
            return (f"certificate {certificate.name} unchanged, parent is entry {previous['seq']}'s model"
                    + (f"; {history_note}" if history_note else ""))

        out.run(name, link)
        verify_certificate(holder[entry["seq"]], public_key=public_key, reevaluate=reevaluate, verification=out,
                           prefix=f"{name} ")
    return out


def check_history(cert: dict[str, Any], earlier: list[dict[str, Any]] | None) -> str | None:
    """A ledgered certificate's history must be the previous certificate's plus its own request, and its step its
    length: the history comes from the model's sidecar, which nothing signs, so a sidecar edited to drop a request
    would otherwise give the next certificate a history — and evidence judged on views — that leave it out.
    ``earlier``: the previous certificate's history (``None`` for the ledger's first deletion, whose origin may
    already have served requests: returned as a note)."""
    history = cert["history"]
    if not history or history[-1] != cert["request"]:
        raise ValueError("its certificate's history does not end with its own request")
    if cert.get("step") != len(history):
        raise ValueError(f"its certificate says step {cert.get('step')!r} for a history of {len(history)} requests")
    if earlier is not None and history[:-1] != earlier:
        raise ValueError(f"its certificate's history ({len(history) - 1} earlier requests) is not the previous "
                         f"certificate's ({len(earlier)}) — a request was dropped or added between them")
    if earlier is None and len(history) > 1:
        return (f"the origin had already served {len(history) - 1} request(s) before this ledger began, "
                "certified elsewhere or not at all")
    return None


def verify(path: str | Path, **options: Any) -> Verification:
    """A certificate (``*.certificate.json``) or a ledger (JSON Lines), told apart by content."""
    path = Path(path)
    if not path.is_file():
        raise VerificationError("input", f"{str(path)!r} does not exist", [])
    if path.suffix == ".safetensors":
        certificate = certificate_path(path)
        raise VerificationError("input", f"{str(path)!r} is a model; verify its certificate {str(certificate)!r}"
                                f" ({'found' if certificate.is_file() else 'missing: it was not written'}) or the "
                                "ledger it was appended to", [])
    with open(path, "rb") as handle:
        first = handle.readline()
    try:
        is_ledger = json.loads(first).get("format", "").startswith("excise.ledger/")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        is_ledger = False
    if is_ledger:
        return verify_ledger(path, **options)
    options.pop("head", None)
    return verify_certificate(path, **options)


def prove(certificate_path: str | Path, index: int) -> InclusionProof:
    """The inclusion proof that training row ``index`` was among the rows the certified request forgot; a row
    that was not is refused."""
    cert = read_certificate(certificate_path)
    indices = cert["forgotten"]["indices"]
    if int(index) not in set(indices):
        raise ValueError(f"training row {index} is not among the {len(indices)} rows this certificate's request "
                         "forgot")
    bundle = _certificate_data(cert, f"certificate {str(certificate_path)!r}")
    rows, hashes, root = forget_commitment(bundle.train, indices)
    if root != cert["forgotten"]["merkle_root"]:
        raise CertificateError("the data no longer matches the certificate's Merkle root; `excise verify` says where")
    return inclusion_proof(rows, hashes, index)


def check_proof(certificate_path: str | Path, proof: InclusionProof | dict[str, Any], *,
                recompute: bool = True) -> str:
    """Check an inclusion proof against a certificate's Merkle root. With ``recompute`` the sample's content is
    rehashed from the data set, so the proof must be about that row as it is stored."""
    cert = read_certificate(certificate_path)
    proof = proof if isinstance(proof, InclusionProof) else InclusionProof.from_dict(proof)
    content = None
    if recompute:
        bundle = _certificate_data(cert, f"certificate {str(certificate_path)!r}")
        if not 0 <= proof.index < len(bundle.train):
            raise ValueError(f"training row {proof.index} does not exist (the training set has {len(bundle.train)})")
        content = sample_sha256(bundle.train, proof.index)
    check_inclusion(proof, cert["forgotten"]["merkle_root"], content)
    return (f"training row {proof.index} is leaf {proof.position} of {proof.tree_size} under the certificate's "
            f"Merkle root {proof.root[:16]}…")


__all__ = ["Check", "Verification", "VerificationError", "check_proof",
           "prove", "verify", "verify_certificate", "verify_ledger"]

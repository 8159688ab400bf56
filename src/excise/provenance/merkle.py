"""A Merkle tree over the forgotten samples, and inclusion proofs a data subject can be shown.

The tree is the one of Certificate Transparency (RFC 9162, section 2.1): leaves are hashed as
``sha256(0x00 || leaf)`` and inner nodes as ``sha256(0x01 || left || right)`` — the prefixes keep a leaf from
being passed off as an inner node — and a tree of ``n`` leaves splits at the largest power of two below ``n``.
An inclusion proof is the audit path of RFC 9162 section 2.1.3: ``log2(n)`` sibling hashes, which reveal
nothing about the other forgotten samples but their hashes.

A leaf is one training sample: its row index in the training set and the sha256 of its content (input and
label bytes, :func:`sample_sha256`). Binding the index means a proof for one row cannot be replayed for another
row holding identical content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

LEAF_FORMAT = b"excise-sample/1"


def _hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return _hash(b"\x01" + left + right)


def leaf_hash(index: int, content_sha256: str) -> bytes:
    """The Merkle leaf of training row ``index`` whose content hashes to ``content_sha256`` (hex)."""
    leaf = LEAF_FORMAT + int(index).to_bytes(8, "big") + bytes.fromhex(content_sha256)
    return _hash(b"\x00" + leaf)


def sample_sha256(data: Any, index: int) -> str:
    """sha256 (hex) of the content of row ``index`` of a :class:`~excise.data.base.LabeledData`: its input's
    and its label's bytes (and its label mask, when the view has one), as stored."""
    h = hashlib.sha256()
    for tensor in (data.inputs[index], data.targets[index]):
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    if data.label_mask is not None:
        h.update(data.label_mask[index].cpu().numpy().tobytes())
    return h.hexdigest()


def _largest_power_of_two_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _root(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _largest_power_of_two_below(len(leaves))
    return _node(_root(leaves[:k]), _root(leaves[k:]))


def _path(position: int, leaves: Sequence[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = _largest_power_of_two_below(len(leaves))
    if position < k:
        return [*_path(position, leaves[:k]), _root(leaves[k:])]
    return [*_path(position - k, leaves[k:]), _root(leaves[:k])]


def merkle_root(indices: Sequence[int], content_hashes: Sequence[str]) -> str:
    """The root (hex) over the rows ``indices`` (sorted ascending, distinct) with their content hashes."""
    leaves = _leaves(indices, content_hashes)
    return _root(leaves).hex()


def _leaves(indices: Sequence[int], content_hashes: Sequence[str]) -> list[bytes]:
    if not indices:
        raise ValueError("a Merkle tree needs at least one forgotten sample")
    if len(indices) != len(content_hashes):
        raise ValueError(f"{len(indices)} indices but {len(content_hashes)} content hashes")
    if any(b <= a for a, b in zip(indices, indices[1:], strict=False)):
        raise ValueError("the forgotten indices must be sorted ascending and distinct")
    return [leaf_hash(i, h) for i, h in zip(indices, content_hashes, strict=True)]


@dataclass(frozen=True)
class InclusionProof:
    """That training row ``index`` (content ``sample_sha256``) is leaf ``position`` of a tree of ``tree_size``
    leaves with root ``root``: the audit path ``path`` (hex sibling hashes, leaf to root)."""

    index: int
    sample_sha256: str
    position: int
    tree_size: int
    path: tuple[str, ...]
    root: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": list(self.path), "format": "excise.inclusion-proof/1 (RFC 9162 audit path)"}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> InclusionProof:
        expected = {"index": int, "sample_sha256": str, "position": int, "tree_size": int, "path": list,
                    "root": str}
        if not isinstance(record, dict):
            raise ValueError(f"an inclusion proof must be a JSON object, not {type(record).__name__}")
        for key, kind in expected.items():
            if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
                raise ValueError(f"inclusion proof field {key!r} must be a {kind.__name__}, got {record.get(key)!r}")
        return cls(record["index"], record["sample_sha256"], record["position"], record["tree_size"],
                   tuple(str(p) for p in record["path"]), record["root"])


def inclusion_proof(indices: Sequence[int], content_hashes: Sequence[str], index: int) -> InclusionProof:
    """The proof that training row ``index`` is among ``indices``; a row that is not is refused."""
    leaves = _leaves(indices, content_hashes)
    positions = {int(i): p for p, i in enumerate(indices)}
    if int(index) not in positions:
        raise ValueError(f"training row {index} is not among the {len(indices)} forgotten samples of this request")
    position = positions[int(index)]
    return InclusionProof(int(index), content_hashes[position], position, len(leaves),
                          tuple(p.hex() for p in _path(position, leaves)), _root(leaves).hex())


def check_inclusion(proof: InclusionProof, root: str, sample_sha256: str | None = None) -> None:
    """Raise ``ValueError`` unless ``proof`` leads from its leaf to ``root`` (RFC 9162 section 2.1.3.2). With
    ``sample_sha256`` (recomputed from the data), the leaf must also hold that content."""
    if sample_sha256 is not None and sample_sha256 != proof.sample_sha256:
        raise ValueError(f"the content of training row {proof.index} hashes to {sample_sha256[:16]}…, but the proof "
                         f"is for content {proof.sample_sha256[:16]}…")
    if proof.root != root:
        raise ValueError(f"the proof is for root {proof.root[:16]}…, not the certificate's {root[:16]}…")
    if not 0 <= proof.position < proof.tree_size:
        raise ValueError(f"position {proof.position} is outside a tree of {proof.tree_size} leaves")
    fn, sn = proof.position, proof.tree_size - 1
    r = leaf_hash(proof.index, proof.sample_sha256)
    for sibling_hex in proof.path:
        sibling = bytes.fromhex(sibling_hex)
        if sn == 0:
            raise ValueError("the audit path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = _node(sibling, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r.hex() != root:
        raise ValueError(f"training row {proof.index} is not in the forgotten set this certificate commits to "
                         "(its audit path does not lead to the Merkle root)")

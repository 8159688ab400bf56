"""Provenance: what a model has served and the proof of each deletion.

- :mod:`excise.provenance.history`: the request history a checkpoint records, its completeness, the cumulative
  views after it, and the checks a retrained reference must pass;
- :mod:`excise.provenance.merkle`: a Merkle tree over the forgotten samples and inclusion proofs;
- :mod:`excise.provenance.certificate`: the certificate written beside every unlearned checkpoint (optionally
  Ed25519-signed);
- :mod:`excise.provenance.ledger`: the append-only, hash-chained ledger of one model lineage;
- :mod:`excise.provenance.verify`: ``excise verify`` / ``excise prove``: re-check everything that can be.

Importing this package imports none of them: :mod:`excise.provenance.history` sits low (data, requests, metrics),
:mod:`excise.provenance.verify` high (it re-evaluates models).
"""

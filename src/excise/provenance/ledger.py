"""The deletion ledger: one append-only JSON Lines file per model lineage, hash-chained.

Entry 0 (``kind: origin``) names the original model. Every later entry (``kind: deletion``) records one
certificate's sha256, the unlearned model's and its parent's sha256, and ``previous``: the hash of the entry
before it. Each entry's ``hash`` is the sha256 of its canonical JSON without ``hash``. Editing an entry breaks
its hash; deleting, inserting or reordering one breaks the next entry's ``previous`` (and ``seq``); a deletion
whose parent is not the model of the entry before it breaks the lineage. Removing the *last* entries leaves a
shorter valid chain: an auditor who must rule that out keeps the head hash (``excise ledger show``) and checks
it (``excise verify LEDGER --head HASH``).

Appends are safe under concurrent writers and crashes: an exclusive file lock (``filelock``, beside the ledger)
serialises them, each entry is written by one ``write`` of ``line + "\\n"`` with ``O_APPEND`` and ``fsync``ed,
so a kill can only leave a prefix of the last line without its newline. A reader ignores such a torn tail (the
append did not happen) and the next append cuts it off first. A last line that lacks only its newline (stripped by
an editor) is a whole entry — a prefix never parses — and is checked and kept; the next append ends its line first.
Anything else that does not parse is an error naming the line.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from excise.hashing import canonical_json, content_hash, json_safe

FORMAT = "excise.ledger/1"
LOCK_TIMEOUT_SECONDS = 120.0


class LedgerError(ValueError):
    """A ledger that does not verify; the message names the line and what broke."""


def entry_hash(entry: dict[str, Any]) -> str:
    return content_hash({k: v for k, v in entry.items() if k != "hash"})


@dataclass
class LedgerState:
    """A ledger as read: its verified entries, and where a torn last line starts (``None``: none)."""

    entries: list[dict[str, Any]]
    torn_at: int | None
    # The last entry is complete but its line lacks the newline (an editor or a tool stripped it): kept, and the next
    # append writes the newline first.
    unterminated: bool = False

    @property
    def head(self) -> str | None:
        return self.entries[-1]["hash"] if self.entries else None

    @property
    def head_model(self) -> str | None:
        """sha256 of the lineage's current model: the last entry's."""
        return self.entries[-1]["model"]["sha256"] if self.entries else None


def _check_entry(entry: Any, number: int, previous: dict[str, Any] | None, where: str) -> dict[str, Any]:
    at = f"{where}:{number}"
    if not isinstance(entry, dict):
        raise LedgerError(f"{at}: expected a JSON object (one ledger entry), got {type(entry).__name__}")
    for key in ("format", "seq", "kind", "previous", "hash", "model"):
        if key not in entry:
            raise LedgerError(f"{at}: the entry lacks the field {key!r}; it was not written by excise")
    if entry["format"] != FORMAT:
        raise LedgerError(f"{at}: format {entry['format']!r} is not {FORMAT!r}")
    if entry_hash(entry) != entry["hash"]:
        raise LedgerError(f"{at}: entry {entry.get('seq')!r} was edited after it was written (its content no longer "
                          "hashes to its recorded hash)")
    expected_seq = 0 if previous is None else previous["seq"] + 1
    if entry["seq"] != expected_seq:
        raise LedgerError(f"{at}: entry seq {entry['seq']!r} where {expected_seq} was expected — an entry was "
                          "deleted, inserted or moved")
    expected_previous = None if previous is None else previous["hash"]
    if entry["previous"] != expected_previous:
        raise LedgerError(f"{at}: entry {entry['seq']} does not follow the entry before it (its 'previous' is "
                          f"{str(entry['previous'])[:16]}…, the chain expects {str(expected_previous)[:16]}…) — an "
                          "entry was deleted, inserted or reordered")
    if previous is None and entry["kind"] != "origin":
        raise LedgerError(f"{at}: the first entry must name the original model (kind 'origin'), not "
                          f"{entry['kind']!r}")
    if previous is not None and entry["kind"] != "deletion":
        raise LedgerError(f"{at}: entry {entry['seq']} has kind {entry['kind']!r}; only the first entry is an origin")
    return entry


def read_ledger(path: str | Path) -> LedgerState:
    """Read and check the chain of ``path`` (hashes, order, kinds); raises :class:`LedgerError` at the first
    entry that breaks it. A torn last line (an interrupted append) is ignored with a warning."""
    path = Path(path)
    if not path.is_file():
        raise LedgerError(f"ledger {str(path)!r} does not exist")
    state = _parse(path.read_bytes(), str(path))
    if state.torn_at is not None:
        warnings.warn(f"{path}: ignoring a torn last line (an append was interrupted; that entry was not recorded)",
                      stacklevel=2)
    return state


def _parse(data: bytes, where: str) -> LedgerState:
    entries: list[dict[str, Any]] = []
    offset = 0
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        start = offset
        offset += len(raw) + 1
        if not raw.strip():
            continue
        last = number == len(lines)  # no newline after it: a write cut short, or a newline stripped since
        try:
            parsed = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if last:  # a prefix of an entry never parses: the append did not happen
                return LedgerState(entries, start)
            raise LedgerError(f"{where}:{number}: not valid JSON ({err}); the ledger is corrupt at this line") from None
        # A last line that parses is a whole entry (a torn prefix cannot close its object): it is checked like any
        # other, and kept. Dropping it as torn let the next append cut a recorded deletion out of the ledger.
        entries.append(_check_entry(parsed, number, entries[-1] if entries else None, where))
        if last:
            return LedgerState(entries, None, unterminated=True)
    return LedgerState(entries, None)


def _lock(path: Path) -> Any:
    from filelock import FileLock

    return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_SECONDS)


def _append_line(path: Path, entry: dict[str, Any]) -> None:
    line = (canonical_json(entry) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)  # one write: a kill leaves at most a prefix without its newline
        while written < len(line):
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def append(path: str | Path, entry: dict[str, Any], *, origin: dict[str, Any] | None = None,
           expect_head_model: str | None = None) -> list[dict[str, Any]]:
    """Append a ``deletion`` entry (``entry`` holds its fields: ``model``, ``parent_sha256``, ``certificate``, …)
    under the ledger's lock and return the entries written. A new or empty ledger first gets its ``origin``
    entry (``origin``: ``{"model": {"path", "sha256"}, ...}``, required then). ``expect_head_model``: refuse
    unless the lineage's current model has this sha256 (checked under the lock, so two runs cannot both extend
    the same head)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):
        if path.exists():
            data = path.read_bytes()
            state = _parse(data, str(path))
            if state.torn_at is not None:
                with open(path, "r+b") as handle:  # an interrupted append: it did not happen
                    handle.truncate(state.torn_at)
                    os.fsync(handle.fileno())
            elif state.unterminated:  # a whole last entry whose newline went missing: end its line
                with open(path, "ab") as handle:
                    handle.write(b"\n")
                    os.fsync(handle.fileno())
        else:
            state = LedgerState([], None)
        written = []
        if not state.entries:
            if origin is None:
                raise LedgerError(f"ledger {str(path)!r} is empty: its first entry must name the original model")
            written.append(_write(path, {**origin, "kind": "origin"}, None))
            state.entries.append(written[-1])
        if expect_head_model is not None:
            check_lineage(state, expect_head_model, path)
        written.append(_write(path, {**entry, "kind": "deletion"}, state.entries[-1]))
        return written


def _write(path: Path, fields: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    entry = json_safe({**fields, "format": FORMAT, "seq": 0 if previous is None else previous["seq"] + 1,
                       "time": _now(), "previous": None if previous is None else previous["hash"]})
    entry["hash"] = entry_hash(entry)
    _append_line(path, entry)
    return entry


def check_lineage(state: LedgerState, model_sha256: str, path: str | Path) -> None:
    """Refuse to extend a ledger whose current model is not ``model_sha256`` (the model a run starts from): a
    ledger records one model's successive deletions. An empty ledger accepts any start."""
    if state.entries and state.head_model != model_sha256:
        raise LedgerError(
            f"ledger {str(path)!r} tracks a lineage whose current model is {state.head_model[:16]}…, but this run "
            f"starts from {model_sha256[:16]}…: a ledger records one model's successive deletions; unlearn from its "
            "current model, or start a new ledger")


def check_head(state: LedgerState, head: str) -> None:
    """Refuse a ledger whose last entry is not ``head`` (a hash kept by an auditor): entries were removed from
    its end, or it is another ledger."""
    hashes = [e["hash"] for e in state.entries]
    if state.head == head:
        return
    if head in hashes:
        later = len(hashes) - 1 - hashes.index(head)
        raise LedgerError(f"the ledger's head is entry {len(hashes) - 1}, {later} entr{'y' if later == 1 else 'ies'} "
                          f"after the expected head {head[:16]}… — entries were appended since it was recorded")
    raise LedgerError(f"the expected head {head[:16]}… is not in the ledger (its head is {str(state.head)[:16]}…): "
                      "entries were removed from its end, or this is another ledger")

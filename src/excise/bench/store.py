"""The results store: one JSON line per (suite, scenario, method, seed), appended atomically.

Format: JSON Lines, loadable with ``pandas.read_json(path, lines=True)``. Each record carries a
``checksum`` (sha256 of its canonical JSON without the checksum), so the reader can tell the two ways a
file goes bad apart:

- a run killed mid-write leaves a *truncated last line* (no trailing newline, since every record is
  written as one ``write`` of ``line + "\\n"`` followed by ``fsync``). The reader skips it with a
  warning and the writer cuts it off before appending, so a resumed run simply redoes that cell;
- anything else — a corrupt line in the middle, a line that was edited by hand (checksum mismatch), a
  record missing a field — is refused with an error naming the file and the line number. Numbers in a
  report come only from records that are exactly what the runner wrote.

Records are never rewritten; a cell that is run again (``--retry-failed``) appends a newer record and
:func:`latest` keeps the last one per key.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from excise.hashing import canonical_json, content_hash
from excise.hashing import json_safe as _clean

SCHEMA_VERSION = 1
RESULTS_FILE = "results.jsonl"
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": int, "suite": str, "scenario": str, "kind": str, "method": str, "seed": int, "status": str,
    "cell_hash": str, "checksum": str,
}
STATUSES = ("ok", "failed", "skipped")


class StoreError(ValueError):
    """A results file that cannot be trusted; the message names the file and the line."""


def record_key(record: dict[str, Any]) -> tuple[str, str, str, int]:
    return record["suite"], record["scenario"], record["method"], record["seed"]


def status_of(record: dict[str, Any]) -> str:
    """``ok``, ``failed`` or ``skipped`` (the part of ``status`` before ``:``)."""
    return record["status"].split(":", 1)[0]


def checksum(record: dict[str, Any]) -> str:
    return content_hash({k: v for k, v in record.items() if k != "checksum"})


def _validate(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise StoreError(f"{where}: expected a JSON object (one result record), got {type(record).__name__}")
    for key, kind in _REQUIRED.items():
        if key not in record:
            raise StoreError(f"{where}: the record lacks the field {key!r}; it was not written by `excise bench`")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise StoreError(f"{where}: field {key!r} has the wrong type ({type(record[key]).__name__})")
    if record["schema"] != SCHEMA_VERSION:
        raise StoreError(f"{where}: schema {record['schema']!r} is not the supported {SCHEMA_VERSION}")
    if status_of(record) not in STATUSES:
        raise StoreError(f"{where}: status {record['status']!r} is not one of {list(STATUSES)}")
    if checksum(record) != record["checksum"]:
        raise StoreError(
            f"{where}: the record's checksum does not match its content — the line was edited or corrupted "
            "after it was written. Results are only read exactly as the runner wrote them; restore the file "
            "or re-run the affected cell into a new results file"
        )
    return record


def _read(path: Path) -> tuple[list[dict[str, Any]], int | None]:
    """Records of ``path`` and, if its last line is a truncated write, the byte offset where it starts."""
    if not path.is_file():
        raise StoreError(f"results file {str(path)!r} does not exist")
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    offset = 0
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        is_last = number == len(lines)
        start = offset
        offset += len(raw) + 1
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            parsed = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if is_last:  # no newline after it: the write was cut short by a kill
                return records, start
            raise StoreError(f"{where}: not valid JSON ({err}); the results file is corrupt at this line") from None
        records.append(_validate(parsed, where))
    return records, None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a results file (or of ``DIR/results.jsonl``), validated; see the module docstring."""
    path = resolve_results_path(path)
    records, truncated = _read(path)
    if truncated is not None:
        warnings.warn(f"{path}: ignoring a truncated last line (a run was interrupted while writing it)",
                      stacklevel=2)
    return records


def latest(records: list[dict[str, Any]]) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """The last record of every (suite, scenario, method, seed)."""
    out: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for record in records:
        out[record_key(record)] = record
    return out


def resolve_results_path(path: str | Path) -> Path:
    path = Path(path)
    return path / RESULTS_FILE if path.is_dir() else path


class ResultStore:
    """Append-only writer over a results file; loads (and repairs a truncated tail of) what is there."""

    def __init__(self, path: str | Path, *, writable: bool = True) -> None:
        """``writable=False`` (the non-writing ranks of a torchrun job) reads without repairing anything."""
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        if self.path.exists():
            self.records, truncated = _read(self.path)
            if not writable:
                return
            if truncated is not None:
                warnings.warn(f"{self.path}: dropping a truncated last line left by an interrupted run",
                              stacklevel=2)
                with open(self.path, "r+b") as handle:
                    handle.truncate(truncated)
                    os.fsync(handle.fileno())
            elif self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
                # A complete last record whose newline was lost: terminate it so the next append starts clean.
                with open(self.path, "ab") as handle:
                    handle.write(b"\n")
                    os.fsync(handle.fileno())
        elif writable:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def latest(self) -> dict[tuple[str, str, str, int], dict[str, Any]]:
        return latest(self.records)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Validate, checksum and append ``record`` as one line, flushed to disk before returning."""
        record = _clean({**record, "schema": SCHEMA_VERSION})
        record.pop("checksum", None)
        record["checksum"] = checksum(record)
        _validate(record, f"{self.path}:<new record>")
        line = (canonical_json(record) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # One write call for the whole line: a kill can only leave a prefix without its newline.
            written = os.write(fd, line)
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.append(record)
        return record

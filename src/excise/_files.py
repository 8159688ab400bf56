"""Small file helpers: reading the JSON/YAML files users hand excise (requests, suites) with errors that name the
file, and writing files atomically (a temporary file renamed into place), for every module that writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any


def read_json_or_yaml(path: Path, what: str, error: type[Exception]) -> Any:
    """The parsed content of ``path``: JSON for ``.json``, YAML otherwise. A missing file or a parse error
    raises ``error`` naming ``what`` (e.g. ``"request file"``) and the path."""
    import yaml

    if not path.is_file():
        raise error(f"{what} {str(path)!r} " + ("is a directory, not a file" if path.is_dir() else "does not exist"))
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text, object_pairs_hook=refuse_duplicate_json_keys)
        return yaml.load(text, Loader=unique_key_loader())  # a SafeLoader subclass: no arbitrary objects
    except DuplicateKeyError as err:
        raise error(f"{what} {str(path)!r}: {err}") from err
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise error(f"{what} {str(path)!r} is not valid {path.suffix[1:].upper() or 'YAML'}: {err}") from err


class DuplicateKeyError(ValueError):
    """A key given twice in one JSON object or YAML mapping (the parsers would silently keep the last)."""


def refuse_duplicate_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads` that refuses repeated keys."""
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise DuplicateKeyError(f"key(s) {repeated} appear twice in one object; the first value would be lost")
    return dict(pairs)


@lru_cache(maxsize=1)
def unique_key_loader() -> type:
    """A ``yaml.SafeLoader`` subclass that refuses a key given twice in one mapping."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """safe_load, but a key given twice in one mapping is an error, not "the last one wins", and
        ``1e-3`` is the float YAML 1.2 (and every user) reads, not the string YAML 1.1 makes of it."""

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # ``<<: *anchor`` merges a mapping in; the base loader resolves it
                key = self.construct_object(key_node, deep=deep)
                try:
                    repeated = key in seen
                except TypeError:
                    break  # an unhashable key: the base loader raises its own YAML error for it
                if repeated:
                    line = key_node.start_mark.line + 1
                    raise DuplicateKeyError(f"key {key!r} appears twice in one mapping (line {line}); the first "
                                            "value would be lost")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    # YAML 1.1 wants a dot in a float's mantissa; 1.2 (and JSON) do not. Resolvers are matched first-come per
    # initial character, so this one is placed before the inherited ones for the characters it can start with.
    float_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
    resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    for first in "-+0123456789.":
        resolvers[first] = [("tag:yaml.org,2002:float", float_12), *resolvers.get(first, [])]
    UniqueKeyLoader.yaml_implicit_resolvers = resolvers
    return UniqueKeyLoader


def _file_mode(path: Path) -> int:
    """The mode a new file at ``path`` should get: the replaced file's, else what ``open`` would give under
    the current umask (``mkstemp`` creates private 0600 files, which would make shared outputs unreadable)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_many(
    files: list[tuple[str | Path, Callable[[Path], None]]], *, overwrite: bool = False
) -> list[Path]:
    """Write several files so that a failure leaves every existing file intact.

    Each ``write(tmp_path)`` fills a temporary file in its target's directory; only when all of them have
    been written are they renamed into place, back to back. Serialisation, a full disk or an exception
    therefore never leaves a half-written or half-replaced set; only a crash in the microseconds between
    two renames could, and a checkpoint's sha256 check refuses such a pair on load."""
    targets = [Path(path) for path, _ in files]
    if not overwrite:
        for path in targets:
            if path.exists():
                raise FileExistsError(
                    f"{str(path)!r} exists; refusing to overwrite it (pass overwrite=True / --overwrite)"
                )
    staged: list[Path] = []
    try:
        for path, (_, write) in zip(targets, files, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            staged.append(Path(tmp_name))
            try:
                write(staged[-1])
            except OSError as err:  # the file being written, named: "No space left on device" alone does not say
                raise OSError(err.errno, f"could not write {str(path)!r}: {err.strerror or err}") from err
            staged[-1].chmod(_file_mode(path))
            # On disk before it replaces anything: renamed unsynced data can read back empty after a power loss.
            with open(staged[-1], "rb") as handle:
                os.fsync(handle.fileno())
        for tmp, path in zip(staged, targets, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in staged:
            if tmp.exists():
                tmp.unlink()
    return targets


@contextmanager
def all_or_nothing(paths: Sequence[str | Path]) -> Iterator[None]:
    """Writes to ``paths`` that stand or fall together: if the block raises (or is interrupted), each path is put
    back as it was — a file it created is removed, a file it replaced is restored — and the error propagates.

    An unlearned model, its sidecar, its certificate and the ledger entry that records them are written one after
    another; each write is atomic, the set is not. Without this a ledger that refused the entry (another run
    extended the lineage first) left a certified model that no ledger recorded — or, under ``--overwrite``, a
    ledgered model replaced by one the ledger does not name. The earlier versions are kept as hard links (a copy
    where the file system has none) beside their files until the block ends."""
    targets = [Path(path) for path in paths]
    kept: list[tuple[Path, Path | None]] = []
    try:
        for path in targets:
            backup = None
            if path.exists():
                fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".was", dir=path.parent)
                os.close(fd)
                backup = Path(name)
                backup.unlink()
                try:
                    os.link(path, backup)
                except OSError:
                    shutil.copy2(path, backup)
            kept.append((path, backup))
        yield
    except BaseException:
        for path, backup in kept:
            if backup is not None:
                os.replace(backup, path)
            elif path.exists():
                path.unlink()
        raise
    finally:
        for _, backup in kept:
            if backup is not None and backup.exists():
                backup.unlink()


def atomic_write(path: str | Path, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path``; refuse to replace unless asked."""
    return atomic_write_many([(path, write)], overwrite=overwrite)[0]


def save_figure(fig: Any, path: str | Path, *, dpi: int = 110, overwrite: bool = False) -> Path:
    """Write a matplotlib figure as a PNG atomically, and close it whether or not the write succeeded."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), overwrite=overwrite)
    finally:
        plt.close(fig)


def atomic_write_text(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text), overwrite=overwrite)

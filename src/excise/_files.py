"""Reading the small JSON/YAML files users hand excise (requests, suites), with errors that name the file."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any


def read_json_or_yaml(path: Path, what: str, error: type[Exception]) -> Any:
    """The parsed content of ``path``: JSON for ``.json``, YAML otherwise. A missing file or a parse error
    raises ``error`` naming ``what`` (e.g. ``"request file"``) and the path."""
    import yaml

    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text, object_pairs_hook=_refuse_duplicate_json_keys)
        return yaml.load(text, Loader=_unique_key_loader())  # a SafeLoader subclass: no arbitrary objects
    except _DuplicateKey as err:
        raise error(f"{what} {str(path)!r}: {err}") from err
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise error(f"{what} {str(path)!r} is not valid {path.suffix[1:].upper() or 'YAML'}: {err}") from err


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise _DuplicateKey(f"key(s) {repeated} appear twice in one object; the first value would be lost")
    return dict(pairs)


@lru_cache(maxsize=1)
def _unique_key_loader() -> type:
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """safe_load, but a key given twice in one mapping is an error, not "the last one wins"."""

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    line = key_node.start_mark.line + 1
                    raise _DuplicateKey(f"key {key!r} appears twice in one mapping (line {line}); the first value "
                                        "would be lost")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader

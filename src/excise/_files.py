"""Reading the small JSON/YAML files users hand excise (requests, suites), with errors that name the file."""

from __future__ import annotations

import json
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
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise error(f"{what} {str(path)!r} is not valid {path.suffix[1:].upper() or 'YAML'}: {err}") from err

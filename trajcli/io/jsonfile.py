"""Small JSON side files (config.json, shard indexes, trainer_state.json, saved results): read whole,
every way they can be broken reported as one DataError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

from trajcli.errors import DataError


def read_json(path: Path, what: str, hint: str) -> object:
    """The parsed content of `path` (`what` names it in messages: "model config", "shard index" …)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}", hint) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {path} is not UTF-8 text (byte {exc.start})", hint) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} {path} is not valid JSON: {exc}", hint) from None
    except RecursionError:
        raise DataError(f"{what} {path} nests its JSON too deeply to read", hint) from None

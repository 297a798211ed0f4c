"""The model's `config.json` beside a checkpoint (the architecture and its head counts)."""

from __future__ import annotations

from pathlib import Path

from trajcli.errors import DataError
from trajcli.io.discover import Checkpoint
from trajcli.io.jsonfile import read_json


def find_model_config(checkpoints: list[Checkpoint]) -> tuple[dict | None, Path | None]:
    """config.json of the first checkpoint that has one: in its folder, or beside its file."""
    for ckpt in checkpoints:
        candidate = (ckpt.path if ckpt.path.is_dir() else ckpt.path.parent) / "config.json"
        if not candidate.is_file():
            continue
        config = read_json(candidate, "model config", "fix or remove the file, or pass --arch and the head counts")
        if not isinstance(config, dict):
            raise DataError(f"model config {candidate} is not a JSON object", "fix or remove the file")
        return config, candidate
    return None, None

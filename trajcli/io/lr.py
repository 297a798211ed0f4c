"""The learning rate a run used, from what it saved or from the user (for effective learning rates)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from trajcli.errors import DataError, UsageError
from trajcli.io.inventory import Inventory
from trajcli.io.jsonfile import read_json


def _trainer_log(inv: Inventory, key: str = "learning_rate") -> list[tuple[int, float]]:
    """(step, value of `key`) from every checkpoint's trainer_state.json log_history."""
    points: dict[int, float] = {}
    for ckpt in inv.checkpoints:
        state = ckpt.path / "trainer_state.json" if ckpt.path.is_dir() else None
        if state is None or not state.is_file():
            continue
        try:
            saved = read_json(state, "trainer state", "")
        except DataError:
            continue  # a damaged trainer_state.json says nothing of the learning rate
        history = saved.get("log_history", []) if isinstance(saved, dict) else []
        for entry in history if isinstance(history, list) else []:
            if not isinstance(entry, dict):
                continue
            step, value = entry.get("step"), entry.get(key)
            if (isinstance(step, int) and isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value)):
                points[step] = float(value)
    return sorted(points.items())


def _csv_points(path: Path, flag: str = "--lr-file", column: str = "lr", example: str = "1000,3e-4") -> list[tuple[int, float]]:
    """(step, value) rows of a CSV file given with `flag`: a header line allowed, values finite ≥ 0."""
    usage = f"a CSV file with columns step,{column}"
    try:
        rows = list(csv.reader(path.read_bytes().decode("utf-8").splitlines()))
    except csv.Error as exc:  # a field longer than csv allows, a NUL byte …
        raise DataError(f"{flag} {path} is not a CSV of step,{column} rows: {exc}", f"e.g. a header step,{column} then {example}") from None
    except OSError as exc:
        raise UsageError(f"{flag} {path}: {exc.strerror}", usage) from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{flag} {path} is not UTF-8 text (byte {exc.start})", usage) from None
    points = []
    for i, row in enumerate(rows):
        if not row or (i == 0 and not row[0].strip().lstrip("-").isdigit()):
            continue  # blank line or header
        try:
            step, value = int(row[0]), float(row[1])
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(value)
            points.append((step, value))
        except (ValueError, IndexError):
            raise DataError(f"{flag} {path} line {i + 1}: {','.join(row)!r} is not step,{column}", f"e.g. {example}") from None
    if not points:
        raise DataError(f"{flag} {path} holds no step,{column} rows", f"e.g. a header step,{column} then {example}")
    return points


def training_loss_points(inv: Inventory, loss_file: Path | None = None) -> tuple[list[tuple[int, float]], str | None]:
    """(step, training loss) points and where they came from: --loss-file, else the log_history of the
    checkpoints' trainer_state.json; ([], None) when nothing says."""
    if loss_file is not None:
        return _csv_points(loss_file, "--loss-file", "loss", "1000,2.31"), f"--loss-file {loss_file}"
    log = _trainer_log(inv, "loss")
    return log, ("trainer_state.json log_history" if log else None)


def learning_rate_points(inv: Inventory, lr: float | None, lr_file: Path | None) -> tuple[list[tuple[int, float]], str | None]:
    """(step, lr) points and where they came from: --lr, --lr-file, trainer_state.json's log_history,
    or the optimizer state saved in each checkpoint; ([], None) when nothing says."""
    steps = [c.step if c.step is not None else k for k, c in enumerate(inv.checkpoints)]
    if lr is not None:
        return [(s, lr) for s in steps], "--lr"
    if lr_file is not None:
        return _csv_points(lr_file), f"--lr-file {lr_file}"
    log = _trainer_log(inv)
    if log:
        return log, "trainer_state.json log_history"
    saved = [(s, r.metadata["lr"]) for s, r in zip(steps, inv.readers) if "lr" in r.metadata]
    if saved:
        return saved, "optimizer param_groups in the checkpoints"
    return [], None


def momentum_of(inv: Inventory, momentum: float | None) -> tuple[float | None, str | None]:
    """The run's momentum (SGD's momentum or Adam's β₁) and where it came from: --momentum, or the
    optimizer state saved in the checkpoints; (None, None) when nothing says."""
    if momentum is not None:
        return momentum, "--momentum"
    saved = [r.metadata["momentum"] for r in inv.readers if "momentum" in r.metadata]
    if saved:
        return saved[-1], "optimizer param_groups in the checkpoints"
    return None, None


# What `hyperparameters` reports, and where each key may come from (first found wins).
_TRAINING_ARGS = {"learning_rate": "lr", "weight_decay": "weight_decay", "adam_beta1": "beta1",
                  "adam_beta2": "beta2", "per_device_train_batch_size": "batch_size", "optim": "optimizer",
                  "momentum": "momentum", "seed": "seed"}
_NANOGPT_CONFIG = {"learning_rate": "lr", "weight_decay": "weight_decay", "beta1": "beta1", "beta2": "beta2",
                   "batch_size": "batch_size", "gradient_accumulation_steps": "gradient_accumulation_steps"}


def hyperparameters(inv: Inventory) -> dict:
    """What the run saved about how it was trained, from JSON and weights-only data only (never a
    pickle such as training_args.bin): `training_args.json` (TrainingArguments as JSON) in a
    checkpoint folder or the run folder, trainer_state.json (train_batch_size, the peak learning
    rate logged), the optimizer state in the checkpoints (lr, momentum or beta1, beta2, weight decay)
    and nanoGPT's `config`. {key: {"value", "source"}}; keys absent where nothing says."""
    found: dict = {}

    def take(key: str, value, source: str) -> None:
        if key not in found and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            found[key] = {"value": value, "source": source}

    last = inv.checkpoints[-1].path
    for folder in (last, last.parent) if last.is_dir() else (last.parent,):
        args_file = folder / "training_args.json"
        if args_file.is_file():
            try:
                args = read_json(args_file, "training arguments", "")
            except DataError:
                args = None
            for key, name in _TRAINING_ARGS.items():
                if isinstance(args, dict):
                    take(name, args.get(key), str(args_file.name))
    state = last / "trainer_state.json" if last.is_dir() else None
    if state is not None and state.is_file():
        try:
            saved = read_json(state, "trainer state", "")
        except DataError:
            saved = None
        if isinstance(saved, dict):
            take("batch_size", saved.get("train_batch_size"), "trainer_state.json")
    logged = [v for _, v in _trainer_log(inv)]
    if logged:
        take("lr", max(logged), "trainer_state.json log_history (peak)")
    for reader in inv.readers[::-1]:
        for key in ("lr", "momentum", "beta2", "weight_decay"):
            take(key, reader.metadata.get(key), "optimizer state of the last checkpoint")
        for key, name in _NANOGPT_CONFIG.items():
            take(name, reader.metadata.get("train_config", {}).get(key), "nanoGPT config in the checkpoints")
    if "momentum" not in found and "beta1" in found:
        found["momentum"] = found["beta1"]
    return found

"""Inventory: open every checkpoint's headers, order and select them, check they form one trajectory."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from trajcli.errors import DataError, UsageError
from trajcli.io.discover import Checkpoint, Discovery, order_checkpoints, select_checkpoints
from trajcli.io.sources import CheckpointReader, open_checkpoint


@dataclass(frozen=True)
class TensorSpec:
    """A tensor analysed across the whole trajectory."""

    name: str
    shape: tuple[int, ...]
    dtypes: tuple[str, ...]  # the distinct stored dtypes across checkpoints

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1


@dataclass
class Selection:
    """What the user asked to analyse: which checkpoints and which tensors."""

    every: int = 1
    max_checkpoints: int | None = None
    steps: str | None = None
    include: str | None = None
    exclude: str | None = None
    on_mismatch: str = "error"  # "error" | "skip"


@dataclass
class Inventory:
    checkpoints: list[Checkpoint]
    readers: list[CheckpointReader]
    tensors: list[TensorSpec]  # analysed tensors, in the first checkpoint's storage order
    left_out: list[dict] = field(default_factory=list)  # {"tensor", "why"} (+ "checkpoint" where one)
    left_out_paths: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    def close(self) -> None:
        for r in self.readers:
            r.close()


def compile_regex(pattern: str | None, flag: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"{flag} {pattern!r} is not a valid regular expression: {exc}", "e.g. --include 'layers\\.(0|1)\\.'") from None


def take_inventory(discovery: Discovery, selection: Selection, min_checkpoints: int = 2) -> Inventory:
    """Open, order, select and check the checkpoints; nothing but headers is read."""
    if selection.on_mismatch not in ("error", "skip"):
        raise UsageError(f"--on-mismatch {selection.on_mismatch!r} is not one of error, skip", "use --on-mismatch skip to analyse the common tensors")
    include = compile_regex(selection.include, "--include")
    exclude = compile_regex(selection.exclude, "--exclude")
    readers: dict[int, CheckpointReader] = {}
    try:
        for ckpt in discovery.checkpoints:
            readers[id(ckpt)] = open_checkpoint(ckpt)
    except BaseException:
        for r in readers.values():
            r.close()
        raise
    ordered = order_checkpoints(discovery.checkpoints)
    chosen = select_checkpoints(ordered, selection.every, selection.max_checkpoints, selection.steps)
    for ckpt in ordered:
        if ckpt not in chosen:
            readers.pop(id(ckpt)).close()
    chosen_readers = [readers[id(c)] for c in chosen]
    inv = Inventory(chosen, chosen_readers, [], left_out_paths=list(discovery.left_out))
    for reader in chosen_readers:
        inv.warnings.extend(reader.warnings)
    if len(chosen) < min_checkpoints:
        names = ", ".join(c.name for c in chosen) or "none"
        inv.close()
        raise DataError(
            f"at least {min_checkpoints} checkpoints are needed for a trajectory; found {len(chosen)} ({names})",
            "point trajcli at the folder that holds the checkpoints, or pass several checkpoint paths",
        )
    _warn_duplicate_steps(inv)
    try:
        _check_consistent(inv, include, exclude, selection.on_mismatch)
    except BaseException:
        inv.close()
        raise
    return inv


def _warn_duplicate_steps(inv: Inventory) -> None:
    by_step: dict[int, list[str]] = {}
    for c in inv.checkpoints:
        if c.step is not None:
            by_step.setdefault(c.step, []).append(c.name)
    for step, names in by_step.items():
        if len(names) > 1:
            inv.warnings.append(f"checkpoints {', '.join(names)} all claim step {step}: two runs in one folder?")


def _check_consistent(inv: Inventory, include, exclude, on_mismatch: str) -> None:
    first_reader = inv.readers[0]
    first = inv.checkpoints[0]

    def wanted(name: str) -> bool:
        return (include is None or include.search(name) is not None) and (exclude is None or exclude.search(name) is None)

    for stored, why in first_reader.left_out:
        inv.left_out.append({"tensor": stored, "why": why})
    reference = {n: t for n, t in first_reader.tensors.items()}
    for name in list(reference):
        if not wanted(name):
            inv.left_out.append({"tensor": name, "why": "not selected by --include/--exclude"})
            del reference[name]
    common = dict(reference)
    for ckpt, reader in zip(inv.checkpoints[1:], inv.readers[1:]):
        theirs = {n: t for n, t in reader.tensors.items() if wanted(n)}
        for name, info in reference.items():
            other = theirs.get(name)
            if other is not None and other.shape == info.shape:
                continue
            if other is None:
                problem = f"tensor {name} of {first.name} {list(info.shape)} is missing from {ckpt.name}"
            else:
                problem = f"checkpoint {ckpt.name}: tensor {name} has shape {list(other.shape)}, but {first.name} has {list(info.shape)}"
            if on_mismatch == "error":
                raise DataError(problem, "the checkpoints are not one trajectory (two runs or architectures?); "
                                "--on-mismatch skip analyses only the tensors they share")
            if name in common:
                del common[name]
                inv.left_out.append({"tensor": name, "why": problem, "checkpoint": ckpt.name})
        for name in theirs.keys() - reference.keys():
            msg = f"tensor {name} of {ckpt.name} {list(theirs[name].shape)} is missing from {first.name}"
            if on_mismatch == "error":
                raise DataError(msg, "the checkpoints are not one trajectory (two runs or architectures?); "
                                "--on-mismatch skip analyses only the tensors they share")
            inv.left_out.append({"tensor": name, "why": msg, "checkpoint": ckpt.name})
    if on_mismatch == "skip":
        dropped = [d for d in inv.left_out if "checkpoint" in d]
        if dropped:
            inv.warnings.append(f"--on-mismatch skip: left out {len(dropped)} tensor(s) not shared by every checkpoint, "
                                f"e.g. {dropped[0]['tensor']} ({dropped[0]['why']})")
    if not common:
        raise DataError(
            f"no tensor to analyse: {first.name} has {len(first_reader.tensors)} parameter tensor(s), none shared and selected",
            "check --include/--exclude, or that the checkpoints come from one model",
        )
    inv.tensors = [
        TensorSpec(name, info.shape, tuple(sorted({r.tensors[name].dtype for r in inv.readers})))
        for name, info in common.items()
    ]

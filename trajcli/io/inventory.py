"""Inventory: open every checkpoint's headers, order and select them, check they form one trajectory."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from trajcli.errors import DataError, UsageError
from trajcli.io.align import find_alignment
from trajcli.io.discover import Checkpoint, Discovery, discover_checkpoints, order_checkpoints, select_checkpoints, step_from_name
from trajcli.io.sources import CheckpointReader, open_checkpoint, step_from_file
from trajcli.types import TensorSpec


@dataclass
class Selection:
    """What the user asked to analyse: which checkpoints and which tensors."""

    every: int = 1
    max_checkpoints: int | None = None
    steps: str | None = None
    include: str | None = None
    exclude: str | None = None
    on_mismatch: str = "error"  # "error" | "skip"
    reference: str | None = None  # a checkpoint's name or step, or the path of one outside the trajectory
    strip_prefixes: tuple[str, ...] = ()  # removed from every tensor name (--strip-prefix)


@dataclass
class Inventory:
    checkpoints: list[Checkpoint]
    readers: list[CheckpointReader]
    tensors: list[TensorSpec]  # analysed tensors, in the first checkpoint's storage order
    left_out: list[dict] = field(default_factory=list)  # {"tensor", "why"} (+ "checkpoint" where one)
    left_out_paths: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reference_idx: int = 0  # the reference checkpoint of displacement and distances
    external_reference: bool = False  # checkpoint 0 is --reference PATH, from outside the trajectory
    name_alignment: list[dict] = field(default_factory=list)  # {"strip_prefix", "checkpoints"}: see io.align

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
        # Only a torch file's own metadata (nanoGPT iter_num, Lightning global_step) can still set a
        # step: those are opened before the checkpoints are ordered and selected, the others only once
        # chosen — a checkpoint that --steps, --every or --max-checkpoints leaves out is never opened
        # (one still being written, say).
        for ckpt in discovery.checkpoints:
            ckpt.strip_prefixes = selection.strip_prefixes
            if step_from_file(ckpt):
                readers[id(ckpt)] = open_checkpoint(ckpt)
        ordered = order_checkpoints(discovery.checkpoints)
        chosen = select_checkpoints(ordered, selection.every, selection.max_checkpoints, selection.steps)
        kept = {id(c) for c in chosen}
        for ckpt in ordered:
            if id(ckpt) in readers and id(ckpt) not in kept:
                readers.pop(id(ckpt)).close()
        for ckpt in chosen:
            if id(ckpt) not in readers:
                readers[id(ckpt)] = open_checkpoint(ckpt)
    except BaseException:
        for r in readers.values():
            r.close()
        raise
    chosen_readers = [readers[id(c)] for c in chosen]
    inv = Inventory(chosen, chosen_readers, [], left_out_paths=list(discovery.left_out))
    try:
        if chosen:
            _take_reference(inv, selection.reference, selection.strip_prefixes)
        if len(inv.checkpoints) < min_checkpoints:
            names = ", ".join(c.name for c in inv.checkpoints) or "none"
            raise DataError(
                f"at least {min_checkpoints} checkpoints are needed for a trajectory; found {len(inv.checkpoints)} "
                f"({names})",
                "point trajcli at the folder that holds the checkpoints, or pass several checkpoint paths",
            )
        for reader in inv.readers:
            inv.warnings.extend(reader.warnings)
        _warn_duplicate_steps(inv)
        _align_names(inv)
        _check_consistent(inv, include, exclude, selection.on_mismatch)
    except BaseException:
        inv.close()
        raise
    return inv


def _take_reference(inv: Inventory, reference: str | None, strip: tuple[str, ...]) -> None:
    """`--reference`: a checkpoint of the trajectory (name or step), or the path of one outside it (a
    pretrained base model), which then becomes checkpoint 0, the start of the trajectory."""
    if reference is None:
        return
    labels = [c.name for c in inv.checkpoints]
    steps = [c.step for c in inv.checkpoints]
    if reference in labels:
        inv.reference_idx = labels.index(reference)
        return
    if reference.isdigit() and steps.count(int(reference)) == 1:
        inv.reference_idx = steps.index(int(reference))
        return
    if not Path(reference).expanduser().exists():
        shown = ", ".join(labels[:4]) + (" …" if len(labels) > 4 else "")
        raise UsageError(f"--reference {reference!r} names no checkpoint of this trajectory and no file or folder",
                         f"use a name ({shown}), a step, or the path of a checkpoint (e.g. the base model)")
    found = discover_checkpoints([str(Path(reference).expanduser())]).checkpoints
    if len(found) != 1:
        raise DataError(f"--reference {reference} holds {len(found)} checkpoints; a reference is one",
                        "pass one checkpoint folder or file")
    ckpt = found[0]
    mine = [c.path.resolve() for c in inv.checkpoints]
    if ckpt.path.resolve() in mine:
        inv.reference_idx = mine.index(ckpt.path.resolve())
        return
    ckpt.strip_prefixes = strip
    reader = open_checkpoint(ckpt)
    if ckpt.step_source == "name" and step_from_name(ckpt.name, strict=True) is None:
        ckpt.step = None  # a model's name (MiniLM-L6-v2) is not a step
    first = inv.checkpoints[0]
    if ckpt.step is None:
        ckpt.step, ckpt.step_source = 0, "reference"  # a base model is where its fine-tune starts
    elif first.step is not None and ckpt.step > first.step:
        reader.close()
        raise DataError(f"--reference {reference} is at step {ckpt.step}, after the trajectory's first checkpoint "
                        f"{first.name} (step {first.step}); a reference from outside the trajectory comes first",
                        f"pick an earlier reference, or start the trajectory later with --steps {ckpt.step}:")
    if ckpt.name in labels:
        ckpt.name = f"{ckpt.name} (reference)"
    inv.checkpoints.insert(0, ckpt)
    inv.readers.insert(0, reader)
    inv.reference_idx, inv.external_reference = 0, True


def _align_names(inv: Inventory) -> None:
    """Checkpoints whose tensor names differ by a wrapper prefix (a base model and its fine-tune):
    each other naming is compared with the one most checkpoints use (the later ones on a tie), and
    when `find_alignment` finds one prefix unambiguously, the side that has it is opened again
    without it (so the names may become the base's, shorter ones)."""
    while True:
        groups: dict[frozenset, list[int]] = {}
        for idx, reader in enumerate(inv.readers):
            groups.setdefault(frozenset(reader.tensors), []).append(idx)
        if len(groups) == 1:
            return
        ranked = sorted(groups.values(), key=lambda idxs: (len(idxs), max(idxs)), reverse=True)
        most = ranked[0]
        for other in ranked[1:]:
            alignment = find_alignment(_shapes(inv.readers[other[0]]), _shapes(inv.readers[most[0]]),
                                       _group_label(inv, other), _group_label(inv, most))
            if alignment is not None:
                break
        else:
            return  # nothing aligns: the consistency check says what differs
        renamed = other if alignment.side == "first" else most
        for idx in renamed:
            ckpt = inv.checkpoints[idx]
            ckpt.strip_prefixes = (*ckpt.strip_prefixes, alignment.prefix)
            inv.readers[idx].close()
            inv.readers[idx] = open_checkpoint(ckpt)
        names = [inv.checkpoints[i].name for i in renamed]
        inv.name_alignment.append({"strip_prefix": alignment.prefix, "checkpoints": names})
        inv.warnings.append(f"tensor names aligned: '{alignment.prefix}' removed from the names of "
                            f"{_group_label(inv, renamed)}; {alignment.n_matched} tensors then share name and shape "
                            "across the trajectory (--strip-prefix forces a prefix)")


def _shapes(reader: CheckpointReader) -> dict[str, tuple[int, ...]]:
    return {name: info.shape for name, info in reader.tensors.items()}


def _group_label(inv: Inventory, idxs: list[int]) -> str:
    names = [inv.checkpoints[i].name for i in idxs]
    return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]} ({len(names)} checkpoints)"


def _warn_duplicate_steps(inv: Inventory) -> None:
    by_step: dict[int, list[str]] = {}
    for c in inv.checkpoints:
        if c.step is not None:
            by_step.setdefault(c.step, []).append(c.name)
    for step, names in by_step.items():
        if len(names) > 1:
            inv.warnings.append(f"checkpoints {', '.join(names)} all claim step {step}: two runs in one folder?")


def _check_consistent(inv: Inventory, include, exclude, on_mismatch: str) -> None:
    """Every checkpoint holds the tensors of the first one (an outside --reference: the first after
    it), with the same shapes; what differs stops the run, or with --on-mismatch skip is left out.
    Tensors that an outside --reference lacks or holds alone (a fine-tune's new head) are left out."""
    base_idx = 1 if inv.external_reference else 0
    first_reader = inv.readers[base_idx]
    first = inv.checkpoints[base_idx]

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
    hint = ("the checkpoints are not one trajectory (two runs or architectures?); --on-mismatch skip analyses "
            "only the tensors they share; --strip-prefix PREFIX aligns names that differ by a wrapper prefix")
    for idx, (ckpt, reader) in enumerate(zip(inv.checkpoints, inv.readers)):
        if idx == base_idx:
            continue
        outside = inv.external_reference and idx == 0
        lenient = outside or on_mismatch == "skip"
        theirs = {n: t for n, t in reader.tensors.items() if wanted(n)}
        for name, info in reference.items():
            other = theirs.get(name)
            if other is not None and other.shape == info.shape:
                continue
            if other is None and name in reader.others:  # stored there, but not as a parameter (an int, fp8 …)
                why = dict(reader.left_out).get(reader.others[name].stored_name, "not a parameter")
                problem = f"tensor {name}, a parameter in {first.name}, is left out of {ckpt.name}: {why}"
            elif other is None:
                problem = f"tensor {name} of {first.name} {list(info.shape)} is missing from {ckpt.name}"
            else:
                problem = f"checkpoint {ckpt.name}: tensor {name} has shape {list(other.shape)}, but {first.name} has {list(info.shape)}"
            if not lenient:
                raise DataError(problem, hint)
            if name in common:
                del common[name]
                inv.left_out.append({"tensor": name, "why": problem, "checkpoint": ckpt.name})
        for name in theirs.keys() - reference.keys():
            msg = f"tensor {name} of {ckpt.name} {list(theirs[name].shape)} is missing from {first.name}"
            if not lenient:
                raise DataError(msg, hint)
            inv.left_out.append({"tensor": name, "why": msg, "checkpoint": ckpt.name})
    dropped = [d for d in inv.left_out if "checkpoint" in d]
    if dropped:
        why = "--on-mismatch skip" if on_mismatch == "skip" else f"--reference {inv.checkpoints[0].name}"
        inv.warnings.append(f"{why}: left out {len(dropped)} tensor(s) not shared by every checkpoint, "
                            f"e.g. {dropped[0]['tensor']} ({dropped[0]['why']})")
    if not common:
        raise DataError(
            f"no tensor to analyse: {first.name} has {len(first_reader.tensors)} parameter tensor(s), none shared and selected",
            "check --include/--exclude, that the checkpoints come from one model, or --strip-prefix PREFIX "
            "where their names differ by a wrapper prefix",
        )
    inv.tensors = [
        TensorSpec(name, info.shape, tuple(sorted({r.tensors[name].dtype for r in inv.readers})))
        for name, info in common.items()
    ]

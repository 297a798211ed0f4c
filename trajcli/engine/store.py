"""The Gram set on disk (`grams.npz` in an output folder), and its reuse by later commands.

The file records where its Grams came from — every weight file's resolved path, size and mtime, the
analysed tensors and how each was cut into leaves — so a later command on the same trajectory can
answer from it without reading a checkpoint. A saved cut that refines the requested one (heads ->
parts -> whole tensors) is summed up; anything else is read again.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from trajcli import __version__
from trajcli.engine.gram import GramSet
from trajcli.errors import DataError
from trajcli.io.inventory import Inventory
from trajcli.io.sources import file_identity
from trajcli.types import Segment, whole_segment

GRAMS_FILE = "grams.npz"
STORE_FORMAT = 3  # 2: file identities with inode and ctime; 3: each Gram as its upper triangle


def identities(inv: Inventory) -> list[dict]:
    """What the Grams depend on: each checkpoint's weight files (path, size, mtime, inode, ctime), as
    they were when the inventory opened them — before the pass read anything of them."""
    return [{"name": ckpt.name, "files": reader.identity} for ckpt, reader in zip(inv.checkpoints, inv.readers)]


def check_unchanged(inv: Inventory) -> None:
    """Refuse a pass during which a weight file changed (written again, replaced, truncated): its
    Grams would mix two files' numbers."""
    for ckpt, reader in zip(inv.checkpoints, inv.readers):
        for path, before in zip(ckpt.files, reader.identity):
            try:
                now = file_identity(path)
            except DataError:
                now = None
            if now != before:
                raise DataError(f"{path} of checkpoint {ckpt.name} changed while it was read "
                                "(its size, mtime, inode or ctime differ from when the pass began); nothing was saved",
                                "run again once the file is complete (a trainer still saving it?)")


def _segment_json(segment: Segment) -> dict:
    return {"axis": segment.axis, "ranges": [list(r) for r in segment.ranges]}


def pass_plan(inv: Inventory, segments: dict[str, Segment]) -> dict:
    """What a pass's Grams depend on: the checkpoints (their files as found now), the analysed
    tensors and how each is cut into leaves."""
    return {
        "labels": [c.name for c in inv.checkpoints],
        "identities": identities(inv),
        "tensors": [{"name": t.name, "shape": list(t.shape)} for t in inv.tensors],
        "segments": {t.name: _segment_json(segments.get(t.name) or whole_segment(t)) for t in inv.tensors},
    }


def save_grams(path: Path, inv: Inventory, grams: GramSet, segments: dict[str, Segment]) -> None:
    """Write the Gram set atomically (temp file + rename)."""
    from trajcli.atomic import AtomicFiles

    leaves = list(grams.basis)
    meta = {
        "format": STORE_FORMAT,
        "trajcli_version": __version__,
        **pass_plan(inv, segments),
        "labels": grams.labels,
        "leaves": leaves,
        "tensor_of": grams.tensor_of,
        "n_params": grams.n_params,
        "nonfinite": {t: {str(k): c for k, c in v.items()} for t, v in grams.nonfinite.items()},
    }
    n = len(grams.labels)
    with AtomicFiles(path.parent) as files:
        with zipfile.ZipFile(files.path_for(path.name), "w", allowZip64=True) as z:  # as np.savez writes
            with z.open("meta.npy", "w") as member:
                np.lib.format.write_array(member, np.array(json.dumps(meta)), allow_pickle=False)
            # basis.npy (leaves × N(N+1)/2: each Gram's upper triangle, row by row — the Grams are
            # exactly symmetric) written leaf by leaf: no stacked copy of every Gram (a Pythia-12B cut
            # by heads has ~9,000 leaves)
            upper = np.triu_indices(n)
            with z.open("basis.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float64)),
                                                              "fortran_order": False, "shape": (len(leaves), len(upper[0]))})
                for leaf in leaves:
                    member.write(np.ascontiguousarray(grams.basis[leaf][upper], dtype=np.float64).data)


def _owners(segment: Segment, length: int) -> list[str | None]:
    owner: list[str | None] = [None] * length
    for start, stop, leaf in segment.ranges:
        for i in range(start, min(stop, length)):
            owner[i] = leaf
    return owner


def _derive(saved: Segment, wanted: Segment, length: int) -> dict[str, list[str]] | None:
    """wanted leaf -> the saved leaves that sum to it, when the saved cut refines the wanted one."""
    if saved == wanted:
        return {leaf: [leaf] for _, _, leaf in wanted.ranges}
    if len(wanted.ranges) == 1 and wanted.ranges[0][:2] == (0, length) and len(saved.ranges) >= 1:
        # the whole tensor: every saved leaf of it (they partition the tensor, whatever the axis)
        return {wanted.ranges[0][2]: list(dict.fromkeys(leaf for _, _, leaf in saved.ranges))}
    if saved.axis != wanted.axis:
        return None
    saved_owner, wanted_owner = _owners(saved, length), _owners(wanted, length)
    mapping: dict[str, str] = {}
    for s_leaf, w_leaf in zip(saved_owner, wanted_owner):
        if s_leaf is None or w_leaf is None or mapping.setdefault(s_leaf, w_leaf) != w_leaf:
            return None
    out: dict[str, list[str]] = {}
    for s_leaf, w_leaf in mapping.items():
        out.setdefault(w_leaf, []).append(s_leaf)
    return out


def load_grams(path: Path, inv: Inventory, segments: dict[str, Segment]) -> GramSet | None:
    """The Gram set for this trajectory and cut from `path`, or None when it cannot serve.

    Everything that can refuse the file is judged from its record and the array's header before a
    Gram is read. The saved Grams are then read one leaf at a time, and each wanted leaf is summed
    from its saved ones while still packed (upper triangles): memory holds the wanted cut, not the
    saved one — `similarity` on a folder a Pythia-12B-shaped report wrote (8,786 leaves, 850 MB)
    unpacks a few hundred tensors' Grams instead of every head's."""
    if not path.is_file():
        return None
    n = len(inv.checkpoints)
    try:
        with zipfile.ZipFile(path) as z:  # as np.savez wrote it: meta.npy, basis.npy
            with z.open("meta.npy") as member:
                meta = json.loads(str(np.lib.format.read_array(member, allow_pickle=False)))
            if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT or meta.get("identities") != identities(inv):
                return None  # stale: the Grams (up to GBs) are not even read
            if meta.get("tensors") != [{"name": t.name, "shape": list(t.shape)} for t in inv.tensors]:
                return None
            if not _consistent(meta, n):
                return None  # not what save_grams writes (edited, or another program's): read again
            have = {name: Segment(raw["axis"], tuple((a, b, leaf) for a, b, leaf in raw["ranges"]))
                    for name, raw in meta["segments"].items()}
            plan = _derivation(have, segments, inv.tensors)
            if plan is None:
                return None  # the saved cut does not refine this one: read again, the Grams unread
            with z.open("basis.npy") as member:
                shape, dtype, fortran_order = _array_header(member)
                if dtype != np.float64 or fortran_order or shape != (len(meta["leaves"]), n * (n + 1) // 2):
                    return None  # one float64 upper triangle of an N × N Gram per leaf, or not ours
                out = GramSet(list(meta["labels"]), nonfinite={t: {int(k): c for k, c in v.items()}
                                                               for t, v in meta["nonfinite"].items()})
                for leaf, (tensor, parts) in plan.items():
                    out.n_params[leaf] = sum(meta["n_params"][p] for p in parts)
                    out.tensor_of[leaf] = tensor
                out.basis = _summed(member, meta["leaves"], plan, n)
                if member.read(1):
                    return None  # more than the header says
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile):  # not ours, cut short
        return None
    return out


def _array_header(member) -> tuple[tuple, np.dtype, bool]:
    """(shape, dtype, fortran_order) of the .npy array `member` is positioned at; ValueError if none."""
    version = np.lib.format.read_magic(member)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"npy format {version}")
    shape, fortran_order, dtype = read(member)
    return shape, dtype, fortran_order


def _summed(member, leaves: list[str], plan: dict[str, tuple[str, list[str]]], n: int) -> dict[str, np.ndarray]:
    """Each wanted leaf's Gram from the saved rows (upper triangles, one per saved leaf, in `leaves`'
    order) read from `member`: its saved leaves summed in the order `plan` lists them — as
    derive_gramset sums unpacked Grams, so the values are the same bit for bit — then unpacked. A
    row is held only until the wanted leaf it belongs to is complete."""
    width = n * (n + 1) // 2
    upper = np.triu_indices(n)
    into, mirrored = upper[0] * n + upper[1], upper[1] * n + upper[0]
    owner = {p: leaf for leaf, (_, parts) in plan.items() for p in parts}
    missing = {leaf: len(parts) for leaf, (_, parts) in plan.items()}
    held: dict[str, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    for saved in leaves:
        data = member.read(width * 8)
        if len(data) != width * 8:
            raise EOFError("basis.npy is cut short")
        if saved not in owner:
            continue
        held[saved] = np.frombuffer(data, dtype=np.float64)
        leaf = owner[saved]
        missing[leaf] -= 1
        if not missing[leaf]:
            parts = plan[leaf][1]
            row = held.pop(parts[0]) if len(parts) == 1 else sum(held.pop(p) for p in parts)
            gram = np.empty(n * n)
            gram[into] = row
            gram[mirrored] = row
            gram.flags.writeable = False  # read-only: the analyses share it
            out[leaf] = gram.reshape(n, n)
    if len(out) != len(plan):
        raise ValueError("a wanted leaf's saved leaves are not all in basis.npy")
    return {leaf: out[leaf] for leaf in plan}  # in the wanted cut's order


def _consistent(meta: dict, n: int) -> bool:
    """The record holds together: N labels, every leaf once, with its tensor and size, every tensor
    cut into the leaves it records."""
    leaves = meta.get("leaves")
    if not (isinstance(leaves, list) and len(set(leaves)) == len(leaves) and isinstance(meta.get("labels"), list)):
        return False
    if len(meta["labels"]) != n:
        return False
    segments, tensor_of, n_params = meta.get("segments"), meta.get("tensor_of"), meta.get("n_params")
    if not (isinstance(segments, dict) and isinstance(tensor_of, dict) and isinstance(n_params, dict)):
        return False
    cut = {leaf for raw in segments.values() for _, _, leaf in raw.get("ranges", [])}
    return set(leaves) == cut == set(tensor_of) == set(n_params) and isinstance(meta.get("nonfinite"), dict)


def _derivation(have: dict[str, Segment], want: dict[str, Segment], tensors) -> dict[str, tuple[str, list[str]]] | None:
    """wanted leaf -> (its tensor, the leaves of the cut `have` that sum to it); None when `have` does
    not refine `want` for some tensor."""
    plan: dict[str, tuple[str, list[str]]] = {}
    for t in tensors:
        saved_segment = have.get(t.name) or whole_segment(t)
        wanted = want.get(t.name) or whole_segment(t)
        derived = _derive(saved_segment, wanted, t.shape[wanted.axis] if t.shape else 1)
        if derived is None:
            return None
        plan.update((leaf, (t.name, parts)) for leaf, parts in derived.items())
    return plan


def derive_gramset(grams: GramSet, have: dict[str, Segment], want: dict[str, Segment], tensors) -> GramSet | None:
    """The Gram set for the cut `want`, summed from one computed with the cut `have`; None when
    `have` does not refine `want` for some tensor."""
    plan = _derivation(have, want, tensors)
    if plan is None:
        return None
    out = GramSet(list(grams.labels), nonfinite=dict(grams.nonfinite))
    for leaf, (tensor, parts) in plan.items():
        # one part: the same array, not a copy (a report's cut is the saved one: ~1 GB at 9,000 leaves)
        out.basis[leaf] = grams.basis[parts[0]] if len(parts) == 1 else sum(grams.basis[p] for p in parts)
        out.n_params[leaf] = sum(grams.n_params[p] for p in parts)
        out.tensor_of[leaf] = tensor
    return out


def sub_trajectory(grams: GramSet, start: int, stop: int) -> GramSet:
    """The Gram set of checkpoints start … stop−1 alone, from one computed over a longer list (several
    runs read in one pass, one after another). Its basis is θ_start, then the same differences b_k:
    those entries are copied, and θ_start's row is the sum of the basis rows up to `start`."""
    out = GramSet(grams.labels[start:stop])
    for leaf, basis in grams.basis.items():
        n = stop - start
        sub = np.empty((n, n))
        sub[1:, 1:] = basis[start + 1:stop, start + 1:stop]
        sub[0, 1:] = basis[:start + 1, start + 1:stop].sum(axis=0)
        sub[1:, 0] = sub[0, 1:]
        sub[0, 0] = basis[:start + 1, :start + 1].sum()
        out.basis[leaf] = sub
        out.n_params[leaf] = grams.n_params[leaf]
        out.tensor_of[leaf] = grams.tensor_of[leaf]
    for tensor, per_ckpt in grams.nonfinite.items():
        mine = {k - start: count for k, count in per_ckpt.items() if start <= k < stop}
        if mine:
            out.nonfinite[tensor] = mine
    return out

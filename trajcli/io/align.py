"""Tensor names of checkpoints that differ by a wrapper prefix: a pretrained base model saves
`embeddings.…`, its fine-tune (e.g. a Trainer's BertForSequenceClassification) `bert.embeddings.…`.

An alignment removes one leading prefix from the names of one side. It is taken only when it is
unambiguous: every tensor of one side then has a namesake of the same shape on the other, it matches
more tensors than the names as they are, and no other prefix does as well. Otherwise the names stay
as stored and the user can force a prefix (`--strip-prefix`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from trajcli.errors import DataError

Shapes = Mapping[str, tuple[int, ...]]  # tensor name -> shape


def strip_prefixes(name: str, prefixes: Iterable[str]) -> str:
    """`name` without any of `prefixes` leading it (repeatedly, in any order)."""
    prefixes = tuple(p for p in prefixes if p)
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if name.startswith(prefix) and len(name) > len(prefix):
                name, changed = name[len(prefix):], True
    return name


def stripped(names: Iterable[str], prefixes: Iterable[str]) -> dict[str, str] | None:
    """Each name -> the name without `prefixes`; None when two names would become one."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for name in names:
        new = strip_prefixes(name, prefixes)
        if new in seen:
            return None
        seen.add(new)
        out[name] = new
    return out


@dataclass(frozen=True)
class Alignment:
    prefix: str  # removed from the names of one side
    side: str  # "first" or "second": whose names lose it
    n_matched: int  # tensors with a namesake of the same shape afterwards


def _matched(ours: Shapes, theirs: Shapes) -> int:
    return sum(1 for name, shape in ours.items() if theirs.get(name) == shape)


def _leading_prefixes(names: Iterable[str]) -> list[str]:
    return sorted({name.split(".", 1)[0] + "." for name in names if "." in name})


def find_alignment(first: Shapes, second: Shapes, first_label: str, second_label: str) -> Alignment | None:
    """The prefix whose removal from one side's names aligns the two sides (see the module's
    docstring); None when none does; a DataError naming the candidates when several do."""
    as_stored = _matched(first, second)
    found = []
    for side, ours, theirs in (("first", first, second), ("second", second, first)):
        for prefix in _leading_prefixes(ours):
            renamed = stripped(ours, [prefix])
            if renamed is None:
                continue
            n = _matched({renamed[k]: s for k, s in ours.items()}, theirs)
            if n > as_stored and n in (len(first), len(second)):
                found.append(Alignment(prefix, side, n))
    if len(found) > 1:
        label = {"first": first_label, "second": second_label}
        listed = "; ".join(f"'{a.prefix}' removed from {label[a.side]}" for a in found)
        raise DataError(
            f"the tensor names of {first_label} and {second_label} can be aligned in {len(found)} ways: {listed}",
            f"say which with --strip-prefix PREFIX (e.g. --strip-prefix {found[0].prefix})",
        )
    return found[0] if found else None

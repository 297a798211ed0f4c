"""The small types every layer shares: a tensor analysed across the trajectory, and how the pass cuts
it into leaves. The bottom of the package (no imports from trajcli)."""

from __future__ import annotations

from dataclasses import dataclass


class Shaped:
    """Element and row counts of anything with a `shape`."""

    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_rows(self) -> int:
        """Rows along the first axis (elements for a 1-D tensor, 1 for a scalar)."""
        return self.shape[0] if self.shape else 1


@dataclass(frozen=True)
class TensorSpec(Shaped):
    """A tensor analysed across the whole trajectory."""

    name: str
    shape: tuple[int, ...]
    dtypes: tuple[str, ...]  # the distinct stored dtypes across checkpoints


@dataclass(frozen=True)
class Segment:
    """How one tensor is cut into leaves: ranges along `axis`, each named by its leaf."""

    axis: int
    ranges: tuple[tuple[int, int, str], ...]  # (start, stop, leaf)


def whole_segment(spec: TensorSpec) -> Segment:
    """A tensor that is one leaf (named after the tensor)."""
    return Segment(0, ((0, spec.n_rows, spec.name),))

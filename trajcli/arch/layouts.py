"""Where Q, K and V (and each head) sit along the Q/K/V axis of an attention projection.

Each layout returns contiguous ranges (start, stop, part, head) of length head_dim that cover the axis
exactly, following the model's own forward pass (docs/architectures.md). The expected length is
checked against the stored shape before anything is read.
"""

from __future__ import annotations

from dataclasses import dataclass

from trajcli.errors import DataError

Range = tuple[int, int, str, int]  # (start, stop, part, head)


@dataclass(frozen=True)
class HeadCounts:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    source: str  # where the counts came from, for the result document


def fused_ranges(layout: str, heads: HeadCounts) -> tuple[int, list[Range]]:
    """(expected axis length, ranges) of a fused Q/K/V projection."""
    h, kv, hd = heads.num_heads, heads.num_kv_heads, heads.head_dim
    out: list[Range] = []
    if layout == "interleaved":  # view (H, 3, hd, d): Q [:,0], K [:,1], V [:,2]
        for head in range(h):
            for p, part in enumerate("qkv"):
                start = (3 * head + p) * hd
                out.append((start, start + hd, part, head))
        return 3 * h * hd, out
    if layout == "multi_query":  # view (H+2, hd, d): Q [:H], K [H], V [H+1]
        out = [(i * hd, (i + 1) * hd, "q", i) for i in range(h)]
        out += [(h * hd, (h + 1) * hd, "k", 0), ((h + 1) * hd, (h + 2) * hd, "v", 0)]
        return (h + 2) * hd, out
    if layout == "grouped":  # view (KV, H/KV + 2, hd, d): Q [:, :-2], K [:, -2], V [:, -1]
        per = h // kv
        for g in range(kv):
            base = g * (per + 2) * hd
            out += [(base + j * hd, base + (j + 1) * hd, "q", g * per + j) for j in range(per)]
            out += [(base + per * hd, base + (per + 1) * hd, "k", g), (base + (per + 1) * hd, base + (per + 2) * hd, "v", g)]
        return kv * (per + 2) * hd, out
    if layout == "contiguous":  # rows [H·hd | KV·hd | KV·hd]
        out = [(i * hd, (i + 1) * hd, "q", i) for i in range(h)]
        out += [((h + g) * hd, (h + g + 1) * hd, "k", g) for g in range(kv)]
        out += [((h + kv + g) * hd, (h + kv + g + 1) * hd, "v", g) for g in range(kv)]
        return (h + 2 * kv) * hd, out
    if layout == "codegen":  # view (4, 3, d/4, d): blocks of Q, V, K; head i lives in block i // (H/4)
        mp = 4
        per = h // mp
        local = per * hd
        for i in range(h):
            block, j = divmod(i, per)
            for p, part in enumerate("qvk"):
                start = block * 3 * local + p * local + j * hd
                out.append((start, start + hd, part, i))
        return 3 * h * hd, out
    raise ValueError(f"layout {layout!r} is not fused")


def separate_ranges(part: str, heads: HeadCounts) -> tuple[int, list[Range]]:
    """A separate q/k/v projection: head i is rows i·hd:(i+1)·hd."""
    n = heads.num_heads if part == "q" else heads.num_kv_heads
    hd = heads.head_dim
    return n * hd, [(i * hd, (i + 1) * hd, part, i) for i in range(n)]


def check_heads(layout: str, heads: HeadCounts, family: str) -> None:
    h, kv = heads.num_heads, heads.num_kv_heads
    problem = None
    if min(h, kv, heads.head_dim) < 1:
        problem = "head counts and head_dim must be positive"
    elif h % kv:
        problem = f"num_heads={h} is not a multiple of num_kv_heads={kv}"
    elif layout == "interleaved" and kv != h:
        problem = f"layout 'interleaved' has one K and one V per query head, but num_kv_heads={kv} != num_heads={h}"
    elif layout == "multi_query" and kv != 1:
        problem = f"layout 'multi_query' has a single K/V head, but num_kv_heads={kv}"
    elif layout == "codegen" and h % 4:
        problem = f"layout 'codegen' splits heads over 4 blocks, but num_heads={h}"
    if problem:
        raise DataError(f"{family}: {problem} ({heads.source})", "check --num-heads / --num-kv-heads / --head-dim or config.json")


def expected_length(layout: str, part: str, heads: HeadCounts) -> int:
    """The axis length a layout needs (as `fused_ranges` / `separate_ranges` would cover it), computed
    without building a range per head: counts from a file or a flag can be absurd (10⁷ heads)."""
    h, kv, hd = heads.num_heads, heads.num_kv_heads, heads.head_dim
    if part != "qkv":
        return (h if part == "q" else kv) * hd
    return {"interleaved": 3 * h * hd, "multi_query": (h + 2) * hd, "grouped": kv * (h // kv + 2) * hd,
            "contiguous": (h + 2 * kv) * hd, "codegen": 3 * h * hd}[layout]


def axis_ranges(family_name: str, layout: str, part: str, heads: HeadCounts, tensor: str,
                shape: tuple[int, ...], axis: int) -> list[Range]:
    """Ranges of one stored Q/K/V tensor, after checking its shape against the layout."""
    expected = expected_length(layout, part, heads)
    if axis >= len(shape) or shape[axis] != expected:
        h, kv, hd = heads.num_heads, heads.num_kv_heads, heads.head_dim
        formula = {"interleaved": "3·H·hd", "multi_query": "(H+2)·hd", "grouped": "(H+2·KV)·hd",
                   "contiguous": "(H+2·KV)·hd", "codegen": "3·H·hd"}.get(layout, "H·hd" if part == "q" else "KV·hd")
        got = shape[axis] if axis < len(shape) else "no such axis"
        raise DataError(
            f"tensor {tensor} has shape {list(shape)}: layout '{layout}' of {family_name} with H={h}, KV={kv}, "
            f"hd={hd} ({heads.source}) expects {formula} = {expected} along axis {axis}, found {got}",
            "check --num-heads / --num-kv-heads / --head-dim (or config.json), or --arch",
        )
    return (fused_ranges(layout, heads) if part == "qkv" else separate_ranges(part, heads))[1]

"""Groups of tensors (and of parts of tensors) that the analyses compare.

The engine accumulates one basis Gram per *leaf*: a whole tensor, or the rows (columns for GPT-2's
Conv1D) of a tensor that belong to one Q/K/V part — or one head of it. A group is a set of leaves;
its Gram is the sum of theirs. A `Plan` says how tensors are cut into leaves and which groups to form.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from trajcli.arch.families import Family, load_role_rules
from trajcli.arch.layouts import HeadCounts, axis_ranges, check_heads
from trajcli.errors import DataError, UsageError
from trajcli.types import Segment, TensorSpec

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
PARTS = ("q", "k", "v")
ROLE_ORDER = ("embedding", "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "mlp", "norm", "head", "other")


@dataclass
class Group:
    name: str
    kind: str  # tensor | block | role | part | head
    layer: int | None
    leaves: list[str]
    n_params: int = 0
    role: str | None = None
    part: str | None = None
    head: int | None = None
    stack: str | None = None  # encoder | decoder in an encoder-decoder model

@dataclass
class Plan:
    segments: dict[str, Segment] = field(default_factory=dict)
    groups: list[Group] = field(default_factory=list)
    unclaimed: list[str] = field(default_factory=list)  # Q/K/V-looking tensors the layout does not place


# Names of what looks like a Q, K, V or fused QKV projection, whatever the family.
_QKV_LIKE = re.compile(r"(?:^|\.)(?:q|k|v|query|key|value|q_proj|k_proj|v_proj|qkv|qkv_proj|query_key_value|c_attn"
                       r"|Wqkv|att_proj|in_proj)(?:_weight|_bias)?(?:\.(?:weight|bias))?$")


def layer_index(name: str) -> int | None:
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


_STACK = re.compile(r"(?:^|\.)(encoder|decoder)\.")


def stack_of(name: str) -> str | None:
    """"encoder" or "decoder" when the blocks of `name` belong to one stack of an encoder-decoder
    model (BART `model.encoder.layers.N`, T5 `decoder.block.N`): its block N is not the other's."""
    found = _LAYER.search(name)
    stack = _STACK.findall(name[: found.start() + 1]) if found else []
    return stack[-1] if stack else None


def role_of(name: str) -> str:
    for role, pattern in load_role_rules():
        if pattern.search(name):
            return role
    return "other"


def _is_embedding(name: str, role: str) -> bool:
    return role == "embedding" or (role != "head" and "embed" in name.lower())


def _positive(value: int, where: str) -> int:
    if value < 1:
        raise DataError(f"{where} is {value}; head counts and head_dim are positive whole numbers",
                        "fix the file, or pass --num-heads / --num-kv-heads / --head-dim")
    return value


def resolve_heads(family: Family, config: dict | None, model_args: dict | None, flags: dict,
                  d_in: int | None) -> HeadCounts | None:
    """Head counts from flags, then config.json (the family's keys), then nanoGPT's model_args."""

    def from_config(kind: str):
        for key in family.head_keys.get(kind, ()):
            value = config or {}
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                return _positive(value, f"{key} in config.json"), f"{key} in config.json"
        return None, None

    def lookup(kind: str):
        flag = f"--{kind.replace('_', '-')}"
        saved, where = from_config(kind)
        if flags.get(kind) is not None:
            if saved is not None and saved != flags[kind] and not flags.get("force_layout"):
                raise UsageError(f"{flag} {flags[kind]} contradicts {where}, which says {saved}",
                                 f"drop {flag}, or add --force-layout if config.json is wrong")
            return flags[kind], flag
        if saved is not None:
            return saved, where
        if kind == "num_heads" and model_args and isinstance(model_args.get("n_head"), int):
            return _positive(model_args["n_head"], "n_head in model_args"), "n_head in model_args"
        return None, None

    h, h_src = lookup("num_heads")
    if h is None:
        return None
    kv, kv_src = lookup("num_kv_heads")
    if kv is not None and family.fixed_kv_heads is not None and kv != family.fixed_kv_heads:
        # a count that contradicts the layout would cut K and V where they are not: refused, never used
        error = UsageError if kv_src.startswith("--") else DataError
        raise error(f"{kv_src} gives {kv} key/value heads, but the {family.name} layout has {family.fixed_kv_heads} "
                    "(a fixed fact of that layout)",
                    "drop --num-kv-heads; if the model is not what the layout describes, pick another --arch "
                    "(trajcli archs lists them)")
    if kv is None and family.fixed_kv_heads is not None:
        kv, kv_src = family.fixed_kv_heads, f"{family.name} layout"
    if kv is None:
        kv, kv_src = h, "= num_heads"
    hd, hd_src = lookup("head_dim")
    if hd is None:
        if d_in is None or d_in % h:
            raise DataError(f"{family.name}: cannot derive head_dim: hidden size {d_in} is not a multiple of {h} heads",
                            "pass --head-dim N")
        hd, hd_src = d_in // h, f"hidden size {d_in} / num_heads"
    return HeadCounts(h, kv, hd, f"num_heads {h} from {h_src}, num_kv_heads {kv} {kv_src}, head_dim {hd} from {hd_src}")


class MergedBlocksError(DataError):
    """Two attention blocks read as one layer's part (an encoder-decoder model): Q/K/V cannot be
    planned, but roles by name (separate q/k/v projections) still can."""


def qkv_tensors(tensors: list[TensorSpec], family: Family) -> dict[str, tuple[str, int, str]]:
    """tensor name -> (part, layer, param) for the family's Q/K/V tensors among `tensors`. Two tensors
    that would be one layer's same part (an encoder's and a decoder's layer N) are refused: they
    would be merged into one group."""
    found: dict[str, tuple[str, int, str]] = {}
    claimed: dict[tuple[str, int, str], str] = {}
    for t in tensors:
        m = family.match(t.name)
        if m is None:
            continue
        if m in claimed:
            part, layer, param = m
            raise MergedBlocksError(
                f"{claimed[m]} and {t.name} would both be layer {layer}'s {part.upper()} {param} in the {family.name} "
                "layout: two attention blocks (the encoder and decoder of an encoder-decoder model?) would be merged",
                "Q/K/V of encoder-decoder models (BART, T5, Whisper …) is not supported yet; `layers` keeps "
                "their encoder and decoder blocks apart",
            )
        claimed[m] = t.name
        found[t.name] = m
    return found


def shapes_fit(tensors: list[TensorSpec], family: Family) -> bool:
    """Whether the family's fused Q/K/V weights could have the stored shapes, whatever the head counts:
    a third each (interleaved, row or column thirds) is 3 × the input width along the Q/K/V axis; one
    K/V head (multi-query) is between 1 and 3 × it; grouped layouts fit any length. Used only to
    narrow a refusal's list of candidates, never to choose a layout."""
    for t in tensors:
        m = family.match(t.name)
        if m is None or m[0] != "qkv" or m[2] != "weight" or len(t.shape) != 2:
            continue
        along, width = t.shape[family.weight_axis], t.shape[1 - family.weight_axis]
        if family.fixed_kv_heads == 1 and family.layout in ("contiguous", "multi_query"):
            return width < along < 3 * width
        if family.layout in ("interleaved", "codegen") or (family.layout == "contiguous" and family.equal_thirds):
            return along == 3 * width
        return True
    return True


def hidden_size_from(tensors: list[TensorSpec], family: Family, matched: dict) -> int | None:
    """The input width of the first Q/K/V weight (its `in` features)."""
    for t in tensors:
        if t.name in matched and matched[t.name][2] == "weight" and len(t.shape) == 2:
            return t.shape[1 - family.weight_axis]
    return None


def _leaf(tensor: str, part: str, head: int | None) -> str:
    return f"{tensor}[{part}]" if head is None else f"{tensor}[{part}.h{head}]"


def qkv_segments(tensors: list[TensorSpec], family: Family, heads: HeadCounts | None, per_head: bool,
                 needs_heads_flag: str = "--num-heads") -> tuple[dict[str, Segment], dict]:
    """Cut the family's Q/K/V tensors into per-part (or per-head) leaves.

    Returns the segments and an index {(layer, part, head|None): [(leaf, param, n_params)]}.
    """
    matched = qkv_tensors(tensors, family)
    segments: dict[str, Segment] = {}
    index: dict[tuple, list] = defaultdict(list)
    leaf_info: dict[str, list] = {}  # leaf -> [(layer, part, head), param, n_params]
    thirds = heads is None and family.equal_thirds and not per_head  # nanoGPT's parts need no head counts
    if (family.fused or per_head) and matched and heads is None and not thirds:
        raise DataError(
            f"the {family.name} attention layout ({family.layout}) cannot be split without the number of heads: "
            "none in config.json or the checkpoint",
            f"pass {needs_heads_flag} N (and --num-kv-heads N for grouped-query attention)",
        )
    if heads is not None and matched:
        check_heads(family.layout, heads, family.name)
    for t in tensors:
        if t.name not in matched:
            continue
        part, layer, param = matched[t.name]
        if not family.fused and not per_head:
            index[(layer, part, None)].append((t.name, param, t.numel))
            continue
        axis = family.weight_axis if (param == "weight" and len(t.shape) == 2) else 0
        counts = heads
        if thirds:  # one "head" a third long: Q, K, V = rows [0, d), [d, 2d), [2d, 3d)
            if t.shape[axis] % 3:
                raise DataError(f"tensor {t.name} has shape {list(t.shape)}: the {family.name} layout needs three equal "
                                f"parts along axis {axis}", "check --arch, or pass --num-heads N")
            counts = HeadCounts(1, 1, t.shape[axis] // 3, "equal thirds (no head counts needed for the parts)")
        ranges = axis_ranges(family.name, family.layout, part, counts, t.name, t.shape, axis)
        per_elem = t.numel // t.shape[axis]
        cuts: list[tuple[int, int, str]] = []
        for start, stop, p, head in sorted(ranges):
            leaf = _leaf(t.name, p, head if per_head else None)
            if cuts and cuts[-1][2] == leaf and cuts[-1][1] == start:
                cuts[-1] = (cuts[-1][0], stop, leaf)  # merge adjacent rows of the same leaf
            else:
                cuts.append((start, stop, leaf))
            info = leaf_info.setdefault(leaf, [(layer, p, head if per_head else None), param, 0])
            info[2] += (stop - start) * per_elem
        segments[t.name] = Segment(axis, tuple(cuts))
    for leaf, (key, param, n) in leaf_info.items():
        index[key].append((leaf, param, n))
    return segments, index


def plan_layers(tensors: list[TensorSpec], by: str, family: Family | None, heads: HeadCounts | None) -> Plan:
    """Groups for `trajcli layers --by tensor|block|role`."""
    plan = Plan()
    if by == "tensor":
        plan.groups = [Group(t.name, "tensor", layer_index(t.name), [t.name], t.numel, role=role_of(t.name)) for t in tensors]
        return plan
    split_qkv = {}
    if by == "role" and family is not None and family.fused:
        segments, index = qkv_segments(tensors, family, heads, per_head=False)
        plan.segments = segments
        for (layer, part, _), entries in index.items():
            for leaf, _, n in entries:
                split_qkv[leaf] = (f"attn_{part}", n)
    groups: dict[str, Group] = {}
    order: list[str] = []
    for t in tensors:
        layer, stack = layer_index(t.name), stack_of(t.name)
        prefix = f"{stack}." if stack else ""
        leaves = [(t.name, role_of(t.name), t.numel)]
        if t.name in plan.segments:
            leaves = [(leaf, split_qkv[leaf][0], split_qkv[leaf][1]) for _, _, leaf in plan.segments[t.name].ranges]
            leaves = list(dict.fromkeys(leaves))
        for leaf, role, n in leaves:
            if by == "block":
                if layer is not None:
                    name = f"{prefix}block.{layer}"
                else:  # outside the blocks: embeddings (and their norm) before, the rest after
                    name = "embedding" if _is_embedding(t.name, role) else "final"
            else:
                name = f"{prefix}block.{layer}.{role}" if layer is not None else role
            if name not in groups:
                groups[name] = Group(name, by, layer, [], 0, role=role if by == "role" else None,
                                     stack=stack if layer is not None else None)
                order.append(name)
            if leaf not in groups[name].leaves:
                groups[name].leaves.append(leaf)
                groups[name].n_params += n
    # the embedding first, then blocks in numeric order (roles in a fixed order), then the rest
    def key(name: str):
        g = groups[name]
        role_rank = ROLE_ORDER.index(g.role) if g.role in ROLE_ORDER else len(ROLE_ORDER)
        if g.layer is not None:  # an encoder's blocks before a decoder's
            return (1, g.stack == "decoder", g.layer, role_rank, order.index(name))
        first = name == "embedding" or g.role == "embedding"
        return (0 if first else 2, False, 0, role_rank, order.index(name))

    plan.groups = [groups[n] for n in sorted(order, key=key)]
    return plan


_BLOCK_ORDER = {"encoder": 0, "decoder": 1, "decoder.cross": 2}


def layer_order(layer) -> tuple:
    """Sort key of a layer: its index, or (an encoder-decoder model's) its block, then its index."""
    return (_BLOCK_ORDER.get(layer[0], 3), layer[0], layer[1]) if isinstance(layer, tuple) else (0, "", layer)


def layer_name(layer) -> str:
    """`layer.3`, or `encoder.layer.3`, `decoder.cross.layer.3` in an encoder-decoder model."""
    return f"{layer[0]}.layer.{layer[1]}" if isinstance(layer, tuple) else f"layer.{layer}"


def plan_qkv(tensors: list[TensorSpec], family: Family, heads: HeadCounts | None, per_head: bool,
             include_bias: bool) -> tuple[Plan, list]:
    """Per layer (per block and layer in an encoder-decoder model): Q, K and V groups (and per-head
    groups with `per_head`)."""
    segments, index = qkv_segments(tensors, family, heads, per_head)
    matched = qkv_tensors(tensors, family)
    plan = Plan(segments=segments, unclaimed=[t.name for t in tensors if t.name not in matched and _QKV_LIKE.search(t.name)])
    layers = sorted({layer for (layer, _, _) in index}, key=layer_order)
    if not layers:
        raise DataError(f"no {family.name} attention tensors among the analysed tensors",
                        "check --include/--exclude, or --arch")
    for layer in layers:
        for part in PARTS:
            keys = sorted(k for k in index if k[0] == layer and k[1] == part)
            part_leaves = [(leaf, n) for k in keys for leaf, param, n in index[k] if include_bias or param != "bias"]
            if not part_leaves:
                raise DataError(f"{layer_name(layer)} of {family.name} has no {part.upper()} weight",
                                "the checkpoint does not follow this layout; check --arch")
            plan.groups.append(Group(f"{layer_name(layer)}.{part}", "part", layer, [leaf for leaf, _ in part_leaves],
                                     sum(n for _, n in part_leaves), part=part))
            if per_head:
                for k in keys:
                    leaves = [(leaf, n) for leaf, param, n in index[k] if include_bias or param != "bias"]
                    plan.groups.append(Group(f"{layer_name(layer)}.{part}.h{k[2]}", "head", layer, [leaf for leaf, _ in leaves],
                                             sum(n for _, n in leaves), part=part, head=k[2]))
    return plan, layers


_CONV_BN = re.compile(r"^(?P<prefix>.*)conv(?P<idx>\d+)\.weight$")
_DOWNSAMPLE = re.compile(r"^(?P<prefix>.*downsample)\.0\.weight$")


def scale_invariant_tensors(tensors: list[TensorSpec], all_names: set[str], pattern: re.Pattern | None) -> list[str]:
    """Weights whose scale a normalization right after them removes: those matching `pattern`
    (--scale-invariant), else ResNet-style convolutions followed by batch norm (`…convK.weight`
    with `…bnK.` beside it, `…downsample.0.weight` with `…downsample.1.`)."""
    if pattern is not None:
        return [t.name for t in tensors if pattern.search(t.name)]
    found = []
    for t in tensors:
        m = _CONV_BN.match(t.name)
        norm_prefix = f"{m.group('prefix')}bn{m.group('idx')}." if m else None
        d = _DOWNSAMPLE.match(t.name)
        norm_prefix = norm_prefix or (f"{d.group('prefix')}.1." if d else None)
        if norm_prefix and any(name.startswith(norm_prefix) for name in all_names):
            found.append(t.name)
    return found

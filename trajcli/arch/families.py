"""Architecture families loaded strictly from `families/*.json`, and their detection.

A family file says which config (`architectures`, `model_type`, flags in `when`) or checkpoint format
it belongs to, how its Q/K/V weights are stored (one fused tensor with a named layout, or three
separate tensors), and which config keys hold the head counts. Unknown keys are errors, so the data
cannot drift from the code that reads it.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources

from trajcli.errors import DataError, UsageError

LAYOUTS = ("interleaved", "multi_query", "grouped", "contiguous", "codegen", "separate")
_FAMILY_KEYS = {"name", "title", "architectures", "model_types", "formats", "when", "config_defaults", "qkv", "heads"}
_QKV_KEYS = {"fused", "q", "k", "v", "layout", "weight_axis", "num_kv_heads", "equal_thirds"}
_HEAD_KEYS = {"num_heads", "num_kv_heads", "head_dim"}


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    layout: str
    weight_axis: int  # the axis of a weight that runs over Q/K/V rows (1 for GPT-2's Conv1D)
    patterns: dict[str, re.Pattern]  # "fused" or "q"/"k"/"v" -> name pattern with (?P<layer>) and (?P<param>)
    architectures: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    when: dict = field(default_factory=dict)
    config_defaults: dict = field(default_factory=dict)
    head_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fixed_kv_heads: int | None = None
    equal_thirds: bool = False  # Q, K and V are always a third each (nanoGPT): parts need no head counts

    @property
    def fused(self) -> bool:
        return self.layout != "separate"

    def match(self, name: str) -> tuple[str, int | tuple[str, int], str] | None:
        """(part, layer, param) when `name` is a Q/K/V tensor of this family; part is 'qkv' if fused.
        In an encoder-decoder family (patterns with a `stack` group) the layer is (block, index), the
        block "encoder", "decoder" or "decoder.cross" (a `cross` group matched): three attention
        blocks can share an index."""
        for part, pattern in self.patterns.items():
            found = pattern.search(name)
            if found:
                layer: int | tuple[str, int] = int(found.group("layer"))
                if "stack" in pattern.groupindex:
                    layer = (found.group("stack") + (".cross" if found.groupdict().get("cross") else ""), layer)
                return ("qkv" if part == "fused" else part), layer, found.group("param")
        return None

    def fits_config(self, config: dict) -> bool:
        return all(config.get(k, self.config_defaults.get(k)) == v for k, v in self.when.items())


def _strict(raw: dict, allowed: set[str], where: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def parse_family(raw: dict, where: str) -> Family:
    _strict(raw, _FAMILY_KEYS, where)
    qkv, heads = raw["qkv"], raw.get("heads", {})
    _strict(qkv, _QKV_KEYS, f"{where} qkv")
    _strict(heads, _HEAD_KEYS, f"{where} heads")
    layout = qkv["layout"]
    if layout not in LAYOUTS:
        raise ValueError(f"{where}: layout {layout!r} is not one of {LAYOUTS}")
    parts = ("fused",) if layout != "separate" else ("q", "k", "v")
    if set(qkv) & {"fused", "q", "k", "v"} != set(parts):
        raise ValueError(f"{where}: layout {layout!r} needs pattern(s) {parts}")
    patterns = {p: re.compile(qkv[p]) for p in parts}
    for p, pattern in patterns.items():
        if {"layer", "param"} - set(pattern.groupindex):
            raise ValueError(f"{where}: pattern {p!r} needs the groups (?P<layer>…) and (?P<param>…)")
    if qkv["weight_axis"] not in (0, 1):
        raise ValueError(f"{where}: weight_axis must be 0 or 1")
    return Family(
        name=raw["name"], title=raw["title"], layout=layout, weight_axis=qkv["weight_axis"], patterns=patterns,
        architectures=tuple(raw.get("architectures", ())), model_types=tuple(raw.get("model_types", ())),
        formats=tuple(raw.get("formats", ())), when=dict(raw.get("when", {})),
        config_defaults=dict(raw.get("config_defaults", {})),
        head_keys={k: tuple(v) for k, v in heads.items()}, fixed_kv_heads=qkv.get("num_kv_heads"),
        equal_thirds=bool(qkv.get("equal_thirds", False)),
    )


@functools.cache
def load_families() -> tuple[Family, ...]:
    folder = resources.files("trajcli.arch").joinpath("families")
    families = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            family = parse_family(json.loads(entry.read_text()), f"families/{entry.name}")
            if family.name != entry.name[: -len(".json")]:
                raise ValueError(f"families/{entry.name}: name {family.name!r} differs from the file name")
            families.append(family)
    return tuple(families)


@functools.cache
def load_role_rules() -> tuple[tuple[str, re.Pattern], ...]:
    raw = json.loads(resources.files("trajcli.arch").joinpath("roles.json").read_text())
    _strict(raw, {"comment", "rules"}, "roles.json")
    return tuple((role, re.compile(pattern)) for role, pattern in raw["rules"])


def family_by_name(name: str) -> Family:
    for family in load_families():
        if family.name == name:
            return family
    raise UsageError(f"--arch {name!r} is not a known architecture family",
                     f"one of: {', '.join(f.name for f in load_families())} (see trajcli archs)")


@dataclass
class Detection:
    family: Family | None
    source: str  # how it was found: "--arch", "config.json", "format", "tensor names", or why not
    ambiguous: tuple[str, ...] = ()


def detect_family(config: dict | None, checkpoint_format: str, tensor_names: list[str], arch: str | None = None) -> Detection:
    """--arch, else config.json (architectures / model_type, then `when` flags), else the checkpoint
    format (nanoGPT), else the tensor names when only one family (or families that agree) fits."""
    if arch is not None:
        return Detection(family_by_name(arch), "--arch")
    families = load_families()
    if config:
        listed = config.get("architectures")
        archs = {a for a in listed if isinstance(a, str)} if isinstance(listed, list) else set()
        model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None
        candidates = [f for f in families if (archs & set(f.architectures)) or (model_type in f.model_types)]
        fitting = [f for f in candidates if f.fits_config(config)]
        if len(fitting) == 1:
            return Detection(fitting[0], "config.json")
        if len(fitting) > 1:
            raise DataError(f"config.json fits several layouts: {', '.join(f.name for f in fitting)}",
                            "pass --arch NAME (trajcli archs lists them)")
    for f in families:
        if checkpoint_format in f.formats:
            return Detection(f, "format")
    by_names = [f for f in families if any(f.match(n) for n in tensor_names)]
    if not by_names:
        return Detection(None, "no known attention tensor names")
    first = by_names[0]
    agree = all(f.layout == first.layout and f.weight_axis == first.weight_axis and f.when == first.when
                and f.fixed_kv_heads == first.fixed_kv_heads and
                {p: q.pattern for p, q in f.patterns.items()} == {p: q.pattern for p, q in first.patterns.items()}
                for f in by_names)
    if len(by_names) == 1 or agree:
        return Detection(first, "tensor names")
    return Detection(None, "tensor names fit several layouts", tuple(f.name for f in by_names))

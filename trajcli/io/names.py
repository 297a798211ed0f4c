"""Tensor names: wrapper prefixes, and tensors that are stored but are not parameters."""

from __future__ import annotations

import re

# torch.compile and DDP wrappers; they can appear in any order and more than once.
_WRAPPERS = ("_orig_mod.", "module.")

_FLOAT_DTYPES = {"float64", "float32", "float16", "bfloat16"}

# (pattern on the canonical name, minimum ndim it applies to, reason): tensors that are
# not parameters, causal masks and buffers saved by older code.
_BUFFERS = (
    (re.compile(r"(^|\.)masked_bias$"), 0, "attention mask buffer"),
    (re.compile(r"(^|\.)(attn|attention)\.bias$"), 2, "causal attention mask buffer"),
    (re.compile(r"(^|\.)inv_freq$"), 0, "rotary embedding buffer"),
    (re.compile(r"(^|\.)position_ids$"), 0, "position index buffer"),
    (re.compile(r"(^|\.)num_batches_tracked$"), 0, "batch-norm counter buffer"),
    (re.compile(r"(^|\.)running_(mean|var)$"), 0, "batch-norm statistics buffer"),
)


def _strip_wrappers(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPERS:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def canonical_names(stored: list[str], lightning: bool = False) -> dict[str, str]:
    """Map each stored name to its canonical name (wrapper prefixes removed).

    `_orig_mod.` and `module.` are removed wherever they lead a name. In a Lightning checkpoint the
    module attribute (`model.`, `net.` …) leads every key; it is removed when all keys share it.
    When stripping would make two names collide, the names are kept as stored.
    """
    names = [_strip_wrappers(n) for n in stored]
    if lightning and names:
        first = {n.split(".", 1)[0] for n in names}
        if len(first) == 1 and all("." in n for n in names):
            names = [_strip_wrappers(n.split(".", 1)[1]) for n in names]
    if len(set(names)) != len(names):
        return {n: n for n in stored}
    return dict(zip(stored, names))


def why_not_parameter(name: str, shape: tuple[int, ...], dtype: str) -> str | None:
    """The reason a stored tensor is left out of the analysis, or None for a parameter."""
    if dtype not in _FLOAT_DTYPES:
        if dtype.startswith("float8"):
            return f"{dtype} tensor (quantized weights are not analysed)"
        return f"{dtype} tensor (not a trainable parameter)"
    for pattern, min_ndim, reason in _BUFFERS:
        if len(shape) >= min_ndim and pattern.search(name):
            return reason
    if 0 in shape:
        return "empty tensor"
    return None

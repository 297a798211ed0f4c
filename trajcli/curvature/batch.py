"""One fixed batch of data, the same at every checkpoint.

Token ids (`.npy`, `.pt`) are a 1-D stream cut into sequences of `seq_len`, or a 2-D array of
sequences; a text file is tokenized with the checkpoint's tokenizer. Anything else a `--model`
loss function wants (features and targets) comes as `.npz`, or `.pt` holding a tensor, a dict or a
tuple of tensors: rows (the first axis) are drawn with the same indices from every array.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trajcli.errors import DataError, UsageError

DEFAULT_SEQ_LEN = 128


@dataclass
class Batch:
    data: object  # a LongTensor (batch, seq) of token ids, or tensors (one, a dict or a tuple) of rows
    description: dict = field(default_factory=dict)

    def to(self, device: str, dtype: torch.dtype) -> "Batch":
        def move(t):
            if isinstance(t, torch.Tensor):
                return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
            if isinstance(t, dict):
                return {k: move(v) for k, v in t.items()}
            return tuple(move(v) for v in t)

        return Batch(move(self.data), self.description)


def _read_arrays(path: Path):
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k]) for k in z.files}
        if suffix in (".pt", ".pth", ".bin"):
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise UsageError(f"--data {path}: {exc.strerror or exc}", "give a .npy/.npz/.pt file or a text file") from None
    except Exception as exc:  # pickles refused by weights_only, damaged arrays
        raise DataError(f"cannot read --data {path}: {type(exc).__name__}: {exc}",
                        "save token ids with numpy.save or torch.save (tensors only)") from exc
    return None


def _tokenize(path: Path, tokenizer_dirs: list[Path]) -> torch.Tensor:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--data {path}: {exc.strerror or exc}", "give a .npy/.npz/.pt file or a text file") from None
    except UnicodeDecodeError:
        raise DataError(f"--data {path} is neither an array file (.npy/.npz/.pt) nor UTF-8 text",
                        "save token ids with numpy.save") from None
    found = next((d for d in tokenizer_dirs if any((d / f).is_file() for f in
                  ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"))), None)
    if found is None:
        raise DataError(f"--data {path} is text, but no tokenizer files are beside the checkpoints",
                        "save the tokenizer with the checkpoints, or pass token ids as .npy")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UsageError("tokenizing a text file needs transformers", "pip install 'trajcli[models]', or pass token ids as .npy") from None
    tokenizer = AutoTokenizer.from_pretrained(found, local_files_only=True)
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def _rows_of(value, path: Path) -> int:
    tensors = list(value.values()) if isinstance(value, dict) else list(value) if isinstance(value, (list, tuple)) else [value]
    if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors):
        raise DataError(f"--data {path} holds {type(value).__name__}, not arrays with a first (row) axis",
                        "save a tensor, a dict or a tuple of tensors")
    counts = {t.shape[0] for t in tensors}
    if len(counts) != 1:
        raise DataError(f"--data {path}: the arrays have different numbers of rows {sorted(counts)}",
                        "every array must have one row per example")
    return counts.pop()


DEFAULT_MAX_ROWS = 256  # without --batch-size: every row of --data, at most this many


def load_batch(path: Path, batch_size: int | None, seed: int, seq_len: int | None = None,
               tokenizer_dirs: list[Path] = (), vocab_size: int | None = None, max_positions: int | None = None) -> Batch:
    """Draw `batch_size` rows (sequences) with `seed` (None: every row, at most DEFAULT_MAX_ROWS);
    fewer rows than that means all of them."""
    value = _read_arrays(path)
    kind = "arrays"
    if value is None:
        value, kind = _tokenize(path, list(tokenizer_dirs)), "text"
    if isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dim() in (1, 2):
        kind = "tokens" if kind == "arrays" else kind
        value = value.long()
        want = seq_len or min(DEFAULT_SEQ_LEN, max_positions or DEFAULT_SEQ_LEN)
        if value.dim() == 1:
            if value.numel() < want:
                raise DataError(f"--data {path} holds {value.numel()} tokens, fewer than one sequence of {want}",
                                "pass more text or a smaller --seq-len")
            value = value[: value.numel() // want * want].view(-1, want)  # (n_seq, seq_len)
        elif seq_len is not None:
            value = value[:, :seq_len]
        if max_positions is not None and value.shape[1] > max_positions:
            raise DataError(f"--data {path}: sequences of {value.shape[1]} tokens, the model takes at most {max_positions}",
                            f"pass --seq-len {max_positions} or less")
        if vocab_size is not None and value.numel() and (int(value.max()) >= vocab_size or int(value.min()) < 0):
            raise DataError(f"--data {path}: token ids span {int(value.min())}..{int(value.max())}, the model's vocabulary "
                            f"has {vocab_size}", "tokenize with the checkpoints' tokenizer")
    n_rows = _rows_of(value, path)
    rng = np.random.default_rng(seed)
    take = min(batch_size if batch_size is not None else DEFAULT_MAX_ROWS, n_rows)
    rows = torch.from_numpy(np.sort(rng.choice(n_rows, size=take, replace=False)))

    def pick(t):
        return t[rows]

    if isinstance(value, dict):
        data = {k: pick(v) for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        data = tuple(pick(v) for v in value)
    else:
        data = pick(value)
    description = {"file": str(path), "kind": kind, "rows_available": n_rows, "batch_size": take,
                   "batch_size_requested": batch_size, "seed": seed}
    if kind in ("tokens", "text"):
        description["seq_len"] = int(data.shape[1])
    return Batch(data, description)

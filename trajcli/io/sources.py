"""Lazy tensor sources: names, shapes and dtypes from headers; ranges of elements read on demand.

A `CheckpointReader` never loads a whole model. safetensors files are opened with `safe_open` for
their headers and read with pread, range by range; torch files are loaded with `weights_only=True,
mmap=True`, so their storages are mapped rather than read, and ranges are copied out of the mapping
when asked for. torch is imported only for other dtypes, torch files and whole tensors.
"""

from __future__ import annotations

import os
import pickle
import re
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import safe_open

from trajcli.errors import DataError
from trajcli.io.align import stripped
from trajcli.io.discover import Checkpoint
from trajcli.io.names import canonical_names, why_not_parameter
from trajcli.types import Shaped

if TYPE_CHECKING:
    import torch

_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
_LFS_MAGIC = b"version https://git-lfs"


@dataclass(frozen=True)
class TensorInfo(Shaped):
    name: str  # canonical name (wrapper prefixes removed)
    stored_name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without "torch.", e.g. "bfloat16"
    file_idx: int


@dataclass
class CheckpointReader:
    checkpoint: Checkpoint
    tensors: dict[str, TensorInfo] = field(default_factory=dict)  # parameters, canonical name -> info
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (stored name, why)
    others: dict[str, TensorInfo] = field(default_factory=dict)  # left-out tensors (buffers …) by canonical name
    size_bytes: int = 0
    metadata: dict = field(default_factory=dict)  # small facts a file carries, e.g. nanoGPT's model_args
    warnings: list[str] = field(default_factory=list)
    identity: list = field(default_factory=list)  # per file, as `file_identity` took it before opening
    _handles: list = field(default_factory=list)

    def read_into(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Copy elements [start, stop) of tensor `name`, flattened in storage order, into float64 `out`
        (a range of rows, or a piece of one row wider than a chunk)."""
        self._copy_elems(self.tensors[name], start, stop, out)

    def _copy_elems(self, info: TensorInfo, start: int, stop: int, out: np.ndarray) -> None:
        """`read_into` through torch: the rows that hold the range (`_rows`, a view where the storage
        allows), the range of them converted into `out`."""
        import torch

        row_elems = info.numel // info.n_rows
        first = start // row_elems
        rows = self._rows(info, first, -(-stop // row_elems)).reshape(-1)
        try:
            torch.from_numpy(out).copy_(rows[start - first * row_elems: stop - first * row_elems])
        except RuntimeError as exc:
            raise DataError(
                f"cannot read tensor {info.stored_name} elements {start}:{stop} of "
                f"{self.checkpoint.files[info.file_idx]}: {exc}",
                "the file is damaged; re-create or re-download it",
            ) from None

    def read_tensor(self, info: TensorInfo) -> torch.Tensor:
        """One whole tensor, in its stored dtype and shape (for building a model; the pass reads rows)."""
        return self._rows(info, 0, info.n_rows).reshape(info.shape)

    def _rows(self, info: TensorInfo, row_start: int, row_stop: int) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        self._handles.clear()


def _check_not_lfs(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LFS_MAGIC))
    except OSError as exc:
        raise DataError(f"cannot open {path}: {exc.strerror}", "check that the file exists and is readable") from None
    if head == _LFS_MAGIC:
        raise DataError(
            f"{path} is a Git-LFS pointer, not weights",
            "fetch the real file: 'git lfs pull' in the clone, or download it again with huggingface_hub",
        )


def _add_tensors(reader: CheckpointReader, stored: list[tuple[str, tuple[int, ...], str, int]], lightning: bool) -> None:
    names = canonical_names([s[0] for s in stored], lightning=lightning)
    if reader.checkpoint.strip_prefixes:
        names = _without_prefixes(names, reader.checkpoint)
    for stored_name, shape, dtype, file_idx in stored:
        name = names[stored_name]
        why = why_not_parameter(name, shape, dtype)
        info = TensorInfo(name, stored_name, shape, dtype, file_idx)
        if why is not None:
            reader.left_out.append((stored_name, why))
            reader.others[name] = info
        else:
            reader.tensors[name] = info


def _without_prefixes(names: dict[str, str], ckpt: Checkpoint) -> dict[str, str]:
    renamed = stripped(names.values(), ckpt.strip_prefixes)
    if renamed is None:
        raise DataError(
            f"removing {', '.join(map(repr, ckpt.strip_prefixes))} from the tensor names of {ckpt.name} "
            "makes two of them one",
            "strip a prefix that only a wrapper adds, or none",
        )
    return {stored: renamed[name] for stored, name in names.items()}


@dataclass
class SafetensorsReader(CheckpointReader):
    """Headers through safetensors' numpy binding (it validates them and needs no torch). Ranges of
    the float dtypes checkpoints hold: read from the file with pread (`_copy_elems`), float64 straight
    into the caller's buffer, others through one scratch buffer per thread; others and whole tensors:
    through safetensors' torch binding, opened per file on the first read. Reads, not a mapping: a
    file cut short while it is read is then a short read, an error naming it, where touching a
    mapped page past the end kills the process (SIGBUS)."""

    _where: list = field(default_factory=list)  # per file: (first data byte, {stored name: data offset})
    _fds: list = field(default_factory=list)  # per file: its descriptor, once something was read

    def _copy_elems(self, info: TensorInfo, start: int, stop: int, out: np.ndarray) -> None:
        if info.dtype not in _MAPPED_DTYPES:
            return super()._copy_elems(info, start, stop, out)
        path = self.checkpoint.files[info.file_idx]
        dtype = _MAPPED_DTYPES[info.dtype]
        count = stop - start
        direct = dtype == out.dtype  # float64 stored: read into `out` itself
        target = out[:count] if direct else _scratch(count * dtype.itemsize)
        data_start, offsets = self._where[info.file_idx]
        offset = data_start + offsets[info.stored_name] + start * dtype.itemsize
        try:
            if not self._fds:
                self._fds.extend([None] * len(self.checkpoint.files))
            if self._fds[info.file_idx] is None:
                self._fds[info.file_idx] = os.open(path, os.O_RDONLY)
            _pread_exactly(self._fds[info.file_idx], memoryview(target).cast("B"), offset)
        except (OSError, EOFError) as exc:
            why = "it ends before them (truncated, or cut short while it was read)" if isinstance(exc, EOFError) \
                else _one_line(exc)
            raise DataError(f"cannot read tensor {info.stored_name} elements {start}:{stop} of {path}: {why}",
                            "the file is truncated or damaged; re-create or re-download it "
                            "(or wait until whatever writes it is done)") from None
        if not direct:
            _convert_into(out, np.frombuffer(target, dtype, count), info.dtype == "bfloat16")

    def close(self) -> None:
        super().close()
        for fd in self._fds:
            if fd is not None:
                os.close(fd)
        self._fds.clear()

    def _open(self) -> None:
        stored = []
        for file_idx, path in enumerate(self.checkpoint.files):
            _check_not_lfs(path)
            try:
                handle = safe_open(str(path), framework="numpy")
                data_start, offsets = _data_offsets(path)
                self._where.append((data_start, offsets))
                keys = sorted(handle.keys(), key=lambda k: offsets.get(k, 0))  # on-disk order: sequential reads
                headers = [(k, handle.get_slice(k)) for k in keys]
                for key, sl in headers:
                    dtype = sl.get_dtype()
                    stored.append((key, tuple(sl.get_shape()), _ST_DTYPES.get(dtype, dtype.lower()), file_idx))
            except Exception as exc:  # safetensors raises several types for damaged headers
                raise DataError(
                    f"cannot read safetensors file {path}: {_one_line(exc)}",
                    "the file is truncated or damaged; re-create or re-download it",
                ) from exc
            self.size_bytes += path.stat().st_size
        _check_index(self.checkpoint, {s[0]: s[3] for s in stored})
        _add_tensors(self, stored, lightning=False)

    def _rows(self, info: TensorInfo, row_start: int, row_stop: int) -> torch.Tensor:
        try:
            if not self._handles:  # not opened yet, or closed: one slot per file, filled on first read
                self._handles.extend([None] * len(self.checkpoint.files))
            handle = self._handles[info.file_idx]
            if handle is None:
                handle = self._handles[info.file_idx] = safe_open(
                    str(self.checkpoint.files[info.file_idx]), framework="pt")
            sl = handle.get_slice(info.stored_name)
            return sl[...] if not info.shape else sl[row_start:row_stop]
        except Exception as exc:
            raise DataError(
                f"cannot read tensor {info.stored_name} from {self.checkpoint.files[info.file_idx]}: {_one_line(exc)}",
                "the file is truncated or damaged; re-create or re-download it",
            ) from exc


def _data_offsets(path: Path) -> tuple[int, dict[str, int]]:
    """(where the data starts in the file, where each tensor's bytes start in the data), from the
    header safe_open has just validated (8-byte length, then JSON); safe_open lists names
    alphabetically, the pass reads them in data order instead."""
    import json
    import struct

    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return 8 + length, {k: v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


# Stored dtypes read by numpy from the file (safetensors data is little-endian); bfloat16 as its bits.
_MAPPED_DTYPES = {"float64": np.dtype("<f8"), "float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
                  "bfloat16": np.dtype("<u2")}


def _convert_into(out: np.ndarray, stored: np.ndarray, bfloat16: bool) -> None:
    """float64 `out` = the stored values (exact: every float16/bfloat16/float32 value is a float64)."""
    if bfloat16:  # a bfloat16 is the upper half of the float32 with the same value
        np.copyto(out, (stored.astype(np.uint32) << 16).view(np.float32))
    else:
        np.copyto(out, stored)


_SCRATCH = threading.local()  # per reading thread: the bytes of a chunk before their conversion


def _scratch(n_bytes: int) -> np.ndarray:
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.size < n_bytes:
        buffer = _SCRATCH.buffer = np.empty(n_bytes, dtype=np.uint8)
    return buffer[:n_bytes]


def _pread_exactly(fd: int, target: memoryview, offset: int) -> None:
    """Fill `target` from `fd` at `offset`; EOFError when the file ends first."""
    done = 0
    while done < len(target):
        got = os.preadv(fd, [target[done:]], offset + done)
        if got == 0:
            raise EOFError
        done += got


def _check_index(ckpt: Checkpoint, found_in: dict[str, int]) -> None:
    """Every tensor the shard index lists must be in the shard it names."""
    if ckpt.index_path is None:
        return
    import json

    weight_map = json.loads(ckpt.index_path.read_text())["weight_map"]
    shard_idx = {p.name: i for i, p in enumerate(ckpt.files)}
    for tensor, shard in weight_map.items():
        if found_in.get(tensor) != shard_idx[shard]:
            raise DataError(
                f"shard index {ckpt.index_path} puts tensor {tensor!r} in {shard}, but that shard does not hold it",
                "the index and the shards come from different saves; re-download the checkpoint",
            )


# torch's wordings over versions: "Unsupported global: GLOBAL os.system", "unsupported GLOBAL posix.system"
_UNSUPPORTED_GLOBAL = re.compile(r"unsupported (?:global|operand)[^:\n]*?(?::\s*|\s)(?:GLOBAL\s+)?([\w.]+)",
                                 re.IGNORECASE)


def _one_line(exc: BaseException) -> str:
    """The exception's first sentence on one line (library messages can run to paragraphs)."""
    lines = str(exc).strip().splitlines()
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{exc.__class__.__name__}: {first}".rstrip(": ")


def load_torch_file(path: Path) -> object:
    """`torch.load` with weights_only=True (never anything else), mapped when the format allows."""
    import torch

    _check_not_lfs(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "zip" not in str(exc).lower() or not _is_legacy_pickle(path):
                raise
            # The pre-1.6 format cannot be mapped; it is read whole.
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        what = f"it asks for {found.group(1)}, " if found else ""
        raise DataError(
            f"refused to load {path}: {what}which weights-only loading does not allow (nothing was executed)",
            "trajcli never runs code from a checkpoint; save the bare state dict (torch.save(model.state_dict(), f))",
        ) from None
    except Exception as exc:  # zip, EOF, unpickling and storage errors of a damaged file
        raise DataError(
            f"cannot read torch file {path}: {_one_line(exc)}",
            "the file is truncated or damaged; re-create or re-download it",
        ) from exc


def _is_legacy_pickle(path: Path) -> bool:
    try:
        return not zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError):  # a damaged zip ("spans multiple disks"): not the old format
        return False


def unwrap_state_dict(obj: object, path: Path) -> tuple[dict, str, int | None, str | None]:
    """(tensors, format, step, step key) of a loaded torch file: plain, nanoGPT, Lightning, DeepSpeed."""
    import torch

    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a state dict", "save model.state_dict() instead")
    fmt, inner, step_key = "torch-file", obj, None
    if isinstance(obj.get("state_dict"), dict):
        fmt = "lightning" if ("pytorch-lightning_version" in obj or "global_step" in obj) else "torch-file"
        inner, step_key = obj["state_dict"], "global_step"
    elif isinstance(obj.get("model"), dict):
        fmt = "nanogpt" if ("model_args" in obj or "iter_num" in obj) else "torch-file"
        inner, step_key = obj["model"], "iter_num"
    elif isinstance(obj.get("module"), dict):
        fmt, inner, step_key = "deepspeed", obj["module"], "global_steps"
    elif isinstance(obj.get("model_state_dict"), dict):
        inner, step_key = obj["model_state_dict"], "step"
    step = obj.get(step_key) if step_key else None
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        step = int(step.item())
    if not isinstance(step, int) or isinstance(step, bool):
        step, step_key = None, None
    tensors = {k: v for k, v in inner.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise DataError(f"{path} holds no tensors", "pass model weights, not an optimizer or training state")
    return tensors, fmt, step, step_key


def _number(value) -> float | None:
    import torch

    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _optimizer_hparams(loaded: dict) -> dict[str, float]:
    """The first param group's learning rate, momentum (SGD's `momentum`, Adam's `betas[0]`), Adam's
    `betas[1]` as beta2, and weight decay, of an optimizer state saved in the file (nanoGPT's
    `optimizer`, Lightning's `optimizer_states[0]`)."""
    candidates = [loaded.get("optimizer")]
    states = loaded.get("optimizer_states")
    if isinstance(states, list) and states:
        candidates.append(states[0])
    for state in candidates:
        groups = state.get("param_groups") if isinstance(state, dict) else None
        if isinstance(groups, list) and groups and isinstance(groups[0], dict):
            group = groups[0]
            betas = group.get("betas")
            found = {"lr": _number(group.get("lr")), "momentum": _number(group.get("momentum")),
                     "weight_decay": _number(group.get("weight_decay"))}
            if isinstance(betas, (list, tuple)) and len(betas) == 2:
                if found["momentum"] is None:
                    found["momentum"] = _number(betas[0])
                found["beta2"] = _number(betas[1])
            found = {k: v for k, v in found.items() if v is not None}
            if "lr" in found:
                return found
    return {}


class TorchReader(CheckpointReader):
    def _open(self) -> None:
        stored, seen_storage, found_in = [], {}, {}
        lightning = False
        for file_idx, path in enumerate(self.checkpoint.files):
            loaded = load_torch_file(path)
            if _is_legacy_pickle(path):
                self.warnings.append(f"{path} is in the pre-1.6 torch format, which cannot be mapped: it is held "
                                     "in memory whole while the checkpoints are read")
            tensors, fmt, step, step_key = unwrap_state_dict(loaded, path)
            if isinstance(loaded.get("model_args"), dict):
                self.metadata["model_args"] = dict(loaded["model_args"])
            if isinstance(loaded.get("config"), dict):  # nanoGPT: the training script's settings
                self.metadata["train_config"] = {k: v for k, v in loaded["config"].items()
                                                 if isinstance(v, (int, float, str, bool))}
            self.metadata.update(_optimizer_hparams(loaded))
            if self.checkpoint.format == "torch-file":
                self.checkpoint.format = fmt
            lightning = lightning or fmt == "lightning"
            if step is not None and _file_step_wins(self.checkpoint):
                self.checkpoint.step, self.checkpoint.step_source = step, step_key
            self._handles.append(tensors)
            self.size_bytes += path.stat().st_size
            for key, t in tensors.items():
                found_in[key] = file_idx
                needed = t.numel() * t.element_size()
                if t.untyped_storage().nbytes() < needed:  # stride 0 (expand) or overlapping views
                    raise DataError(
                        f"{path}: tensor {key} {list(t.shape)} stands for {needed} bytes of values but its storage "
                        f"holds {t.untyped_storage().nbytes()} (an expanded or overlapping view)",
                        "save real weights: torch.save({k: v.contiguous().clone() for k, v in state_dict.items()}, f)",
                    )
                tie = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
                if t.numel() and tie in seen_storage:
                    self.left_out.append((key, f"tied to {seen_storage[tie]} (same storage, counted once)"))
                    continue
                seen_storage[tie] = key
                stored.append((key, tuple(t.shape), str(t.dtype).removeprefix("torch."), file_idx))
        if self.checkpoint.format == "deepspeed" and stored and all(0 in s[1] for s in stored):
            raise DataError(
                f"{self.checkpoint.files[0]} holds ZeRO-3 partitioned parameters (all empty)",
                "consolidate first with DeepSpeed's zero_to_fp32.py, then point trajcli at its output",
            )
        _check_index(self.checkpoint, found_in)
        _add_tensors(self, stored, lightning=lightning)

    def _rows(self, info: TensorInfo, row_start: int, row_stop: int) -> torch.Tensor:
        t = self._handles[info.file_idx][info.stored_name]
        return t if t.dim() == 0 else t[row_start:row_stop]


def file_identity(path: Path) -> list:
    """What tells one file from another at the same path: resolved path, size, mtime, inode and ctime
    (nanoseconds). A file replaced by another (a new inode) or written in place (a new ctime, which no
    user tool can set back, unlike mtime with `cp -p`) gets another identity."""
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"cannot open {path}: {exc.strerror}", "check that the file exists and is readable") from None
    return [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _is_safetensors(ckpt: Checkpoint) -> bool:
    return all(p.suffix == ".safetensors" for p in ckpt.files)


def _file_step_wins(ckpt: Checkpoint) -> bool:
    """A step stored in the file (nanoGPT iter_num, Lightning global_step, …) replaces one taken from
    the name, or none; not one from trainer_state.json."""
    return ckpt.step_source in (None, "name")


def step_from_file(ckpt: Checkpoint) -> bool:
    """Whether opening the checkpoint may set its step: a torch file whose own step would win."""
    return not _is_safetensors(ckpt) and _file_step_wins(ckpt)


def open_checkpoint(ckpt: Checkpoint) -> CheckpointReader:
    """Open a checkpoint's files (headers only) and list its parameters. The files' identities are
    taken first, before anything of them is read (`CheckpointReader.identity`)."""
    identity = [file_identity(p) for p in ckpt.files]
    reader = SafetensorsReader(ckpt) if _is_safetensors(ckpt) else TorchReader(ckpt)
    reader.identity = identity
    reader._open()
    return reader

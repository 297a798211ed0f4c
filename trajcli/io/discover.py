"""Find the checkpoints under the paths a user gives, and put them in training order.

Only names and small metadata files are looked at here; tensors are opened by `trajcli.io.sources`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from trajcli.errors import DataError, UsageError
from trajcli.io.jsonfile import read_json

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")

# Files that sit beside weights but never are weights (optimizer, scheduler, RNG state,
# pickled training arguments, DeepSpeed optimizer shards).
_NOT_WEIGHTS = re.compile(
    r"^(optimizer.*|scheduler.*|scaler.*|rng_state.*|training_args.*|trainer_state.*"
    r"|.*optim_states.*|zero_pp_rank_.*|.*\.index\.json)$"
)
_SHARD_NAME = re.compile(r"-\d{5}-of-\d{5}\.(safetensors|bin)$")

# A single-checkpoint folder is recognised by one of these files (in this order of preference).
_DIR_LAYOUTS = (
    ("model.safetensors.index.json", "safetensors-sharded"),
    ("model.safetensors", "safetensors"),
    ("pytorch_model.bin.index.json", "torch-sharded"),
    ("pytorch_model.bin", "torch"),
    ("mp_rank_00_model_states.pt", "deepspeed"),
)

_STEP_PATTERNS = (
    re.compile(r"step[=_-]?(\d+)", re.IGNORECASE),
    re.compile(r"checkpoint[=_-]?(\d+)", re.IGNORECASE),
    re.compile(r"iter(?:ation)?[=_-]?(\d+)", re.IGNORECASE),
)
_ROOT_MODEL_FILES = {"model.safetensors", "pytorch_model.bin"}
_LAST_INT = re.compile(r"(\d+)(?!.*\d)")


@dataclass
class Checkpoint:
    """One checkpoint of a trajectory: where it is and how it is stored."""

    name: str  # folder or file name as found under PATH (a ref name for the hub cache)
    path: Path  # the checkpoint folder or file
    format: str  # safetensors | safetensors-sharded | torch | torch-sharded | deepspeed | torch-file
    files: list[Path]  # weight files (shards) in index order; index files are not listed
    index_path: Path | None = None
    step: int | None = None
    step_source: str | None = None  # "name" | "trainer_state.json" | a key of the torch file | "reference"
    strip_prefixes: tuple[str, ...] = ()  # removed from its tensor names (after wrapper prefixes): see io.align

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "step": self.step,
            "step_source": self.step_source,
            "format": self.format,
            "files": [str(p) for p in self.files],
        }


@dataclass
class Discovery:
    checkpoints: list[Checkpoint]
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def step_from_name(name: str, strict: bool = False) -> int | None:
    """The training step a checkpoint's name states (`checkpoint-100`, `step1000`, `epoch=1-step=30`);
    unless `strict`, else its last number (`ckpt_500.pt`; not for a model's name: `MiniLM-L6-v2`)."""
    for pattern in _STEP_PATTERNS:
        found = pattern.findall(name)
        if found:
            return int(found[-1])
    if strict:
        return None
    stem = name
    for suffix in WEIGHT_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    match = _LAST_INT.search(stem)
    return int(match.group(1)) if match else None


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def is_weight_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(WEIGHT_SUFFIXES) and not _NOT_WEIGHTS.match(path.name)


def _index_shards(index_path: Path) -> list[Path]:
    """Shard files named by a `*.index.json`, refused when a name leaves the checkpoint folder."""
    hint = "the index must be JSON with a 'weight_map' object (tensor name -> shard file)"
    index = read_json(index_path, "shard index", hint)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise DataError(f"shard index {index_path} has no 'weight_map' object", hint)
    shards: list[str] = []
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or "/" in shard or "\\" in shard or shard in (".", ".."):
            raise DataError(
                f"shard index {index_path} maps tensor {tensor!r} to {shard!r}, outside the checkpoint folder",
                "shard names must be plain file names in the index's folder; trajcli refuses anything else",
            )
        if shard not in shards:
            shards.append(shard)
    missing = [s for s in shards if not (index_path.parent / s).is_file()]
    if missing:
        raise DataError(
            f"shard index {index_path} names {len(missing)} missing shard(s): {', '.join(missing[:3])}",
            "the checkpoint is incomplete: copy or download the missing shard files",
        )
    return [index_path.parent / s for s in shards]


def checkpoint_in_dir(folder: Path) -> Checkpoint | None:
    """The checkpoint stored in `folder` itself, or None when the folder holds no single checkpoint."""
    for file_name, fmt in _DIR_LAYOUTS:
        candidate = folder / file_name
        if candidate.is_file():
            if file_name.endswith(".index.json"):
                return Checkpoint(folder.name, folder, fmt, _index_shards(candidate), index_path=candidate)
            return Checkpoint(folder.name, folder, fmt, [candidate])
    if (folder / ".metadata").is_file() and any(folder.glob("*.distcp")):
        raise DataError(
            f"{folder} is a torch.distributed.checkpoint folder, which trajcli does not read yet",
            "convert it first, e.g. torch.distributed.checkpoint.format_utils.dcp_to_torch_save",
        )
    weights = sorted(p for p in folder.iterdir() if is_weight_file(p))
    sharded = [p for p in weights if _SHARD_NAME.search(p.name)]
    if sharded:
        raise DataError(
            f"{folder} holds shard files ({sharded[0].name} …) but no *.index.json that lists them",
            "restore the model.safetensors.index.json (or pytorch_model.bin.index.json) beside the shards",
        )
    if len(weights) == 1:
        fmt = "safetensors" if weights[0].suffix == ".safetensors" else "torch-file"
        return Checkpoint(folder.name, folder, fmt, weights)
    return None


def _file_checkpoint(path: Path) -> Checkpoint:
    fmt = "safetensors" if path.suffix == ".safetensors" else "torch-file"
    return Checkpoint(path.name, path, fmt, [path])


def _hub_cache(folder: Path) -> list[Checkpoint] | None:
    """`models--org--name/` (or its parent's child): refs/<revision> names a snapshots/<hash> folder."""
    refs, snapshots = folder / "refs", folder / "snapshots"
    if not (refs.is_dir() and snapshots.is_dir()):
        return None
    found = []
    for ref in sorted(p for p in refs.rglob("*") if p.is_file()):
        try:
            commit = ref.read_bytes().decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            commit = ""
        if not re.fullmatch(r"[0-9a-f]{7,64}", commit):
            raise DataError(f"hub ref {ref} does not hold a commit hash", "the cache is damaged: download the model again")
        snapshot = snapshots / commit
        if not snapshot.is_dir():
            continue
        ckpt = checkpoint_in_dir(snapshot)
        if ckpt is not None:
            ckpt.name = ref.relative_to(refs).as_posix()
            found.append(ckpt)
    return found


def _expand(path: Path, left_out: list[tuple[str, str]]) -> list[Checkpoint]:
    """The checkpoints a path stands for: itself, or the checkpoints in the folder it names."""
    if not path.exists():
        raise DataError(
            f"no such file or folder: {path}",
            "pass a folder of checkpoints, checkpoint paths, or '-' to read paths from stdin",
        )
    if path.is_file():
        if _NOT_WEIGHTS.match(path.name):
            raise DataError(f"{path} is not a weight file (optimizer, scheduler, RNG state or arguments)",
                            "pass the model weights, e.g. the checkpoint folder or model.safetensors")
        return [_file_checkpoint(path)]
    hub = _hub_cache(path)
    if hub is not None:
        return hub
    models = sorted(p for p in path.glob("models--*") if p.is_dir() and (p / "snapshots").is_dir())
    if models:  # the cache root (~/.cache/huggingface/hub): one model's revisions are a trajectory
        if len(models) == 1:
            return _hub_cache(models[0]) or []
        listed = ", ".join(m.name[len("models--"):].replace("--", "/") for m in models[:6])
        raise DataError(
            f"{path} is a Hugging Face cache of {len(models)} models ({listed}{' …' if len(models) > 6 else ''}); "
            "a trajectory is the revisions of one",
            f"pass one model's folder, e.g. {models[0]}",
        )
    children: list[Checkpoint] = []
    loose: list[Path] = []
    for child in sorted(path.iterdir(), key=lambda p: _natural_key(p.name)):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            ckpt = checkpoint_in_dir(child)
            if ckpt is not None:
                children.append(ckpt)
        elif is_weight_file(child):
            loose.append(child)
        elif child.is_file() and child.name.endswith(WEIGHT_SUFFIXES):
            left_out.append((str(child), "not model weights (optimizer, scheduler, RNG state or arguments)"))
    if not children:
        # No checkpoint folders inside: the folder is one checkpoint, or a flat folder of weight files.
        own = checkpoint_in_dir(path)
        return [own] if own is not None else [_file_checkpoint(f) for f in loose]
    for file in loose:
        if file.name in _ROOT_MODEL_FILES or _SHARD_NAME.search(file.name):
            left_out.append((str(file), "the folder's own model beside its checkpoint folders; pass it explicitly to include it"))
        else:
            children.append(_file_checkpoint(file))
    return children


def _read_trainer_step(ckpt: Checkpoint) -> None:
    state = ckpt.path / "trainer_state.json" if ckpt.path.is_dir() else None
    if state is not None and state.is_file():
        try:
            saved = read_json(state, "trainer state", "")
        except DataError:
            saved = None  # a damaged trainer_state.json: the step comes from the name
        step = saved.get("global_step") if isinstance(saved, dict) else None
        if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
            ckpt.step, ckpt.step_source = step, "trainer_state.json"
            return
    step = step_from_name(ckpt.name)
    if step is not None:
        ckpt.step, ckpt.step_source = step, "name"


def discover_checkpoints(paths: list[str], stdin_text: str | None = None) -> Discovery:
    """Every checkpoint under `paths` ('-' reads paths from `stdin_text`), in the order found.

    Steps from trainer_state.json or the name are filled in; `order_checkpoints` sorts them once the
    files' own metadata (nanoGPT iter_num, Lightning global_step) has been read.
    """
    if not paths:
        raise UsageError("no PATH given", "pass a folder of checkpoints, checkpoint paths, or '-' for stdin")
    expanded: list[str] = []
    for p in paths:
        if p == "-":
            expanded.extend(line.strip() for line in (stdin_text or "").splitlines() if line.strip())
        else:
            expanded.append(p)
    if not expanded:
        raise DataError("no checkpoint paths on stdin", "pipe one checkpoint path per line, e.g. ls -d run/checkpoint-* | trajcli similarity -")
    left_out: list[tuple[str, str]] = []
    found: list[Checkpoint] = []
    for p in expanded:
        try:
            found.extend(_expand(Path(p), left_out))
        except OSError as exc:  # a folder or file this user may not read, a vanished mount …
            raise DataError(f"cannot read {exc.filename or p}: {exc.strerror or exc}",
                            "check the permissions of the checkpoint folders (and that the disk is there)") from None
    if not found:
        where = ", ".join(expanded[:3])
        raise DataError(
            f"no checkpoints found under {where}",
            "looked for checkpoint folders (model.safetensors, pytorch_model.bin, their *.index.json, "
            "mp_rank_00_model_states.pt) and weight files (*.safetensors, *.pt, *.pth, *.bin, *.ckpt)",
        )
    # The same files reached twice (Lightning's last.ckpt symlink, two hub refs to one snapshot, a path
    # given twice) are one checkpoint: keep the first that is not a symlink.
    # Keyed by the weight files themselves: a checkpoint folder whose file is a symlink to another's
    # is that checkpoint again.
    unique: dict[tuple, Checkpoint] = {}

    def files_of(ckpt: Checkpoint) -> tuple:
        return tuple(f.resolve() for f in ckpt.files)

    for ckpt in sorted(found, key=lambda c: c.path.is_symlink() or any(f.is_symlink() for f in c.files)):
        key = files_of(ckpt)
        if key in unique:
            left_out.append((str(ckpt.path), f"same files as checkpoint {unique[key].name}"))
        else:
            unique[key] = ckpt
    found = [c for c in found if unique.get(files_of(c)) is c]
    for ckpt in found:
        _read_trainer_step(ckpt)
    return Discovery(found, left_out)


def order_checkpoints(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """Training order: by step, compared numerically; checkpoints without a step last, by name."""
    return sorted(checkpoints, key=lambda c: (c.step is None, c.step or 0, _natural_key(c.name)))


def select_checkpoints(
    checkpoints: list[Checkpoint], every: int = 1, max_checkpoints: int | None = None, steps: str | None = None
) -> list[Checkpoint]:
    """`--steps A:B` (inclusive, either side open), then `--every K`, then `--max-checkpoints M`."""
    chosen = list(checkpoints)
    if steps is not None:
        match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", steps)
        if not match:
            raise UsageError(f"--steps {steps!r} is not of the form A:B", "e.g. --steps 1000:5000, --steps :200 or --steps 500:")
        lo = int(match.group(1)) if match.group(1) else None
        hi = int(match.group(2)) if match.group(2) else None
        unknown = [c.name for c in chosen if c.step is None]
        if unknown:
            raise DataError(f"--steps needs a step for every checkpoint; none known for {unknown[0]}",
                            "select checkpoints by passing their paths instead")
        chosen = [c for c in chosen if (lo is None or c.step >= lo) and (hi is None or c.step <= hi)]
    if every < 1:
        raise UsageError(f"--every {every} must be at least 1", "e.g. --every 2 keeps every second checkpoint")
    chosen = chosen[::every]
    if max_checkpoints is not None:
        if max_checkpoints < 2:
            raise UsageError(f"--max-checkpoints {max_checkpoints} must be at least 2", "a trajectory needs two checkpoints")
        chosen = [chosen[i] for i in even_picks(len(chosen), max_checkpoints)]
    return chosen


def even_picks(n: int, most: int) -> list[int]:
    """At most `most` (≥ 2) indices of range(n), evenly spread, the first and the last kept."""
    if n <= most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (most - 1)) for i in range(most)})

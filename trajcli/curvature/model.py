"""The model a checkpoint's weights belong to, built so that its loss can be differentiated.

Two ways in: a Hugging Face causal LM built from `config.json` (transformers, the `models` extra),
or the user's own `--model module:function`. Weights always come from trajcli's readers (the same
lazy, weights-only sources the pass uses), matched to the module's parameters by name.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trajcli.errors import DataError, UsageError
from trajcli.io.inventory import Inventory
from trajcli.io.sources import CheckpointReader

MODELS_EXTRA = "pip install 'trajcli[models]'"


@dataclass
class ProbeModel:
    """A module, the loss it is measured by (a function of the module and one batch), what it is, and
    how each checkpoint's weights reach it: `snapshot(k)` gives checkpoint k's parameters in the order
    of `params` (and the buffers it stores), for copying into the one module."""

    module: nn.Module
    loss_fn: Callable[[nn.Module, object], torch.Tensor]
    source: str
    names: list[str]
    params: list[nn.Parameter]
    snapshot: Callable[[int], tuple[list[torch.Tensor], dict[str, torch.Tensor]]]
    vocab_size: int | None = None  # token ids must stay below it (causal LMs)
    max_positions: int | None = None


def _import_target(spec: str) -> Callable:
    """`package.module:function` or `path/to/file.py:function`."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--model {spec!r} is not MODULE:FUNCTION", "e.g. --model mypkg.models:build or --model ./probe.py:build")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UsageError(f"--model {spec}: no file {path}", "give the path of a Python file, or a module name")
            loader_spec = importlib.util.spec_from_file_location(f"trajcli_user_{path.stem}", path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")  # modules in the current folder, as `python -m` finds them
            module = importlib.import_module(module_name)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"--model {spec}: importing {module_name} failed: {type(exc).__name__}: {exc}",
                         "run with --debug for the traceback") from exc
    target = getattr(module, attr, None)
    if not callable(target):
        raise UsageError(f"--model {spec}: {module_name} has no function {attr}", "check the name after the colon")
    return target


def user_model(spec: str, config: dict | None, inv: Inventory) -> ProbeModel:
    """Call the user's builder: `function()` or `function(config)` (config.json as a dict, or None),
    which returns `(module, loss_fn)` with `loss_fn(module, batch)` a scalar tensor. Weights come from
    trajcli's readers, matched to the module's parameters by name."""
    build = _import_target(spec)
    try:
        built = build(config) if inspect.signature(build).parameters else build()
    except Exception as exc:
        raise UsageError(f"--model {spec} raised {type(exc).__name__}: {exc}", "run with --debug for the traceback") from exc
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module) and callable(built[1])):
        raise UsageError(f"--model {spec} returned {type(built).__name__}, not (nn.Module, loss_fn)",
                         "return the model and a function loss_fn(model, batch) -> scalar tensor")
    module, loss_fn = built
    weights = match_weights(module, inv.readers[0], str(inv.checkpoints[0].path))

    def snapshot(k: int):
        reader = inv.readers[k]
        lacking = [n for n in weights.names if n not in reader.tensors]
        if lacking:
            raise DataError(f"{reader.checkpoint.path} lacks {_few(lacking)}, which the first checkpoint has",
                            "the checkpoints come from different models")
        params = [reader.read_tensor(reader.tensors[n]) for n in weights.names]
        buffers = {}
        for name in weights.buffers:
            if name not in reader.others:
                raise DataError(f"{reader.checkpoint.path} lacks buffer {name}, which the first checkpoint has",
                                "the checkpoints come from different models")
            buffers[name] = reader.read_tensor(reader.others[name])
        return params, buffers

    return ProbeModel(module, loss_fn, f"--model {spec}", weights.names, weights.params, snapshot)


def _check_causal_lm(folder: Path) -> None:
    """Refuse, naming the architecture, a config.json whose model is not a causal LM (a Trainer's
    BertForSequenceClassification, a T5): transformers would build an LM head the weights lack."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as causal_names
    except ImportError:  # another layout of transformers: its own loading report then says what is wrong
        return
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return  # transformers reports it when it loads
    found = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(found, list) or not found or not all(isinstance(a, str) for a in found):
        return
    causal = set()
    for names in causal_names.values():
        causal.update([names] if isinstance(names, str) else names)
    if not causal.intersection(found):
        raise UsageError(
            f"{folder / 'config.json'} describes {', '.join(found)} (model_type {config.get('model_type')!r}), "
            "not a causal language model, which is what curvature builds from config.json (next-token loss)",
            f"pass --model MODULE:FUNCTION that builds {found[0]} and its loss on your --data (docs: the model)")


def _causal_lm_loss(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return module(input_ids=batch, labels=batch).loss  # next-token cross-entropy, mean over tokens


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError("building a model from config.json needs transformers",
                         f"{MODELS_EXTRA}, or pass --model MODULE:FUNCTION") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def hf_model(inv: Inventory) -> ProbeModel:
    """A transformers causal LM per checkpoint folder (config.json + weights), loaded by transformers
    itself (its renamings and tied weights included; weights-only loading), with eager attention so
    that the double backward of Hessian-vector products works. The first one is the probed module;
    later checkpoints are loaded in turn and their parameters copied into it."""
    transformers = _transformers()
    folders = []
    for ckpt in inv.checkpoints:
        if not (ckpt.path.is_dir() and (ckpt.path / "config.json").is_file()):
            raise UsageError(f"{ckpt.path} is not a Hugging Face model folder (config.json and weights)",
                             "pass --model MODULE:FUNCTION to build the model yourself")
        folders.append(ckpt.path)
    _check_causal_lm(folders[0])

    def load(k: int) -> nn.Module:
        try:
            module, info = transformers.AutoModelForCausalLM.from_pretrained(
                folders[k], local_files_only=True, attn_implementation="eager", output_loading_info=True)
        except Exception as exc:  # unknown model_type, damaged files … in transformers' own words
            raise DataError(f"transformers cannot load a causal LM from {folders[k]}: {type(exc).__name__}: {exc}",
                            "pass --model MODULE:FUNCTION to build it yourself") from exc
        bad = sorted(info.get("missing_keys", ())) + sorted(info.get("mismatched_keys", ()))
        if bad:
            raise DataError(f"{folders[k]}: transformers found no weights for {_few([str(b) for b in bad])}",
                            "the folder's weights do not match its config.json")
        return module

    module = load(0)
    named = dict(module.named_parameters())
    names = list(named)

    def snapshot(k: int):
        loaded = module if k == 0 else load(k)
        params = dict(loaded.named_parameters())
        return [params[n].detach() for n in names], {n: b.detach() for n, b in loaded.named_buffers()}

    config = module.config
    return ProbeModel(module, _causal_lm_loss, f"transformers {type(module).__name__} from {folders[0]}",
                      names, list(named.values()), snapshot, getattr(config, "vocab_size", None),
                      getattr(config, "max_position_embeddings", None))


@dataclass
class Weights:
    """The module's trainable parameters (tied ones once) in a fixed order, and the file name of each."""

    names: list[str]  # one name per parameter: the one the checkpoint stores
    params: list[nn.Parameter]
    buffers: list[str]  # module buffers the checkpoint also stores


def match_weights(module: nn.Module, reader: CheckpointReader, where: str) -> Weights:
    """Pair every parameter of `module` with a tensor of the checkpoint; anything unpaired is an error."""
    aliases: dict[int, list[str]] = {}
    by_id: dict[int, nn.Parameter] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
        by_id[id(p)] = p
    stored = set(reader.tensors)
    names, params, missing = [], [], []
    for pid, p in by_id.items():
        found = [n for n in aliases[pid] if n in stored]
        if not found:
            missing.append(aliases[pid][0])
            continue
        names.append(found[0])
        params.append(p)
        stored -= set(aliases[pid])
        if tuple(p.shape) != reader.tensors[found[0]].shape:
            raise DataError(f"{where}: tensor {found[0]} has shape {list(reader.tensors[found[0]].shape)}, "
                            f"the model's parameter has {list(p.shape)}",
                            "the model is built with other sizes than the checkpoint's; check config.json or --model")
    if missing or stored:
        what = []
        if missing:
            what.append(f"the model's parameters {_few(missing)} are not in the checkpoint")
        if stored:
            what.append(f"the checkpoint's tensors {_few(sorted(stored))} are not in the model")
        raise DataError(f"{where}: {'; '.join(what)}",
                        "the model does not match the checkpoints; check config.json or the --model function")
    buffers = [n for n, b in module.named_buffers() if n in reader.others and b.is_floating_point()]
    return Weights(names, params, buffers)


def _few(names: list[str], n: int = 4) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (+{len(names) - n} more)" if len(names) > n else "")

"""The library API: `trajcli.open(...)` → a `Run`, whose analyses return typed results.

    import trajcli
    run = trajcli.open("runs/out")                  # headers only so far
    sim = run.similarity(mode="displacement")       # the one pass over the checkpoints happens here
    sim.matrix, sim.labels, sim.mds
    run.layers(by="role"); run.qkv(per_head=True); run.dynamics(lr=3e-4)   # from the same pass
    run.report("report/")

A Run reads its checkpoints once, with the finest cut any analysis needs (each tensor, and each Q/K/V
part and head where the architecture is known); every analysis sums the Grams it needs from that one
pass. With `cache=FOLDER`, the Grams are saved there and reused by later Runs (and by the command
line's --out) while the files are unchanged; an interrupted pass resumes from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trajcli.options import PassOptions


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint of a Run, as found on disk."""

    name: str
    step: int | None
    path: Path
    format: str


def open(paths, *, every: int = 1, max_checkpoints: int | None = None, steps: str | None = None,
         include: str | None = None, exclude: str | None = None, on_mismatch: str = "error",
         reference: str | None = None, strip_prefix: tuple[str, ...] | list[str] = (), arch: str | None = None,
         num_heads: int | None = None, num_kv_heads: int | None = None, head_dim: int | None = None,
         force_layout: bool = False, memory_budget: str | None = None, device: str = "auto",
         scheduler: str | None = None, workers: int | None = None, read_threads: int | None = None,
         cache: str | Path | None = None, progress: bool = False) -> Run:
    """A Run over the checkpoints under `paths` (a folder, a checkpoint path, or a list of them),
    selected and read as the command line's flags of the same names say. Only headers are read here.
    `cache`: a folder for the Grams (as --out); `progress`: show the progress bar of the pass."""
    from trajcli.io.inventory import Selection

    if on_mismatch not in ("error", "skip"):
        raise ValueError(f"on_mismatch must be 'error' or 'skip', not {on_mismatch!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    paths = [str(paths)] if isinstance(paths, (str, Path)) else [str(p) for p in paths]
    selection = Selection(every, max_checkpoints, steps, include, exclude, on_mismatch, reference, tuple(strip_prefix))
    head_flags = {"num_heads": num_heads, "num_kv_heads": num_kv_heads, "head_dim": head_dim,
                  "force_layout": force_layout}
    options = PassOptions(memory_budget, device, scheduler, workers, quiet=not progress, read_threads=read_threads)
    return Run(paths, selection, options, arch, head_flags, Path(cache) if cache is not None else None)


class Run:
    """The checkpoints of one training run and the analyses of its trajectory (see `trajcli.open`)."""

    def __init__(self, paths: list[str], selection, options: PassOptions, arch: str | None, head_flags: dict,
                 cache: Path | None):
        from trajcli.pipeline import load_inventory

        self._paths, self._selection, self._options = paths, selection, options
        self._arch, self._head_flags, self._cache = arch, head_flags, cache
        inv = load_inventory(paths, selection)
        inv.close()
        self._inventory = inv
        self._pass = None  # (inventory, Gram set, report plans) once read
        self.passes = 0  # passes over the checkpoint files so far (0 when the cache served; else 1)

    def __repr__(self) -> str:
        first, last = self._inventory.checkpoints[0], self._inventory.checkpoints[-1]
        return f"<trajcli.Run {len(self._inventory.checkpoints)} checkpoints {first.name} … {last.name}>"

    @property
    def checkpoints(self) -> list[CheckpointInfo]:
        """The checkpoints in trajectory order (the reference first when one was given from outside)."""
        return [CheckpointInfo(c.name, c.step, c.path, c.format) for c in self._inventory.checkpoints]

    @property
    def warnings(self) -> list[str]:
        """What was noticed while taking the inventory (duplicate steps, tensors left out …)."""
        return list(self._inventory.warnings)

    def _read(self):
        """The one pass (or the cache's Grams), with the finest cut any analysis needs."""
        if self._pass is None:
            from trajcli.analysis import report_plan_for
            from trajcli.pipeline import read_pass
            from trajcli.report import writers

            plan_for = report_plan_for(self._arch, self._head_flags)
            reused = []
            try:
                inv, grams, _, plans = read_pass(self._paths, self._selection, self._cache, self._options, plan_for,
                                                 notify=lambda m: reused.append(m) if m.startswith("reusing") else None)
            finally:
                writers.release_out_dirs()
            self.passes += 0 if reused else 1
            self._inventory = inv
            self._pass = (inv, grams, plans)
        return self._pass

    def _cut(self, segments: dict):
        """The Gram set of the cut `segments` ({}: whole tensors), summed from the pass — or, where
        the pass's cut does not refine it, from a pass of its own."""
        from trajcli.engine.store import derive_gramset
        from trajcli.pipeline import read_pass

        inv, grams, plans = self._read()
        derived = derive_gramset(grams, plans.segments, segments, inv.tensors)
        if derived is None:
            _, derived, _, _ = read_pass(self._paths, self._selection, None, self._options, lambda _: (segments, None))
            self.passes += 1
        return derived

    def similarity(self, mode: str = "raw"):
        """The trajectory map of every analysed parameter together, in `mode` (raw, displacement or update)."""
        from trajcli.analysis import similarity_result
        from trajcli.metrics.trajectory import MODES
        from trajcli.results import Similarity

        _choice(mode, MODES, "mode")
        inv, _, _ = self._read()
        doc, matrix, warnings = similarity_result(inv, self._cut({}), mode)
        mds = doc["mds"]
        return Similarity(doc, tuple(warnings), mode, matrix, list(doc["labels"]),
                          float("nan") if mds is None else float(mds))

    def layers(self, by: str = "block", mode: str = "raw"):
        """A trajectory map per group: `by` tensor, block or role (attention q/k/v/o, mlp, norm …)."""
        from trajcli.analysis import layers_result
        from trajcli.arch.grouping import plan_layers
        from trajcli.metrics.trajectory import MODES
        from trajcli.results import Layers

        _choice(by, ("tensor", "block", "role"), "by")
        _choice(mode, MODES, "mode")
        inv, _, plans = self._read()
        usable = plans.architecture.family if plans.qkv is not None else None
        plan = plan_layers(inv.tensors, by, usable if by == "role" else None, plans.architecture.heads)
        doc, matrices, warnings = layers_result(inv, self._cut(plan.segments), plan, by, mode, plans.architecture)
        mds = {g["name"]: float("nan") if g["mds"] is None else float(g["mds"]) for g in doc["groups"]}
        return Layers(doc, tuple(warnings), by, mode, matrices, mds)

    def qkv(self, per_head: bool = False, bias: bool = True, mode: str = "displacement"):
        """ω of the query, key and value parts of every attention layer (and of each head)."""
        from trajcli.analysis import qkv_result
        from trajcli.arch.grouping import plan_qkv
        from trajcli.errors import DataError
        from trajcli.metrics.trajectory import MODES
        from trajcli.results import QKV

        _choice(mode, MODES, "mode")
        inv, _, plans = self._read()
        architecture = plans.architecture
        if plans.qkv is None:
            raise DataError(plans.qkv_problem or "Q/K/V cannot be split", "pass arch= (and num_heads=) to trajcli.open")
        plan, layer_ids = plan_qkv(inv.tensors, architecture.family, architecture.heads, per_head, bias)
        doc, warnings = qkv_result(inv, self._cut(plan.segments), plan, layer_ids, mode, architecture, bias, per_head)
        return QKV(doc, tuple(warnings), mode)

    def dynamics(self, lr: float | None = None, lr_file: str | Path | None = None,
                 loss_file: str | Path | None = None, scale_invariant: str | None = None):
        """Norms, angular steps, effective learning rates and regime verdicts (see `trajcli dynamics`)."""
        from trajcli.analysis import dynamics_result
        from trajcli.arch.grouping import scale_invariant_tensors
        from trajcli.io.inventory import compile_regex
        from trajcli.io.lr import learning_rate_points
        from trajcli.results import Dynamics

        if lr is not None and lr_file is not None:
            raise ValueError("give lr or lr_file, not both")
        inv, _, _ = self._read()
        if inv.reference_idx != 0:
            raise ValueError("dynamics measures from the first checkpoint; this Run's reference is another one")
        names = {t.name for t in inv.tensors} | {d["tensor"] for d in inv.left_out}
        invariant = scale_invariant_tensors(inv.tensors, names, compile_regex(scale_invariant, "scale_invariant"))
        points, source = learning_rate_points(inv, lr, Path(lr_file) if lr_file is not None else None)
        doc, warnings = dynamics_result(inv, self._cut({}), points, source, invariant,
                                        Path(loss_file) if loss_file is not None else None)
        return Dynamics(doc, tuple(warnings))

    def report(self, out: str | Path, plot_format: str = "png", lr: float | None = None,
               lr_file: str | Path | None = None, loss_file: str | Path | None = None) -> list[Path]:
        """What `trajcli report` writes (without curvature) into the folder `out`; the files' paths."""
        from trajcli.analysis import report_result
        from trajcli.io.lr import learning_rate_points
        from trajcli.report import render, writers

        _choice(plot_format, ("png", "svg", "pdf"), "plot_format")
        inv, grams, plans = self._read()
        points, source = learning_rate_points(inv, lr, Path(lr_file) if lr_file is not None else None)
        try:
            out_dir = render.prepare_out(Path(out), inv)
            with render.ReportWriter(out_dir, plot_format) as report:
                result = report_result(inv, grams, plans, points, source, on_part=report.add,
                                       loss_file=Path(loss_file) if loss_file is not None else None)
                _, written = report.finish(result)
        finally:
            writers.release_out_dirs()
        return written


def _choice(value: str, choices, name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def compare(runs, *, group: str | None = None, every: int = 1, max_checkpoints: int | None = None,
            steps: str | None = None, include: str | None = None, exclude: str | None = None,
            on_mismatch: str = "error", arch: str | None = None, memory_budget: str | None = None,
            device: str = "auto", progress: bool = False):
    """Compare runs (paths, or "NAME=PATH" strings) as `trajcli compare` does: a `Comparison` with the
    command's document and, when the runs share an architecture, the joint maps (numpy)."""
    from trajcli.comparison import compare as compare_runs
    from trajcli.comparison import run_sources
    from trajcli.io.inventory import Selection
    from trajcli.results import Comparison

    sources = run_sources([str(r) for r in runs], group)
    selection = Selection(every, max_checkpoints, steps, include, exclude, on_mismatch)
    options = PassOptions(memory_budget, device, quiet=not progress)
    doc, matrices = compare_runs(sources, selection, options, arch, {})
    return Comparison(doc, (), matrices.get("raw"), matrices.get("displacement"))

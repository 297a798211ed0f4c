"""Whole-process timings of trajcli against a minimal reference loop and a naive pairwise baseline.

Builds a synthetic trajectory in the real on-disk format — N sharded safetensors checkpoints of a
GPT-NeoX-layout model (about 33M fp32 parameters, 134 MB each; 16 of them are about 2.1 GB), with
config.json — then times, as separate processes on a warm page cache (one untimed warm-up read first):

  reference   each file read once in row chunks (same chunk size), float64 Gram accumulation (the floor)
  similarity  trajcli similarity
  report      trajcli report: every analysis (three similarity modes, layers by block and role, Q/K/V
              per head, PCA), every file and plot and report.html, from one pass
  pairwise    load both checkpoints of every pair (N² loads), the approach trajcli replaces

for N = 8 and N = 16, and reports medians of --repeat runs, GB/s of checkpoint data, the ratios that
matter, and the peak anonymous memory (RssAnon) of each process, with that of its child processes
(the Dask workers) beside it.

    python benchmarks/speed.py [--repeat 3] [--workdir DIR] [--skip-pairwise]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import MIB, peak_anon

CONFIG = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": 14336,
          "hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 2048}

REFERENCE = r'''
# The floor of this design: every file read once, in row chunks of the same size trajcli uses under
# the same budget, converted into one float64 buffer, one Gram product per chunk. No differences, no
# leaves, no overlap, no bookkeeping.
import json, sys, numpy as np, torch
from pathlib import Path
from safetensors import safe_open
folders = sorted(Path(sys.argv[1]).iterdir(), key=lambda p: int(p.name[4:]))
budget = int(sys.argv[2])
opened = []
for f in folders:
    index = json.loads((f / "model.safetensors.index.json").read_text())["weight_map"]
    handles = {s: safe_open(str(f / s), framework="pt") for s in set(index.values())}
    opened.append((index, handles))
n = len(folders)
chunk = budget // (4 * 8 * n)
buffer = np.empty(n * chunk)
gram = np.zeros((n, n))
for name in opened[0][0]:
    shape = opened[0][1][opened[0][0][name]].get_slice(name).get_shape()
    rows, row = shape[0], int(np.prod(shape[1:], dtype=int))
    step = max(1, chunk // row)
    for a in range(0, rows, step):
        b = min(rows, a + step)
        x = buffer[: n * (b - a) * row].reshape(n, -1)
        for k, (index, handles) in enumerate(opened):
            torch.from_numpy(x[k]).copy_(handles[index[name]].get_slice(name)[a:b].reshape(-1))
        gram += x @ x.T
print(gram[0, 0])
import gc; gc.freeze()  # as trajcli does: no collection over torch's objects at interpreter shutdown
'''

PAIRWISE = r'''
import json, sys, numpy as np, torch
from pathlib import Path
from safetensors.torch import load_file
folders = sorted(Path(sys.argv[1]).iterdir(), key=lambda p: int(p.name[4:]))
def flat(f):
    shards = sorted(set(json.loads((f / "model.safetensors.index.json").read_text())["weight_map"].values()))
    sd = {}
    for s in shards:
        sd.update(load_file(str(f / s)))
    return np.concatenate([sd[k].to(torch.float64).numpy().reshape(-1) for k in sorted(sd)])
n = len(folders)
cos = np.eye(n)
for i in range(n):
    for j in range(i + 1, n):
        a, b = flat(folders[i]), flat(folders[j])
        cos[i, j] = cos[j, i] = a @ b / np.sqrt((a @ a) * (b @ b))
print(cos.mean())
'''


# The start-up of a command that draws, before any work: what it imports (trajcli's modules and
# matplotlib, which the first figure loads).
STARTUP = "import trajcli.cli, trajcli.analysis, trajcli.report.render, trajcli.report.plots\ntrajcli.report.plots._pyplot()\n"


def build(folder: Path, n_ckpt: int) -> int:
    """N checkpoints (2 shards each + index + config.json); returns bytes per checkpoint."""
    import torch
    from safetensors.torch import save_file

    c = CONFIG
    d, ff, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    shapes = {"gpt_neox.embed_in.weight": (vocab, d), "embed_out.weight": (vocab, d),
              "gpt_neox.final_layer_norm.weight": (d,), "gpt_neox.final_layer_norm.bias": (d,)}
    for i in range(c["num_hidden_layers"]):
        p = f"gpt_neox.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "input_layernorm.bias": (d,),
                       p + "post_attention_layernorm.weight": (d,), p + "post_attention_layernorm.bias": (d,),
                       p + "attention.query_key_value.weight": (3 * d, d), p + "attention.query_key_value.bias": (3 * d,),
                       p + "attention.dense.weight": (d, d), p + "attention.dense.bias": (d,),
                       p + "mlp.dense_h_to_4h.weight": (ff, d), p + "mlp.dense_h_to_4h.bias": (ff,),
                       p + "mlp.dense_4h_to_h.weight": (d, ff), p + "mlp.dense_4h_to_h.bias": (d,)})
    gen = torch.Generator().manual_seed(0)
    theta = {k: 0.02 * torch.randn(s, generator=gen) for k, s in shapes.items()}
    names = list(shapes)
    half = len(names) // 2
    total = 0
    for k in range(n_ckpt):
        out = folder / f"step{k * 100}"
        out.mkdir(parents=True)
        weight_map = {}
        for s, part in enumerate((names[:half], names[half:])):
            shard = f"model-0000{s + 1}-of-00002.safetensors"
            save_file({n: theta[n] for n in part}, str(out / shard), metadata={"format": "pt"})
            weight_map.update({n: shard for n in part})
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        (out / "config.json").write_text(json.dumps(CONFIG))
        total = sum(t.numel() * 4 for t in theta.values())
        theta = {n: t + 0.002 * torch.randn(t.shape, generator=gen) for n, t in theta.items()}
    return total


def _parse(text: str) -> int:
    from trajcli.engine.budget import parse_budget

    return parse_budget(text)


def evict(folder: Path) -> bool:
    """Drop the files under `folder` from the page cache (posix_fadvise DONTNEED: no root needed);
    False where the platform has no such call."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in folder.rglob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def timed(commands: dict[str, list[str]], repeat: int, cold: Path | None = None) -> dict[str, tuple[float, int]]:
    """{name: (median wall seconds, max peak RssAnon)} over `repeat` rounds of whole processes. Each
    round runs every command once, in turn, so that the ratios between them see the same machine (a
    shared VM drifts between minutes). With `cold`, that folder's files leave the page cache before
    every command."""
    walls: dict[str, list[float]] = {k: [] for k in commands}
    peaks: dict[str, list[int]] = {k: [] for k in commands}
    for _ in range(repeat):
        for name, cmd in commands.items():
            if cold is not None:
                evict(cold)
            peak, wall = peak_anon(cmd, CHILDREN.setdefault(name, []))
            walls[name].append(wall)
            peaks[name].append(peak)
    WALLS.update(walls)
    return {k: (statistics.median(walls[k]), max(peaks[k])) for k in commands}


CHILDREN: dict[str, list[int]] = {}  # per command: the peak Pss_Anon of its child processes, per run
WALLS: dict[str, list[float]] = {}  # per command: the wall seconds of each round


def ratio(a: str, b: str) -> str:
    """a / b as the ratio of the medians, and as the median of the ratios within each round (which a
    machine that speeds up or slows down between rounds disturbs less)."""
    per_round = [x / y for x, y in zip(WALLS[a], WALLS[b])]
    return (f"{statistics.median(WALLS[a]) / statistics.median(WALLS[b]):.2f} (per round: median "
            f"{statistics.median(per_round):.2f}, {min(per_round):.2f}–{max(per_round):.2f})")


def _has_dask() -> bool:
    try:
        import dask.distributed  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-pairwise", action="store_true")
    parser.add_argument("--memory-budget", default="256MiB")
    parser.add_argument("--cold", action="store_true",
                        help="also time the pass with the checkpoints out of the page cache, against cat of the same files")
    parser.add_argument("--workers", type=int, default=2,
                        help="also time similarity on a local Dask cluster of this many workers (0: skip; needs trajcli[dask])")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trajcli-bench-", dir=args.workdir))
    py = sys.executable
    try:
        baseline, _ = peak_anon([py, "-c", "import trajcli.cli, trajcli.pipeline, torch, numpy, safetensors, time; time.sleep(0.3)"])
        results = {}
        for n in (8, 16):
            CHILDREN.clear()
            folder = work / f"n{n}" / "run"
            per_ckpt = build(folder, n)
            data_gb = per_ckpt * n / 1e9
            budget_bytes = _parse(args.memory_budget)
            reference = [py, "-c", REFERENCE, str(folder), str(budget_bytes)]
            subprocess.run(reference, check=True, capture_output=True)  # warm the page cache
            out = work / f"n{n}" / "out"
            commands = {
                "reference": reference,
                "similarity": [py, "-m", "trajcli", "similarity", str(folder), "--quiet",
                               "--memory-budget", args.memory_budget],
                # trajcli report: similarity in three modes, layers by block and role, Q/K/V per head, PCA,
                # every file and plot and report.html, from one pass (--recompute: no saved Grams).
                "all": [py, "-m", "trajcli", "report", str(folder), "--quiet", "--memory-budget", args.memory_budget,
                        "--out", str(out), "--recompute"],
            }
            if args.workers and _has_dask():
                commands["workers"] = commands["similarity"] + ["--workers", str(args.workers)]
            row = {"data_gb": data_gb, **timed(commands, args.repeat)}
            # A second command on the folder `report` wrote: it answers from grams.npz (and draws its heatmap),
            # against the start-up of such a command: what it imports before any work (STARTUP).
            again = timed({"reuse": [py, "-m", "trajcli", "similarity", str(folder), "--quiet", "--out", str(out),
                                     "--mode", "update"],
                           "startup": [py, "-c", STARTUP]},
                          args.repeat)
            row["reuse_s"], row["startup_s"] = again["reuse"][0], again["startup"][0]
            if not args.skip_pairwise:
                row["pairwise"] = timed({"pairwise": [py, "-c", PAIRWISE, str(folder)]}, 1)["pairwise"]
            if args.cold:
                files = sorted(str(f) for f in folder.rglob("*.safetensors"))
                if evict(folder):
                    cold = timed({"cat": ["sh", "-c", 'cat "$@" > /dev/null', "cat", *files],
                                  "cold_similarity": commands["similarity"]}, args.repeat, cold=folder)
                    row["cold"] = {k: v[0] for k, v in cold.items()}
                else:
                    row["cold"] = None
            results[n] = row
            print(f"\nN = {n}: {data_gb:.2f} GB of checkpoints (warm page cache), baseline RssAnon {baseline / MIB:.0f} MiB")
            for key in ("reference", "similarity", "all", "workers", "pairwise"):  # "all" is trajcli report
                if key in row:
                    wall, peak = row[key]
                    kids = max(CHILDREN.get(key) or [0])
                    extra = (f"baseline + {(peak - baseline) / MIB:5.0f} MiB" if peak >= baseline
                             else "below the baseline: no torch here")  # --workers: the driver only schedules
                    print(f"  {key:<11} {wall:7.2f} s  {data_gb / wall:6.2f} GB/s  peak RssAnon {peak / MIB:6.0f} MiB "
                          f"({extra})"
                          + (f"; child processes + {kids / MIB:.0f} MiB" if kids else ""))
            print(f"  similarity / reference = {ratio('similarity', 'reference')}")
            print(f"  report (all analyses) / similarity = {ratio('all', 'similarity')}")
            if "workers" in row:
                print(f"  similarity --workers {args.workers} / similarity = {ratio('workers', 'similarity')}"
                      " (peak RssAnon: the driver process only)")
            print(f"  reusing saved Grams: {row['reuse_s']:.2f} s, of which start-up {row['startup_s']:.2f} s"
                  " (imports, matplotlib's included)")
            if "pairwise" in row:
                print(f"  pairwise / similarity = {row['pairwise'][0] / row['similarity'][0]:.1f}")
            if args.cold:
                if row["cold"] is None:
                    print("  cold cache: cannot drop files from the page cache on this platform (no posix_fadvise)")
                else:
                    c = row["cold"]
                    print(f"  cold cache: cat {c['cat']:.2f} s ({data_gb / c['cat']:.2f} GB/s), similarity "
                          f"{c['cold_similarity']:.2f} s ({data_gb / c['cold_similarity']:.2f} GB/s); "
                          f"similarity / cat = {ratio('cold_similarity', 'cat')}")
            shutil.rmtree(folder)
        print(f"\nsimilarity N=16 / N=8 = {results[16]['similarity'][0] / results[8]['similarity'][0]:.2f}"
              f"  (reference: {results[16]['reference'][0] / results[8]['reference'][0]:.2f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

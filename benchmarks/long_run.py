"""Whole-process timings of `trajcli report` on runs with many checkpoints, where the work after the
pass (hundreds of N × N maps: modes, lengths and bends, dynamics, JSON/CSV, figures) outweighs the
reading.

Builds trajectories of a small GPT-NeoX-layout model (6 layers, 4 heads, ~0.2M fp32 parameters per
checkpoint, one safetensors file each with config.json) with N checkpoints, then times, as separate
processes on a warm page cache, in interleaved rounds:

  similarity  trajcli similarity (the pass, one map): the reference of the same run
  report      trajcli report --recompute: every analysis, file and figure, from one pass
  reuse       trajcli report again on the same --out: every analysis from the saved grams.npz
  sim-saved   trajcli similarity on that --out: the whole model's Grams summed from the report's saved ones
  plot-role   trajcli plot of the report's layers_role.json (every role group's N × N map, read back)

and prints medians, report / similarity, and the peak anonymous memory (RssAnon) of each command
with that of its child processes (its drawing workers) beside it.

    python benchmarks/long_run.py [--sizes 154,500] [--repeat 3] [--workdir DIR] [--many-leaves]

To compare two versions of trajcli, run it once with each first on PYTHONPATH (the commands are
started as `python -m trajcli` and inherit it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import MIB, peak_anon

CONFIG = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": 256,
          "hidden_size": 32, "num_hidden_layers": 6, "num_attention_heads": 4, "intermediate_size": 128}


def build(folder: Path, n_ckpt: int) -> None:
    """N checkpoints `step0, step10, …`: a random start and small random steps."""
    import torch
    from safetensors.torch import save_file

    d, ff, vocab = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    shapes = {"gpt_neox.embed_in.weight": (vocab, d), "embed_out.weight": (vocab, d)}
    for i in range(CONFIG["num_hidden_layers"]):
        p = f"gpt_neox.layers.{i}."
        shapes.update({p + "attention.query_key_value.weight": (3 * d, d), p + "attention.query_key_value.bias": (3 * d,),
                       p + "attention.dense.weight": (d, d), p + "mlp.dense_h_to_4h.weight": (ff, d),
                       p + "mlp.dense_4h_to_h.weight": (d, ff), p + "input_layernorm.weight": (d,)})
    gen = torch.Generator().manual_seed(0)
    theta = {k: 0.02 * torch.randn(s, generator=gen) for k, s in shapes.items()}
    for k in range(n_ckpt):
        out = folder / f"step{k * 10}"
        out.mkdir(parents=True)
        save_file(theta, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps(CONFIG))
        theta = {n: t + 0.002 * torch.randn(t.shape, generator=gen) for n, t in theta.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="154,500", help="numbers of checkpoints, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--many-leaves", action="store_true",
                        help="Pythia-12B's attention layout (36 layers × 40 heads) at hidden size 80: 4,320 Q/K/V "
                             "head leaves (8,640 with their biases), where the work per leaf dominates")
    args = parser.parse_args()
    if args.many_leaves:
        CONFIG.update({"hidden_size": 80, "num_hidden_layers": 36, "num_attention_heads": 40, "intermediate_size": 80,
                       "vocab_size": 64})
    work = Path(tempfile.mkdtemp(prefix="trajcli-long-", dir=args.workdir))
    py = sys.executable
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            folder, out = work / f"n{n}" / "run", work / f"n{n}" / "out"
            build(folder, n)
            commands = {"similarity": [py, "-m", "trajcli", "similarity", str(folder), "--quiet"],
                        "report": [py, "-m", "trajcli", "report", str(folder), "--quiet", "--out", str(out), "--recompute"],
                        "reuse": [py, "-m", "trajcli", "report", str(folder), "--quiet", "--out", str(out)],
                        "sim-saved": [py, "-m", "trajcli", "similarity", str(folder), "--quiet", "--out", str(out)],
                        "plot-role": [py, "-m", "trajcli", "plot", str(out / "layers_role.json"), "--out",
                                      str(work / f"n{n}" / "plots")]}
            walls = {k: [] for k in commands}
            peaks = {k: [] for k in commands}
            children = {k: [] for k in commands}
            for _ in range(args.repeat):
                for name, cmd in commands.items():
                    peak, wall = peak_anon(cmd, children[name])
                    walls[name].append(wall)
                    peaks[name].append(peak)
            print(f"\nN = {n} checkpoints ({sum(f.stat().st_size for f in folder.rglob('*.safetensors')) / 1e6:.0f} MB)")
            for name in commands:
                print(f"  {name:<11} {statistics.median(walls[name]):7.2f} s  peak RssAnon {max(peaks[name]) / MIB:6.0f} MiB"
                      + (f"; child processes + {max(children[name]) / MIB:.0f} MiB" if max(children[name]) else ""))
            per_round = [r / s for r, s in zip(walls["report"], walls["similarity"])]
            print(f"  reuse / report = {statistics.median(walls['reuse']) / statistics.median(walls['report']):.2f}")
            print(f"  report / similarity = {statistics.median(walls['report']) / statistics.median(walls['similarity']):.2f}"
                  f" (per round: median {statistics.median(per_round):.2f}, {min(per_round):.2f}–{max(per_round):.2f})")
            shutil.rmtree(work / f"n{n}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

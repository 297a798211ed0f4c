"""Peak anonymous memory of `trajcli similarity` against model size and --memory-budget.

Builds trajectories of 4 safetensors checkpoints whose models grow from 4M to 64M fp32 parameters,
runs `trajcli similarity` on each as a whole process under two budgets, and samples the process's
RssAnon (anonymous resident memory; mapped checkpoint pages are file-backed and not counted) every
5 ms. The baseline is the same interpreter importing what the command imports on this path:
trajcli, numpy and safetensors (not torch: the CPU pass over safetensors files does not need it).

    python benchmarks/memory.py [--workdir DIR] [--figure docs/memory.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024


def _proc_field(path: str, field: str) -> int | None:
    """A `Field:   N kB` line of a /proc file, in bytes (None when the process or the line is gone)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_anon_bytes(pid: int) -> int | None:
    return _proc_field(f"/proc/{pid}/status", "RssAnon")


def pss_anon_bytes(pid: int) -> int:
    """Proportional anonymous memory: pages shared with another process (a fork) count in part."""
    return _proc_field(f"/proc/{pid}/smaps_rollup", "Pss_Anon") or 0


def descendants(pid: int) -> list[int]:
    """Child processes, theirs, and so on (of every thread: Dask forks its workers from another one)."""
    kids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        return kids
    return kids + [d for k in kids for d in descendants(k)]


def peak_anon(cmd: list[str], children: list[int] | None = None) -> tuple[int, float]:
    """(peak RssAnon in bytes, wall seconds) of a whole process. With a `children` list, the peak of
    the summed Pss_Anon of its child processes (drawing workers, Dask workers) is appended to it:
    sampled every 50 ms, proportional, so pages a fork still shares with the parent are not counted
    twice."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = kids_peak = 0
    samples = 0
    while proc.poll() is None:
        peak = max(peak, rss_anon_bytes(proc.pid) or 0)
        if children is not None and samples % 10 == 0:
            kids_peak = max(kids_peak, sum(pss_anon_bytes(k) for k in descendants(proc.pid)))
        samples += 1
        time.sleep(0.005)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr.read().decode()}")
    if children is not None:
        children.append(kids_peak)
    return peak, wall


def build(folder: Path, n_params: int, n_ckpt: int = 4) -> None:
    import torch
    from safetensors.torch import save_file

    rows = n_params // 1024
    gen = torch.Generator().manual_seed(0)
    theta = {"embed.weight": torch.randn(rows // 2, 1024, generator=gen),
             "block.weight": torch.randn(rows // 2, 1024, generator=gen)}
    for k in range(n_ckpt):
        out = folder / f"step{k}"
        out.mkdir(parents=True)
        save_file(theta, str(out / "model.safetensors"))
        theta = {n: t + 0.01 * torch.randn(t.shape, generator=gen) for n, t in theta.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trajcli-mem-", dir=args.workdir))
    try:
        baseline, _ = peak_anon([sys.executable, "-c", "import trajcli.cli, trajcli.pipeline, numpy, safetensors, time; time.sleep(0.3)"])
        print(f"baseline (interpreter + libraries): {baseline / MIB:.0f} MiB RssAnon")
        sizes = [4 * 2**20, 16 * 2**20, 64 * 2**20]
        budgets = ["64MiB", "256MiB"]
        rows = []
        for n_params in sizes:
            folder = work / f"p{n_params}"
            build(folder, n_params)
            for budget in budgets:
                peak, wall = peak_anon([sys.executable, "-m", "trajcli", "similarity", str(folder), "--quiet",
                                        "--memory-budget", budget])
                rows.append((n_params, budget, peak, wall))
                print(f"params/ckpt {n_params / 1e6:5.1f}M  checkpoint {n_params * 4 / MIB:5.0f} MiB  "
                      f"budget {budget:>6}  peak RssAnon {peak / MIB:6.0f} MiB "
                      f"(baseline + {(peak - baseline) / MIB:4.0f} MiB)  {wall:5.1f} s")
            shutil.rmtree(folder)
        if args.figure:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
            for budget in budgets:
                pts = [(r[0] * 4 * 4 / MIB, (r[2] - baseline) / MIB) for r in rows if r[1] == budget]
                ax.plot(*zip(*pts), marker="o", label=f"--memory-budget {budget}")
                ax.axhline(int(budget[:-3]), ls=":", color=ax.lines[-1].get_color())
            ax.set_xscale("log", base=2)
            ax.set_xlabel("trajectory size on disk (MiB, 4 checkpoints)")
            ax.set_ylabel("peak anonymous memory\nabove baseline (MiB)")
            ax.set_title(f"peak memory stays under the budget (baseline {baseline / MIB:.0f} MiB)", fontsize=10)
            ax.legend(fontsize=8)
            fig.tight_layout()
            args.figure.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(args.figure)
            print(f"figure: {args.figure}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

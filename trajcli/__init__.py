"""trajcli: analyse the optimization trajectory stored in a folder of checkpoints.

    import trajcli
    run = trajcli.open("runs/out")
    sim = run.similarity(mode="displacement")
    sim.matrix, sim.labels, sim.mds

See docs/api.md; the command line (`trajcli --help`) is a thin skin over the same pipeline."""

__version__ = "0.2.0"

from trajcli.api import CheckpointInfo, Run, compare, open

__all__ = ["CheckpointInfo", "Run", "__version__", "compare", "open"]
